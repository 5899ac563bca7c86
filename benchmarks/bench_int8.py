"""Benchmark of the int8 runtime on a full-size GPT-J 6B native file with random int8 weights.

    python benchmarks/bench_int8.py [--file /tmp/gptj6b-random-q8.gptj] [--threads 2]
                                    [--no-torch] [--no-batch] [--build-only]

The file (28 layers, the real shapes, ~6.9 GB) is written directly in the q8 layout, without a
checkpoint: random int8 values in [-127, 127] with small float16 scales (int8 arithmetic does not depend
on the values); it is reused when it exists. One run measures:
  - the machine: streaming-read bandwidth (`_core.stream_read`, 2 GiB) and the decode roofline
    (int8 weight + scale bytes read per token / that bandwidth);
  - in a fresh subprocess (so its peak RSS is the model's): time to first token from a warm page cache
    (load + an 8-token prompt), decode ms/token (8-token prompt, 64 greedy tokens), prompt tokens/s for
    128 and 512 tokens (logits for the last position only, as generation asks for them), batched greedy
    decoding through gptj_ref.generate for batch 1, 4 and 8, and the peak RSS (VmHWM);
  - the int8 linear kernels alone on one layer's shapes and lm_head (M = 1 on weights not in any
    cache, and M = 512): the per-kernel share of decode and prompt time; and at M = 512 the GMAC/s of
    each kernel level the CPU can run (AVX2, AVX-VNNI, AMX);
  - when torch is importable: torch's dynamic int8 (quantize_dynamic on nn.Linear, fbgemm) on 4- and
    8-layer slices of the same geometry (decode, 512-token prompt), extrapolated to 28 layers. Not 2 and
    4 layers: a 2-layer slice (~0.6 GB of int8 weights with lm_head) nearly fits the 504 MB L3 some
    machines here have, which made torch's decode look faster than memory allows.
Targets: decode >= 3.8 tokens/s, prompt >= 21 tokens/s, peak RSS <= 7.5 GB, first token <= 5 s warm.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from gptj_ref.config import GPTJConfig
from gptj_ref.native import native_metadata, native_specs, open_native
from gptj_ref.quant import is_quantized
from gptj_ref.safetensors_file import write_safetensors

DEFAULT_FILE = "/tmp/gptj6b-random-q8.gptj"
TORCH_SLICES = (4, 8)
TARGETS = {"decode_tokens_per_s": 3.8, "prompt_tokens_per_s": 21.0, "peak_rss_gb": 7.5, "first_token_s": 5.0}


# -------------------------------------------------------------------------------------------------
# The model file
# -------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name, for labelling measured figures."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_file(path: str, config: GPTJConfig) -> None:
    """Write a q8 native file of `config` with random values, one tensor at a time."""
    rng = np.random.default_rng(0)
    pool = rng.integers(-127, 128, size=1 << 28, dtype=np.int8)  # 256 MB of int8 values
    d = np.float16(0.02 / 73)  # std(q) ~ 73: weights of std ~0.02

    def produce(name: str) -> np.ndarray:
        spec = shapes[name]
        n = int(np.prod(spec))
        if name.endswith("_scale"):
            return (rng.uniform(0.5, 1.5, spec) * d).astype(np.float16)
        if dtypes[name] == "I8":  # the linears and (file version 2) the embedding rows
            if n > pool.size:
                return np.resize(pool, n).reshape(spec)
            start = int(rng.integers(0, pool.size - n + 1))  # a different window of the pool per tensor
            return pool[start : start + n].reshape(spec)
        if len(spec) == 1:
            base = 1.0 if name.endswith("weight") and ("ln_" in name) else 0.0
            return (base + 0.02 * rng.standard_normal(spec)).astype(np.float32)
        return 0.02 * rng.standard_normal(spec, dtype=np.float32)  # the embedding table

    specs = native_specs(config, "q8")
    shapes = {name: shape for name, _, shape in specs}
    dtypes = {name: st for name, st, _ in specs}
    start = time.perf_counter()
    write_safetensors(path, specs, produce, native_metadata(config, "q8", ""))
    print(f"wrote {path} ({os.path.getsize(path) / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s", flush=True)


def ensure_file(path: str, dtype: str = "q8", build: Callable[[str, GPTJConfig], None] = build_file) -> None:
    """Keep `path` when it is a GPT-J 6B native file of `dtype`; else write it with `build(path, config)`."""
    config = GPTJConfig()
    if os.path.exists(path):
        try:
            native = open_native(path)
            if native.dtype == dtype and native.config == config:
                return
        except Exception as e:  # a damaged or different file is rebuilt
            print(f"rebuilding {path}: {e}")
    build(path, config)


def warm_page_cache(path: str) -> float:
    """Read the whole file once (so later runs start from a warm page cache); returns seconds."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(64 << 20)
        while f.readinto(buf):
            pass
    return time.perf_counter() - start


