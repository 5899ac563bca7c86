"""The memory a model needs, estimated before a load starts, and the check that refuses what cannot fit.

    estimate = estimate_memory(config, "q8", backend="cpp", context=512)
    print(estimate.describe())        # "6.46 GB: weights 6.17 + KV cache 0.12 (512 tokens, float16) + ..."
    check_memory(estimate, "gpt-j-6B.gptj")   # MemoryLimitError when it exceeds available_memory()

What is counted (bytes that become resident in this process):

  weights    cpp backend: every tensor of the file, read in place (memory-mapped q8 / f32; q4's linears are
             rearranged into the SIMD kernels' panels at load, the same bytes) or widened to float32 at
             load (f16 files and float16/bfloat16 checkpoints: there are no f16 kernels). The
             token embedding is read one row per token; used in place, the OS maps the file around each row
             it faults in (about READAROUND_BYTES per row, measured), so n tokens touch about
             E (1 - exp(-n READAROUND_BYTES / E)) of its E bytes (random ids; real text repeats tokens).
             Reference backend: every weight as float32 (it dequantizes and widens everything).
  kv cache   n_layer x 2 (keys, values) x batch x context x n_embd x 2 or 4 bytes (float16 / float32).
  scratch    cpp: one prompt chunk's activations (<= 512 tokens x (8 n_embd + d_ff) floats), the attention
             scores (4 x threads x context floats) and the last position's logits. Reference: the whole
             prompt's activations plus one layer's attention scores (n_head x context^2 floats).
  runtime    the interpreter, NumPy, the tokenizer and the extension: RUNTIME_BYTES, measured.

benchmarks/memory_estimate.py compares the estimate with the peak RSS measured on the full-size 6B file.

The memory available is GPTJ_MEMORY_LIMIT when set (bytes, or with a unit: "8G", "8GB", "7.5GiB", "512M";
"off" disables the check), else what the OS reports as available (MemAvailable, and the cgroup's limit
minus its usage when that is lower), else unknown (no check).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import GPTJConfig
from .errors import MemoryLimitError, SettingsError

# RSS of a process that imported gptj_ref and loaded the built-in demo model (measured: 123 MB on Linux
# x86-64, Python 3.11), rounded up.
RUNTIME_BYTES = 150_000_000
# File bytes that become resident per embedding row read in place (fault-around and read-around of the
# memory map): 1.0-1.7 MB measured on Linux 6.x with GPT-J 6B's 16 KB rows (benchmarks/memory_context.py).
READAROUND_BYTES = 2 * 2**20
PREFILL_CHUNK = 512  # the cpp backend runs prompts this many tokens at a time (runtime.CppModel.prefill_chunk)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a loaded model will hold: weights + KV cache + scratch + runtime = total."""

    dtype: str
    backend: str
    context: int
    kv_dtype: str
    weights: int
    kv_cache: int
    scratch: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.scratch + self.runtime

    def describe(self) -> str:
        return (
            f"{gb(self.total)}: weights {gb(self.weights, unit=False)} + KV cache {gb(self.kv_cache, unit=False)} "
            f"({self.context} tokens, {self.kv_dtype}) + scratch {gb(self.scratch, unit=False)} + runtime "
            f"{gb(self.runtime, unit=False)}"
        )


def gb(nbytes: float, unit: bool = True) -> str:
    return f"{nbytes / 1e9:.2f}" + (" GB" if unit else "")


