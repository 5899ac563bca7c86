"""q4 against q8 on full-size GPT-J 6B native files with random weights, in one run.

    python benchmarks/bench_q4.py [--q8 /tmp/gptj6b-random-q8.gptj] [--q4 /tmp/gptj6b-random-q4.gptj]
                                               [--threads 2] [--build-only]

The files (the real shapes, ~6.9 GB and ~3.7 GB) are written directly in their layouts, without a
checkpoint: random values with small float16 scales (integer kernels do not depend on the values), and
reused when they exist. One run measures the streaming-read bandwidth, each format's decode roofline
(weight + scale bytes per token / that bandwidth; the target is judged against a read timed just before
each of 24 decode tokens, since one read at the start is not steady on a shared machine), and for each
file, in a fresh subprocess (bench_int8.py's model run): first token from a warm page cache, decode
tokens/s, prompt tokens/s for 128 and 512 tokens, peak RSS; then the kernels alone at M = 1 and 512 on one
layer's shapes.
Targets (issue 15): q4 decode >= 1.7x q8 decode and >= 85% of the q4 roofline; q4 prompt >= 0.8x q8
prompt; q4 peak RSS <= 4.5 GB after a 512-token prompt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_int8  # noqa: E402

from gptj_ref.config import GPTJConfig  # noqa: E402
from gptj_ref.native import native_metadata, native_specs  # noqa: E402
from gptj_ref.safetensors_file import write_safetensors  # noqa: E402

DEFAULT_Q4 = "/tmp/gptj6b-random-q4.gptj"


def build_q4(path: str, config: GPTJConfig) -> None:
    """Write a q4 native file of `config` with random packed values, one tensor at a time."""
    rng = np.random.default_rng(0)
    pool = np.frombuffer(rng.bytes(1 << 28), np.uint8)  # 256 MB of packed nibbles
    d = np.float16(0.02 / 4.6)  # std(q) ~ 4.6: weights of std ~0.02
    d8 = np.float16(0.02 / 73)  # the q8 embedding rows: std(q) ~ 73
    specs = native_specs(config, "q4")
    shapes = {name: shape for name, _, shape in specs}
    dtypes = {name: st for name, st, _ in specs}

    def produce(name: str) -> np.ndarray:
        shape = shapes[name]
        n = int(np.prod(shape))
        if name.endswith("_scale"):
            step = d8 if dtypes[name[: -len("_scale")]] == "I8" else d
            return (rng.uniform(0.5, 1.5, shape) * step).astype(np.float16)
        if dtypes[name] == "I8":
            return pool[:n].view(np.int8).clip(-127, 127).reshape(shape)
        if dtypes[name] == "U8":
            if n > pool.size:
                return np.resize(pool, n).reshape(shape)
            start = int(rng.integers(0, pool.size - n + 1))
            return pool[start : start + n].reshape(shape)
        if len(shape) == 1:
            base = 1.0 if name.endswith("weight") and ("ln_" in name) else 0.0
            return (base + 0.02 * rng.standard_normal(shape)).astype(np.float32)
        return 0.02 * rng.standard_normal(shape, dtype=np.float32)

    start = time.perf_counter()
    write_safetensors(path, specs, produce, native_metadata(config, "q4", ""))
    print(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s", flush=True)


def kernels_alone(threads: int) -> dict:
    """Seconds per call of one layer's q8 and q4 linears (fc_in and fc_out shapes) at M = 1 (weights from
    memory: a fresh copy each call, from a pool larger than any cache) and M = 512."""
    from gptj_ref import _core

    rng = np.random.default_rng(2)
    E, F = 4096, 16384
    pool = np.frombuffer(rng.bytes(1_200_000_000), np.uint8)
    out = {}
    for N, K in ((F, E), (E, F)):
        s = (rng.uniform(0.5, 1.5, (N, K // 32)) * 2.7e-4).astype(np.float16).view(np.uint16)
        for fmt, row_bytes in (("q8", K), ("q4", K // 2)):
            size = N * row_bytes
            copies = [pool[i * size : (i + 1) * size].reshape(N, row_bytes) for i in range(len(pool) // size)]
            if fmt == "q8":  # random bytes: -128 included, which the kernels take exactly
                copies = [c.view(np.int8) for c in copies]
            # held as a model holds them: packed once where the level's kernel reads a layout of its own
            linears = [_core.Linear(fmt, c, s) for c in copies]
            for M in (1, 512):
                x = rng.standard_normal((M, K)).astype(np.float32)
                linears[-1](x, threads=threads)
                calls = linears[:-1] if M == 1 else linears[:2]
                t0 = time.perf_counter()
                for linear in calls:
                    linear(x, threads=threads)
                out[(fmt, f"{N}x{K}", M)] = (time.perf_counter() - t0) / len(calls)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--q8", default=bench_int8.DEFAULT_FILE)
    p.add_argument("--q4", default=DEFAULT_Q4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--build-only", action="store_true")
    args = p.parse_args()
    bench_int8.ensure_file(args.q8)
    bench_int8.ensure_file(args.q4, "q4", build_q4)
    if args.build_only:
        return
    from gptj_ref import _core

    print(f"threads {args.threads}; kernels {_core.isa()}", flush=True)
    bandwidth = bench_int8.stream_read_bandwidth(args.threads, repeats=5)
    print(f"streaming read: {bandwidth / 1e9:.1f} GB/s (median of 5)", flush=True)
    results = {}
    for fmt, path in (("q8", args.q8), ("q4", args.q4)):
        per_token = bench_int8.weight_bytes_per_token(path)
        roofline = bandwidth / per_token
        print(
            f"\n{fmt}: {path} ({os.path.getsize(path) / 1e9:.2f} GB); weights + scales per token "
            f"{per_token / 1e9:.2f} GB -> roofline {roofline:.2f} tokens/s; page cache warmed in "
            f"{bench_int8.warm_page_cache(path):.1f} s",
            flush=True,
        )
        r = bench_int8.model_run(path, args.threads, batch=False)
        r["roofline"] = roofline
        results[fmt] = r

    q8, q4 = results["q8"], results["q4"]
    print("\nsummary (targets in brackets):")
    for fmt, r in results.items():
        print(
            f"  {fmt}: decode {r['decode_tokens_per_s']:.2f} tokens/s ({r['decode_tokens_per_s'] / r['roofline']:.0%} "
            f"of its roofline {r['roofline']:.2f}); prompt {r['prompt128_tokens_per_s']:.1f} (128) / "
            f"{r['prompt512_tokens_per_s']:.1f} (512) tokens/s; first token {r['first_token_s']:.2f} s; peak RSS "
            f"{r['peak_rss_decode_gb']:.2f} GB after decode, {r['peak_rss_gb']:.2f} GB after the 512-token prompt"
        )
    print(
        f"  q4 / q8 decode {q4['decode_tokens_per_s'] / q8['decode_tokens_per_s']:.2f}x [>= 1.7]; against the read "
        f"just before each token, q4 at {q4['decode_roofline_share_paired']:.0%} of its roofline [>= 85%], q8 at "
        f"{q8['decode_roofline_share_paired']:.0%} [>= 90%] (against the one read at the start: "
        f"{q4['decode_tokens_per_s'] / q4['roofline']:.0%}, {q8['decode_tokens_per_s'] / q8['roofline']:.0%})"
    )
    # The two files run minutes apart, and the read rate can move between them; at equal bandwidth the
    # speed ratio is the ratio of the paired shares times the ratio of bytes read per token.
    share_ratio = q4["decode_roofline_share_paired"] / q8["decode_roofline_share_paired"]
    print(
        f"  q4 / q8 decode at equal bandwidth (paired shares x bytes per token): "
        f"{share_ratio * q4['roofline'] / q8['roofline']:.2f}x"
    )
    print(
        f"  q4 / q8 prompt {q4['prompt128_tokens_per_s'] / q8['prompt128_tokens_per_s']:.2f}x (128), "
        f"{q4['prompt512_tokens_per_s'] / q8['prompt512_tokens_per_s']:.2f}x (512) [>= 0.8]; q4 peak RSS "
        f"{q4['peak_rss_gb']:.2f} GB [<= 4.5]"
    )

    ka = kernels_alone(args.threads)
    print("\nlinears alone (random data), ms per call:")
    for (fmt, shape, M), v in ka.items():
        extra = ""
        if M == 1:
            n, k = (int(a) for a in shape.split("x"))
            extra = f"  {n * k * (1.0625 if fmt == 'q8' else 0.5625) / v / 1e9:.1f} GB/s of weights"
        print(f"  {fmt} {shape:12s} M={M:<4d} {1e3 * v:8.2f}{extra}")


if __name__ == "__main__":
    main()
