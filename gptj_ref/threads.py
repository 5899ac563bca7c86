"""How many threads the C++ kernels use: one default and one check for every entry point.

default_threads()       OMP_NUM_THREADS when it is set (as OpenMP itself reads it), else the physical
                        cores this process may run on (hyper-threads share the FMA units)
check_threads(threads)  None -> default_threads(); otherwise a positive integer of at most
                        max_threads(), else SettingsError
describe_threads(n)     "2 (physical cores)", "1 (OMP_NUM_THREADS)" or "3 (asked for)", for `gptj info`
"""

from __future__ import annotations

import os

import numpy as np

from .errors import SettingsError

# More threads than this many per logical CPU only slow the kernels down (each thread's share of the work
# shrinks while they fight for the cores) and, far beyond it, exhaust memory for thread stacks.
THREADS_PER_CPU_LIMIT = 4


def logical_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores this process may run on, counted from /proc/cpuinfo; logical CPUs elsewhere."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            physical = None
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    cores.add((physical, line.split(":")[1].strip()))
        if cores:
            return max(1, min(len(cores), logical_cpus()))
    except OSError:
        pass
    return logical_cpus()


def max_threads() -> int:
    return THREADS_PER_CPU_LIMIT * max(1, os.cpu_count() or 1)


def _from_environment():
    """OMP_NUM_THREADS as OpenMP reads it (the first number of a nested list such as "4,2"), or None."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise SettingsError(
            f"OMP_NUM_THREADS={value!r} is not a positive integer; set it to a number of threads "
            "or unset it to use the physical cores"
        )
    return int(first)


def default_threads() -> int:
    """OMP_NUM_THREADS when set, else the physical cores (see the module docstring)."""
    from_env = _from_environment()
    return check_threads(from_env, "OMP_NUM_THREADS") if from_env is not None else physical_cores()


def check_threads(threads=None, name: str = "threads") -> int:
    """The thread count to use: `threads` checked, or default_threads() when it is None."""
    if threads is None:
        return default_threads()
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise SettingsError(f"{name} must be a positive integer, got {threads!r}")
    if threads > max_threads():
        raise SettingsError(
            f"{name}={threads} is more than {THREADS_PER_CPU_LIMIT} per CPU of this machine "
            f"({os.cpu_count()} CPUs, so at most {max_threads()}); more threads only slow the "
            f"kernels down: the default is the physical cores ({physical_cores()})"
        )
    return int(threads)


def describe_threads(threads=None) -> str:
    """The count check_threads(threads) gives and where it comes from, e.g. "2 (physical cores)"."""
    n = check_threads(threads)
    if threads is not None:
        return f"{n} (asked for)"
    if _from_environment() is not None:
        return f"{n} (OMP_NUM_THREADS)"
    return f"{n} (physical cores)"
