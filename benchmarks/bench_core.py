"""Benchmark of the C++ fp32 core against this machine's limits, and of a 2-layer slice of GPT-J 6B.

    python benchmarks/bench_core.py [--threads 2] [--reps 5] [--prompt 128] [--no-model] [--no-hf]

Prints, in one run:
  1. matrix-vector GB/s (decode: the weights are read once per token) against a streaming read of memory
     measured here with the same threads (`_core.stream_read`);
  2. matrix-matrix GFLOP/s (prompts) against the FMA peak computed from the clock:
     cores x 2 FMA pipes x 8 fp32 lanes x 2 flops x GHz;
  3. decode ms/token and prompt tokens/s for a 2-layer slice of the real 6B geometry (d_model 4096,
     16 heads of 256, rotary 64, d_ff 16384, vocab 50400, random weights) for the NumPy reference, the C++
     runtime and, when importable, transformers' GPTJForCausalLM in torch fp32.
The machines are shared and noisy: every comparison alternates its contenders (A B A B ...) and reports
medians over --reps rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import time

import numpy as np

from gptj_ref import _core
from gptj_ref.config import GPTJConfig
from gptj_ref.layout import random_weights
from gptj_ref.reference import Reference
from gptj_ref.runtime import CppModel, kernel_isa


def clock_ghz() -> float:
    """The CPU clock in GHz from /proc/cpuinfo ("cpu MHz"), else lscpu's "CPU max MHz", else 0."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", f.read(), re.M)]
        if mhz:
            return max(mhz) / 1000
    except OSError:
        pass
    out = os.popen("lscpu 2>/dev/null").read()
    m = re.search(r"CPU max MHz:\s*([\d.]+)", out)
    return float(m.group(1)) / 1000 if m else 0.0


def alternate(contenders: dict, reps: int) -> dict:
    """Time each callable once per round, rounds alternating the order; name -> median seconds."""
    names = list(contenders)
    times = {n: [] for n in names}
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            contenders[n]()
            times[n].append(time.perf_counter() - start)
    return {n: float(np.median(t)) for n, t in times.items()}