def stream_read_bandwidth(threads: int, repeats: int) -> float:
    """Streaming-read bandwidth in bytes/s: the median of `repeats` reads of 2 GiB (`_core.stream_read`)."""
    from gptj_ref import _core

    big = np.ones(1 << 29, np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _core.stream_read(big, threads=threads)
        times.append(time.perf_counter() - t0)
    return big.nbytes / float(np.median(times))


def weight_bytes_per_token(path: str) -> int:
    native = open_native(path)
    return sum(native.tensor(n).nbytes for n in native.names() if is_quantized(n.replace("_scale", "")))


# -------------------------------------------------------------------------------------------------
# The model run (in a child process)
# -------------------------------------------------------------------------------------------------


PAIRED_TOKENS = 24  # decode tokens timed right after a streaming read (see child)


def child(path: str, threads: int, batch: bool) -> None:
    import gptj_ref
    from gptj_ref.generate import BatchGeneration, GenerationSettings

    out = {}
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    model = gptj_ref.load(path, backend="cpp", threads=threads)
    backend = model.backend
    prompt = rng.integers(0, 50000, 8)
    cache = backend.new_cache(8 + 64 + PAIRED_TOKENS)
    logits = backend.forward(prompt, cache)
    first = int(np.argmax(logits[-1]))
    out["first_token_s"] = time.perf_counter() - start

    # Decode: 64 greedy tokens after the 8-token prompt.
    token, times = first, []
    for _ in range(64):
        t0 = time.perf_counter()
        logits = backend.forward(np.array([token]), cache)
        times.append(time.perf_counter() - t0)
        token = int(np.argmax(logits[-1]))
    out["decode_ms_per_token"] = 1e3 * float(np.median(times))
    out["decode_ms_mean"] = 1e3 * float(np.mean(times))
    out["decode_tokens_per_s"] = 1e3 / out["decode_ms_per_token"]
    print(
        f"  decode: {out['decode_ms_per_token']:.0f} ms/token (median of 64; mean {out['decode_ms_mean']:.0f})",
        flush=True,
    )
    # The same decode, each token right after a timed streaming read of 512 MB: on a shared machine the
    # read rate moves from minute to minute, so the share of the roofline is taken token by token against
    # the read just before it (median of the pairs), not against one read at the start of the run.
    from gptj_ref import _core

    per_token, big, shares = weight_bytes_per_token(path), np.ones(1 << 27, np.float32), []
    for _ in range(PAIRED_TOKENS):
        t0 = time.perf_counter()
        _core.stream_read(big, threads=threads)
        read_rate = big.nbytes / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        logits = backend.forward(np.array([token]), cache)
        shares.append(per_token / (time.perf_counter() - t0) / read_rate)
        token = int(np.argmax(logits[-1]))
    del big
    out["decode_roofline_share_paired"] = float(np.median(shares))
    print(
        f"  decode against the read just before each token: {out['decode_roofline_share_paired']:.0%} of the "
        f"roofline (median of {PAIRED_TOKENS})",
        flush=True,
    )
    out["peak_rss_decode_gb"] = peak_rss_gb()  # load + prompt + decode: the chat-sized case

    # Prompts, as generation runs them: logits for the last position only (last_only=True).
    for T in (128, 512):
        ids = rng.integers(0, 50000, T)
        cache = backend.new_cache(T)
        out["kv_cache"] = f"{cache.core.dtype} KV cache of {cache.core.nbytes / 1e9:.2f} GB"
        t0 = time.perf_counter()
        backend.forward(ids, cache, last_only=True)
        seconds = time.perf_counter() - t0
        del cache
        out[f"prompt{T}_tokens_per_s"] = T / seconds
        print(f"  prompt {T}: {T / seconds:.1f} tokens/s ({seconds:.1f} s)", flush=True)
    out["prompt_tokens_per_s"] = out["prompt512_tokens_per_s"]

    # Batched greedy decoding through the shared generation loop.
    if batch:
        settings = GenerationSettings(max_new_tokens=16, stop_at_eos=False)
        for B in (1, 4, 8):
            prompts = [list(rng.integers(0, 50000, 8)) for _ in range(B)]
            gen = BatchGeneration(backend, prompts, settings, eos_id=50256)
            steps = sum(1 for _ in gen.steps())
            tokens = B * (steps - 1)  # the first step's tokens come from the prompt pass
            out[f"batch{B}_tokens_per_s"] = tokens / gen.decode_seconds
            print(
                f"  batch {B}: {tokens / gen.decode_seconds:.2f} tokens/s decoding "
                f"({1e3 * gen.decode_seconds / (steps - 1):.0f} ms/step, prompt pass {gen.prompt_seconds:.1f} s)",
                flush=True,
            )

    out["peak_rss_gb"] = peak_rss_gb()
    print("RESULT " + json.dumps(out), flush=True)


def model_run(path: str, threads: int, batch: bool = True) -> dict:
    """`child` in a fresh subprocess (so its peak RSS is the model's), its progress echoed; its results."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--file", path, "--threads", str(threads)]
    if not batch:
        cmd.append("--no-batch")
    result = {}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
            else:
                print(line, end="", flush=True)
    if proc.returncode != 0 or not result:
        raise SystemExit(f"the model run on {path} failed (exit code {proc.returncode})")
    return result


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM), mapped file pages included, in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


# -------------------------------------------------------------------------------------------------
# Kernels alone and torch
# -------------------------------------------------------------------------------------------------


def kernel_breakdown(threads: int) -> dict:
    """Seconds of the int8 linears of one block and of lm_head for M = 1 and 512 (random data).

    M = 1 is timed on weights read from memory, not from the caches, as in decode: each call gets
    the next of several copies spread over a 1.5 GB pool (more than any last-level cache here; one
    machine of this kind had 504 MB of L3, which held a whole layer's weights)."""
    from gptj_ref import _core

    rng = np.random.default_rng(2)
    E, F, V = 4096, 16384, 50400
    shapes = {"q,k,v,out (4x)": (E, E, 4), "fc_in": (F, E, 1), "fc_out": (E, F, 1), "lm_head": (V, E, 1)}
    pool = np.frombuffer(rng.bytes(1_500_000_000), np.int8) % 127  # values in [-126, 126]
    result = {}
    for name, (N, K, count) in shapes.items():
        copies = [pool[i * N * K : (i + 1) * N * K].reshape(N, K) for i in range(len(pool) // (N * K))]
        s = (rng.uniform(0.5, 1.5, (N, K // 32)) * 2.7e-4).astype(np.float16).view(np.uint16)
        for M in (1, 512):
            qx, dx = _core.q8_quantize_activations(rng.standard_normal((M, K)).astype(np.float32))
            _core.q8_linear(qx, dx, copies[-1], s, None, threads=threads)
            calls = copies[:-1] if M == 1 else copies[:2]
            t0 = time.perf_counter()
            for w in calls:
                _core.q8_linear(qx, dx, w, s, None, threads=threads)
            result[(name, M)] = count * (time.perf_counter() - t0) / len(calls)
    return result


def prompt_kernels_by_isa(threads: int) -> dict:
    """GMAC/s of the int8 linear at M = 512 on one layer's three shapes, for every kernel level this CPU
    and build can run (scalar aside): what AVX2, AVX-VNNI and AMX each bring to prompts."""
    from gptj_ref import _core

    rng = np.random.default_rng(3)
    E, F, M = 4096, 16384, 512
    before, result = _core.isa(), {}
    try:
        for N, K in ((E, E), (F, E), (E, F)):
            w = rng.integers(-127, 128, (N, K), dtype=np.int8)
            s = (rng.uniform(0.5, 1.5, (N, K // 32)) * 2.7e-4).astype(np.float16).view(np.uint16)
            qx, dx = _core.q8_quantize_activations(rng.standard_normal((M, K)).astype(np.float32))
            for isa in [i for i in _core.available_isas() if i != "scalar"]:
                _core.set_isa(isa)
                _core.q8_linear(qx, dx, w, s, None, threads=threads)
                best = float("inf")
                for _ in range(2):
                    t0 = time.perf_counter()
                    _core.q8_linear(qx, dx, w, s, None, threads=threads)
                    best = min(best, time.perf_counter() - t0)
                result[(f"{N}x{K}", isa)] = M * N * K / best / 1e9
    finally:
        _core.set_isa(before)
    return result


def torch_slices(threads: int) -> dict:
    import warnings

    import torch
    import transformers

    warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notices
    transformers.logging.set_verbosity_error()

    torch.set_num_threads(threads)
    out = {}
    for layers in TORCH_SLICES:
        cfg = transformers.GPTJConfig(n_layer=layers)
        with torch.no_grad():
            model = transformers.GPTJForCausalLM(cfg).eval()
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            ids = torch.randint(0, 50000, (1, 8))
            o = model(ids, use_cache=True)
            past, times = o.past_key_values, []
            for _ in range(10):
                t0 = time.perf_counter()
                o = model(ids[:, :1], past_key_values=past, use_cache=True)
                times.append(time.perf_counter() - t0)
                past = o.past_key_values
            out[(layers, "decode_s")] = float(np.median(times[2:]))
            model(torch.randint(0, 50000, (1, 64)))  # warm-up of the prompt path
            t0 = time.perf_counter()
            model(torch.randint(0, 50000, (1, 512)))
            out[(layers, "prompt512_s")] = time.perf_counter() - t0
        del model
    return out


# -------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default=DEFAULT_FILE)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-batch", action="store_true")
    p.add_argument("--build-only", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.file, args.threads, not args.no_batch)
        return

    ensure_file(args.file)
    if args.build_only:
        return
    from gptj_ref import _core

    print(
        f"file {args.file}: {os.path.getsize(args.file) / 1e9:.2f} GB; threads {args.threads}; kernels {_core.isa()}",
        flush=True,
    )
    bandwidth = stream_read_bandwidth(args.threads, repeats=3)
    per_token = weight_bytes_per_token(args.file)
    roofline = bandwidth / per_token
    print(
        f"streaming read: {bandwidth / 1e9:.1f} GB/s; int8 weights + scales per token: {per_token / 1e9:.2f} GB "
        f"-> decode roofline {roofline:.2f} tokens/s ({1e3 / roofline:.0f} ms/token)",
        flush=True,
    )
    print(f"warm page cache: read the file in {warm_page_cache(args.file):.1f} s", flush=True)

    print("model run (subprocess):", flush=True)
    result = model_run(args.file, args.threads, batch=not args.no_batch)

    print("\nsummary (targets in brackets):")
    print(
        f"  decode        {result['decode_tokens_per_s']:.2f} tokens/s, {result['decode_ms_per_token']:.0f} ms/token "
        f"[>= {TARGETS['decode_tokens_per_s']}]; {result['decode_tokens_per_s'] / roofline:.0%} of the roofline"
    )
    print(
        f"  prompt        {result['prompt128_tokens_per_s']:.1f} tokens/s (128), "
        f"{result['prompt512_tokens_per_s']:.1f} tokens/s (512) [>= {TARGETS['prompt_tokens_per_s']}]"
    )
    print(
        f"  peak RSS      {result['peak_rss_decode_gb']:.2f} GB after load + decode of 72 tokens, "
        f"{result['peak_rss_gb']:.2f} GB after the 512-token prompt (its {result['kv_cache']}) "
        f"[<= {TARGETS['peak_rss_gb']}]"
    )
    print(
        f"  first token   {result['first_token_s']:.2f} s warm (load + 8-token prompt) [<= {TARGETS['first_token_s']}]"
    )
    for B in (1, 4, 8):
        if f"batch{B}_tokens_per_s" in result:
            print(f"  batch {B}       {result[f'batch{B}_tokens_per_s']:.2f} tokens/s")

    kb = kernel_breakdown(args.threads)
    decode_lin = 28 * sum(v for (n, M), v in kb.items() if M == 1 and n != "lm_head") + kb[("lm_head", 1)]
    prompt_lin = 28 * sum(v for (n, M), v in kb.items() if M == 512 and n != "lm_head") + kb[("lm_head", 1)]
    print("\nint8 linears alone (random data), seconds per call:")
    for (name, M), v in kb.items():
        print(f"  {name:16s} M={M:<4d} {1e3 * v:9.2f} ms")
    dec = result["decode_ms_per_token"] / 1e3
    pr = 512 / result["prompt512_tokens_per_s"]
    print(
        f"  decode: linears {1e3 * decode_lin:.0f} ms of {1e3 * dec:.0f} ms/token ({decode_lin / dec:.0%}); "
        f"the rest (quantize, LayerNorm, attention, GELU, rotary, Python) {1e3 * (dec - decode_lin):.0f} ms"
    )
    print(
        f"  prompt 512: linears {prompt_lin:.1f} s of {pr:.1f} s ({prompt_lin / pr:.0%}); "
        f"the linears alone would give {512 / prompt_lin:.1f} tokens/s"
    )

    by_isa = prompt_kernels_by_isa(args.threads)
    print("\nint8 linear at M = 512 by kernel level, GMAC/s (best of 2):")
    for shape in dict.fromkeys(s for s, _ in by_isa):
        print(f"  {shape:12s} " + "  ".join(f"{isa} {v:5.0f}" for (s, isa), v in by_isa.items() if s == shape))

    if not args.no_torch:
        try:
            ts = torch_slices(args.threads)
        except ImportError:
            ts = None
        if ts:
            a, b = TORCH_SLICES
            print(
                f"\ntorch quantize_dynamic int8 (fbgemm), {a}- and {b}-layer slices, extrapolated to 28 layers "
                f"(the per-layer cost is the difference of the two):"
            )
            for key, T in (("decode_s", 1), ("prompt512_s", 512)):
                per_layer = (ts[(b, key)] - ts[(a, key)]) / (b - a)
                full = ts[(a, key)] + (28 - a) * per_layer
                print(
                    f"  {key:12s} {a} layers {ts[(a, key)]:.3f} s, {b} layers {ts[(b, key)]:.3f} s -> 28 layers "
                    f"{full:.2f} s = {T / full:.2f} tokens/s"
                )


if __name__ == "__main__":
    main()
