"""Peak memory of `convert` against the size of the largest tensor and of the whole checkpoint.

Builds Hugging Face checkpoints at GPT-J 6B's real width (n_embd 4096, d_ff 16384, vocab 50400, so wte and
lm_head are the real 825 MB fp32 tensors) with only a few layers, then converts each in a fresh
subprocess while this process polls its resident set (/proc/<pid>/status, every 5 ms):

    VmHWM    the kernel's peak resident set of the child (what ru_maxrss reports)
    RssAnon  private memory (arrays); RssFile: pages of memory-mapped files currently resident

The streaming claim is that the peak does not grow with the number of layers and stays near
largest tensor + its converted copy + a constant; with the real 825 MB tensors present, the peak
measured here is the peak for the full 28-layer GPT-J 6B.

    python benchmarks/convert_memory.py [--workdir DIR] [--layers 1,3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from gptj_ref.config import GPTJ_6B  # noqa: E402
from gptj_ref.layout import weight_shapes  # noqa: E402
from gptj_ref.native import native_size  # noqa: E402
from gptj_ref.safetensors_file import write_safetensors  # noqa: E402

MB = 1e6
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    from gptj_ref.convert import convert

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    before = status("VmRSS")
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    started = time.perf_counter()
    convert({src!r}, {dst!r}, {dtype!r}, progress=False)
    seconds = time.perf_counter() - started
    print(json.dumps({{"before": before, "hwm": status("VmHWM"), "seconds": seconds,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
""")


def make_checkpoint(path: str, n_layer: int, dtype: str) -> dict:
    config = GPTJ_6B.replace(n_layer=n_layer)
    shapes = weight_shapes(config)
    os.makedirs(path, exist_ok=True)
    config.to_json_file(os.path.join(path, "config.json"))
    rng = np.random.default_rng(0)
    st_dtype, np_dtype = {"fp32": ("F32", np.float32), "fp16": ("F16", np.float16)}[dtype]

    def produce(name):
        return (rng.standard_normal(shapes[name], dtype=np.float32) * np.float32(0.02)).astype(np_dtype, copy=False)

    target = os.path.join(path, "model.safetensors")
    if not os.path.exists(target):
        started = time.perf_counter()
        write_safetensors(target, [(n, st_dtype, s) for n, s in shapes.items()], produce)
        print(
            f"  built {path}: {os.path.getsize(target) / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    itemsize = np.dtype(np_dtype).itemsize
    return {
        "config": config,
        "total": sum(int(np.prod(s)) * itemsize for s in shapes.values()),
        "largest": max(int(np.prod(s)) * itemsize for s in shapes.values()),
    }


def read_status(pid: int) -> dict:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return values


def measure(src: str, dst: str, dtype: str) -> dict:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(root=ROOT, src=src, dst=dst, dtype=dtype)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    peak_anon = peak_file = 0
    while child.poll() is None:
        s = read_status(child.pid)
        peak_anon = max(peak_anon, s.get("RssAnon", 0))
        peak_file = max(peak_file, s.get("RssFile", 0))
        time.sleep(0.005)
    out = child.stdout.read()
    if child.returncode != 0:
        raise SystemExit(f"conversion failed ({child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_anon=peak_anon, peak_file=peak_file)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where to build checkpoints (default: a temp dir)")
    parser.add_argument("--layers", default="1,3", help="layer counts of the fp32 checkpoints (default 1,3)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="gptj-convert-memory-")
    layers = [int(n) for n in args.layers.split(",")]
    runs = [("fp32", n, "q8") for n in layers] + [
        ("fp32", layers[-1], "f16"),
        ("fp32", layers[-1], "f32"),
        ("fp16", layers[-1], "q8"),
    ]
    print(f"workdir {workdir}; every checkpoint at GPT-J 6B width (wte and lm_head: 50400 x 4096)")
    rows = []
    try:
        for source, n_layer, dtype in runs:
            src = os.path.join(workdir, f"{source}-{n_layer}L")
            info = make_checkpoint(src, n_layer, source)
            dst = os.path.join(workdir, "out.gptj")
            r = measure(src, dst, dtype)
            os.unlink(dst)
            rows.append((source, n_layer, dtype, info, r))
            print(
                f"  {source} {n_layer}L -> {dtype}: peak RSS {r['hwm'] / MB:.0f} MB in {r['seconds']:.1f} s", flush=True
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(
        f"{'source':<6} {'layers':>6} {'to':<4} {'ckpt MB':>8} {'largest MB':>10} {'base MB':>8} {'peak RSS MB':>11} "
        f"{'growth MB':>9} {'growth/largest':>14} {'anon MB':>8} {'mapped MB':>9} {'s':>6} {'MB/s':>6}"
    )
    for source, n_layer, dtype, info, r in rows:
        growth = r["hwm"] - r["before"]
        print(
            f"{source:<6} {n_layer:>6} {dtype:<4} {info['total'] / MB:8.0f} {info['largest'] / MB:10.0f} "
            f"{r['before'] / MB:8.0f} {r['hwm'] / MB:11.0f} {growth / MB:9.0f} {growth / info['largest']:14.2f} "
            f"{r['peak_anon'] / MB:8.0f} {r['peak_file'] / MB:9.0f} {r['seconds']:6.1f} "
            f"{info['total'] / MB / r['seconds']:6.0f}"
        )
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"\nru_maxrss over all conversion children: {children / MB:.0f} MB")
    fp32_bytes = [int(np.prod(s)) * 4 for s in weight_shapes(GPTJ_6B).values()]
    print(
        f"GPT-J 6B fp32: {sum(fp32_bytes) / 1e9:.1f} GB, largest tensor {max(fp32_bytes) / MB:.0f} MB "
        f"(the same wte/lm_head as above); q8 output {native_size(GPTJ_6B, 'q8') / 1e9:.2f} GB."
    )
    print(
        "Bound: peak RSS <= base + largest source tensor (mapped, released after each tensor) "
        "+ its converted copy + ~30 MB of row-slice temporaries; the number of layers does not enter."
    )


if __name__ == "__main__":
    main()