def bench_kernels(threads: int, reps: int) -> None:
    rng = np.random.default_rng(0)
    ghz = clock_ghz()
    peak = threads * 2 * 8 * 2 * ghz
    print(
        f"kernels: isa {kernel_isa()}, {threads} threads, clock {ghz:.2f} GHz, "
        f"fp32 FMA peak {threads} x 2 x 8 x 2 x {ghz:.2f} = {peak:.1f} GFLOP/s"
    )

    # 1. Matrix-vector (and small batches) against a streaming read of a 1 GiB buffer.
    stream = np.ones(1 << 28, np.float32)
    weights = {
        "16384x4096": rng.standard_normal((16384, 4096), dtype=np.float32),
        "4096x16384": rng.standard_normal((4096, 16384), dtype=np.float32),
    }
    contenders = {"stream read 1 GiB": lambda s=stream: _core.stream_read(s, threads=threads)}
    sizes = {"stream read 1 GiB": stream.nbytes}
    for name, w in weights.items():
        for M in (1, 4, 8):
            x = rng.standard_normal((M, w.shape[1]), dtype=np.float32)
            label = f"linear M={M} W {name}"
            contenders[label] = lambda x=x, w=w: _core.linear(x, w, threads=threads)
            sizes[label] = w.nbytes
    for f in contenders.values():
        f()  # warm up: page in, spin up threads
    med = alternate(contenders, reps)
    bandwidth = sizes["stream read 1 GiB"] / med["stream read 1 GiB"] / 1e9
    print(f"  memory read (stream_read, {threads} threads): {bandwidth:6.1f} GB/s")
    for label, sec in med.items():
        if label.startswith("linear"):
            M = int(label.split("M=")[1].split()[0])
            gbs = sizes[label] / sec / 1e9
            print(
                f"  {label:26s} {sec * 1e3:7.2f} ms  {gbs:6.1f} GB/s of weights = {gbs / bandwidth:5.0%} of the "
                f"read  ({M} tokens per weight pass)"
            )
    del stream, weights

    # 2. Matrix-matrix at 6B shapes.
    shapes = [(T, N, K) for T in (128, 512) for N, K in ((4096, 4096), (16384, 4096), (4096, 16384))]
    xs = {K: rng.standard_normal((512, K), dtype=np.float32) for K in (4096, 16384)}
    ws = {
        (N, K): rng.standard_normal((N, K), dtype=np.float32) for N, K in ((4096, 4096), (16384, 4096), (4096, 16384))
    }
    contenders = {s: (lambda s=s: _core.linear(xs[s[2]][: s[0]], ws[s[1:]], threads=threads)) for s in shapes}
    for f in contenders.values():
        f()
    med = alternate(contenders, max(3, reps // 2))
    for (T, N, K), sec in med.items():
        gflops = 2 * T * N * K / sec / 1e9
        print(
            f"  linear T={T:3d} N={N:5d} K={K:5d}   {sec * 1e3:7.1f} ms  "
            f"{gflops:6.1f} GFLOP/s = {gflops / peak:5.0%} of peak"
        )


def hf_model(config: GPTJConfig, weights: dict, threads: int):
    """transformers' GPTJForCausalLM on the same arrays (shared memory), or None without transformers."""
    try:
        import torch
        import transformers
        from transformers.initialization import no_init_weights
    except ImportError:
        return None
    torch.set_num_threads(threads)
    cfg = transformers.GPTJConfig(**{k: v for k, v in config.to_hf().items() if k not in ("architectures",)})
    with no_init_weights():
        model = transformers.GPTJForCausalLM(cfg).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True, assign=True)
    return model


class HFBackend:
    """Just enough of the backend interface to time transformers: a prompt pass and decode steps."""

    def __init__(self, model):
        import torch

        self.torch, self.model = torch, model

    def new_cache(self, max_tokens=None, batch=1):
        from transformers import DynamicCache

        return {"past": DynamicCache(config=self.model.config)}

    def forward(self, ids, cache):
        torch = self.torch
        with torch.no_grad():
            out = self.model(
                torch.from_numpy(np.asarray(ids, np.int64))[None], past_key_values=cache["past"], use_cache=True
            )
        cache["past"] = out.past_key_values
        return out.logits[0].numpy()


def bench_model(threads: int, reps: int, prompt_len: int, with_hf: bool) -> None:
    config = GPTJConfig(n_layer=2)
    print(
        f"\n2-layer slice of GPT-J 6B (d_model {config.n_embd}, {config.n_head} heads of {config.head_dim}, "
        f"rotary {config.rotary_dim}, d_ff {config.d_ff}, vocab {config.vocab_size}), random weights, "
        f"{threads} threads"
    )
    start = time.perf_counter()
    weights = random_weights(config, seed=0)
    print(
        f"  weights: {sum(w.nbytes for w in weights.values()) / 1e9:.2f} GB fp32, made in "
        f"{time.perf_counter() - start:.0f} s"
    )
    backends = {"reference (NumPy)": Reference(config, weights), "cpp fp32": CppModel(config, weights, threads=threads)}
    if with_hf:
        model = hf_model(config, weights, threads)
        if model is None:
            print("  transformers: not importable, skipped")
        else:
            backends["transformers fp32"] = HFBackend(model)

    rng = np.random.default_rng(1)
    prompt = rng.integers(0, 50257, size=prompt_len)
    n_steps = reps + 1

    # Agreement first: the same work is being timed.
    logits = {name: b.forward(prompt[:8], b.new_cache(16)) for name, b in backends.items()}
    ref = logits["reference (NumPy)"]
    for name, out in logits.items():
        print(
            f"  check {name:18s} max |logit - reference| = {np.abs(out - ref).max():.2e} "
            f"(max |logit| {np.abs(ref).max():.2f})"
        )

    # Prompt pass, alternating backends.
    med = alternate(
        {name: (lambda b=b: b.forward(prompt, b.new_cache(prompt_len + n_steps + 1))) for name, b in backends.items()},
        max(2, reps // 2),
    )
    prompt_tps = {name: prompt_len / sec for name, sec in med.items()}

    # Decode steps after a 32-token prompt, alternating backends step by step.
    caches = {}
    for name, b in backends.items():
        caches[name] = b.new_cache(32 + n_steps + 1)
        b.forward(prompt[:32], caches[name])
    step_ids = iter(rng.integers(0, 50257, size=(n_steps * len(backends) + 4)))
    med_decode = alternate(
        {name: (lambda b=b, c=caches[name]: b.forward([next(step_ids)], c)) for name, b in backends.items()}, n_steps
    )

    print(f"  {'backend':20s} {'decode ms/token':>16s} {f'prompt ({prompt_len}) tokens/s':>24s}")
    for name in backends:
        print(f"  {name:20s} {med_decode[name] * 1e3:16.1f} {prompt_tps[name]:24.1f}")
    cpp = med_decode["cpp fp32"]
    for name in backends:
        if name != "cpp fp32":
            print(
                f"  cpp speed / {name} speed: decode {med_decode[name] / cpp:.2f}x, prompt "
                f"{prompt_tps['cpp fp32'] / prompt_tps[name]:.2f}x"
            )

    # Batched decode on the C++ runtime: one weight pass per step for all rows.
    cpp_model = backends["cpp fp32"]
    rows = {}
    for B in (1, 4, 8):
        cache = cpp_model.new_cache(8 + n_steps + 1, batch=B)
        cpp_model.forward(rng.integers(0, 50257, size=(B, 8)), cache)
        rows[B] = lambda B=B, cache=cache: cpp_model.forward(rng.integers(0, 50257, size=(B, 1)), cache)
    med_b = alternate(rows, n_steps)
    print(
        "  cpp batched decode: "
        + ", ".join(f"B={B}: {sec * 1e3:.1f} ms/step = {B / sec:.1f} tokens/s" for B, sec in med_b.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="rounds per comparison (medians are reported)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt length for the model's prompt pass")
    parser.add_argument("--no-model", action="store_true", help="kernels only")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    args = parser.parse_args()
    bench_kernels(args.threads, args.reps)
    if not args.no_model:
        bench_model(args.threads, args.reps, args.prompt, not args.no_hf)


if __name__ == "__main__":
    main()