def estimate_memory(
    config: GPTJConfig,
    dtype: str,
    backend: str = "cpp",
    context: Optional[int] = None,
    kv_dtype: Optional[str] = None,
    batch: int = 1,
    threads: int = 1,
    mapped: bool = True,
    format_version: Optional[int] = None,
) -> MemoryEstimate:
    """The memory a model of `config` stored as `dtype` ("q8", "f16", "f32") needs on `backend`
    ("cpp" or "reference") for `batch` sequences of `context` tokens (default: the model's context).

    mapped=False says the weights are copied to float32 at load (a float16/bfloat16 checkpoint), so the
    whole token embedding counts; by default an f32/q8 source is used in place. format_version is the
    native file's (None: the version `gptj convert` writes now, which stores a q8 file's embedding as int8
    rows; version 1 kept it float32).
    """
    from .native import DTYPES, EMBEDDING, FORMAT_VERSION, native_specs

    if backend not in ("cpp", "reference"):
        raise SettingsError(f"backend must be 'cpp' or 'reference' for a memory estimate, got {backend!r}")
    context = config.n_positions if context is None else int(context)
    if not 1 <= context <= config.n_positions:
        raise SettingsError(f"context must be in [1, {config.n_positions}] (the model's context), got {context}")
    c = config
    version = FORMAT_VERSION if format_version is None else format_version
    if backend == "reference":
        weights = c.n_params() * 4
        scratch = (
            batch * context * (8 * c.n_embd + c.d_ff) * 4
            + batch * c.n_head * context * context * 4
            + batch * context * c.vocab_size * 4
        )
        kv_dtype = kv_dtype or "float32"
    else:
        in_place = dtype in ("q8", "q4", "f32") and mapped
        specs = native_specs(c, "f32" if dtype == "f16" else dtype, version)
        sizes = {name: int(np.prod(shape, dtype=np.int64)) * DTYPES[st].itemsize for name, st, shape in specs}
        weights = sum(sizes.values())
        if in_place:  # only the pages around the rows of the tokens seen are read from the embedding
            embedding = sum(n for name, n in sizes.items() if name.startswith(EMBEDDING))  # (and its scales)
            rows = context * batch
            weights += int(embedding * -math.expm1(-rows * READAROUND_BYTES / embedding)) - embedding
        chunk = min(context, PREFILL_CHUNK) * batch
        scratch = (
            (chunk * (8 * c.n_embd + c.d_ff) + 4 * threads * context) * 4 + chunk * c.d_ff + batch * c.vocab_size * 4
        )
        kv_dtype = kv_dtype or ("float16" if dtype in ("q8", "q4") else "float32")
    kv_bytes = 2 if kv_dtype == "float16" else 4
    kv_cache = c.n_layer * 2 * batch * context * c.n_embd * kv_bytes
    return MemoryEstimate(dtype, backend, context, kv_dtype, int(weights), int(kv_cache), int(scratch))


_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(text: str, name: str = "GPTJ_MEMORY_LIMIT") -> int:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise SettingsError(
            f"{name}={text!r} is not an amount of memory; write e.g. 8G, 7.5GiB, 512M or a number "
            "of bytes (or 'off' to disable the check)"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def available_memory() -> Optional[int]:
    """Bytes this process can still use: GPTJ_MEMORY_LIMIT when set, else the OS's figure, else None."""
    limit = os.environ.get("GPTJ_MEMORY_LIMIT", "").strip()
    if limit.lower() in ("off", "none"):
        return None
    if limit:
        return parse_bytes(limit)
    figures = [x for x in (_meminfo_available(), _cgroup_available()) if x is not None]
    if figures:
        return min(figures)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> Optional[int]:
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return max(int(limit) - int(f.read().strip()), 0)
    except (OSError, ValueError):
        return None


def limit_source() -> str:
    return "GPTJ_MEMORY_LIMIT" if os.environ.get("GPTJ_MEMORY_LIMIT", "").strip() else "available now"


def check_memory(estimate: MemoryEstimate, what: str) -> None:
    """MemoryLimitError when `estimate` exceeds available_memory(); nothing when it fits or is unknown."""
    available = available_memory()
    if available is None or estimate.total <= available:
        return
    hints = []
    if estimate.dtype != "q8" or estimate.backend == "reference":
        hints.append("int8 weights on the cpp backend (load(path, dtype='q8') or `gptj convert`)")
    if estimate.context > 1:
        hints.append("a smaller context (load(..., context=N): tokens of prompt + generation)")
    hints.append("GPTJ_MEMORY_LIMIT=off to load anyway")
    raise MemoryLimitError(
        f"loading {what} ({estimate.dtype} on the {estimate.backend} backend) needs about "
        f"{estimate.describe()}, but {gb(available)} is available ({limit_source()}); "
        f"try {'; '.join(hints)}"
    )
