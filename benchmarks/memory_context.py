"""Peak memory of the int8 runtime at a long context: load, one prompt of N tokens, a few decode steps.

    python benchmarks/memory_context.py [--file /tmp/gptj6b-random-q8.gptj] [--tokens 2048]
                                        [--kv-dtype float16|float32] [--threads 2]

The file is the one benchmarks/bench_int8.py builds (full-size GPT-J 6B, random int8 weights). Prints the
peak resident set (VmHWM: mapped weight pages plus everything allocated) and its two parts at the end:
file-backed pages (the weights read) and anonymous memory (KV cache, scratch, Python), and beside it the
estimate `gptj_ref.memory.estimate_memory` makes before a load of that context (what `load` checks against
the available memory and `gptj info` prints). Run it in a fresh process per setting: a peak only grows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def status_gb() -> dict:
    """VmHWM, VmRSS, RssAnon, RssFile of this process, in GB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024 / 1e9
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default="/tmp/gptj6b-random-q8.gptj")
    p.add_argument("--tokens", type=int, default=2048, help="prompt length (the cache holds it plus 4 decoded tokens)")
    p.add_argument("--kv-dtype", default=None, choices=("float16", "float32"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import gptj_ref
    from gptj_ref.memory import estimate_memory

    model = gptj_ref.load(args.file, backend="cpp", threads=args.threads, kv_dtype=args.kv_dtype)
    backend = model.backend
    n_ctx = backend.config.n_positions
    prompt_tokens = min(args.tokens, n_ctx - 4)
    cache = backend.new_cache(prompt_tokens + 4)
    ids = np.random.default_rng(0).integers(0, 50000, prompt_tokens)
    t0 = time.perf_counter()
    logits = backend.forward(ids, cache, last_only=True)
    prompt_s = time.perf_counter() - t0
    for _ in range(4):
        logits = backend.forward(np.array([int(np.argmax(logits[-1]))]), cache, last_only=True)
    s = status_gb()
    print(
        f"{prompt_tokens}-token prompt + 4 tokens, {cache.core.dtype} KV cache of {cache.core.nbytes / 1e9:.2f} GB "
        f"(prompt {prompt_tokens / prompt_s:.1f} tokens/s): peak RSS {s['VmHWM']:.2f} GB; at the end "
        f"{s['RssFile']:.2f} GB file pages + {s['RssAnon']:.2f} GB anonymous"
    )
    estimate = estimate_memory(
        backend.config, model.dtype, "cpp", prompt_tokens + 4, backend.kv_dtype, threads=backend.threads
    )
    print(
        f"estimate before the load: {estimate.describe()}; estimate / peak RSS = "
        f"{estimate.total / 1e9 / s['VmHWM']:.3f}"
    )


if __name__ == "__main__":
    main()
