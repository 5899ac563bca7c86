"""Scoring speed (perplexity) of the int8 runtime on the full-size GPT-J 6B random q8 file.

    python benchmarks/bench_eval.py [--file /tmp/gptj6b-random-q8.gptj] [--threads 2]
                                                 [--tokens 512] [--stride N] [--repeats 2] [--questions 3]
                                                 [--model PATH]   (any model instead of the 6B file)

The file is the one benchmarks/bench_int8.py writes (built here when missing; ~6.9 GB). One run
measures, on the same random token ids:
  - the prompt rate: a forward pass over `tokens` tokens with logits for the last position only, as
    generation runs a prompt;
  - the scoring rate: Model.score over the same tokens (logits for every position, their float64
    log-softmax, in strided windows when tokens exceed the context), as `gptj eval perplexity` runs;
and prints scored tokens/s beside prompt tokens/s. Then multiple choice, `questions` questions of a
64-token context and 4 continuations of 16 tokens: scored together (the context runs once and its KV
cache is copied to each continuation's row) against each pair in its own forward pass. Scoring is
prompt-shaped work plus lm_head on every position (50400 x 4096 MACs per token, ~3% of the model's) and the
log-softmax, so it should run close to the prompt rate. Times are the best of `repeats` (the machine is
shared; the best is the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_int8 import DEFAULT_FILE, cpu_name, ensure_file, warm_page_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default=DEFAULT_FILE)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=512, help="tokens to score (default 512)")
    parser.add_argument("--stride", type=int, default=None, help="window stride when tokens exceed the context")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--questions", type=int, default=3, help="multiple-choice questions (default 3)")
    parser.add_argument("--model", default=None, help="measure this model instead of the 6B random file")
    args = parser.parse_args()

    import gptj_ref
    from gptj_ref.runtime import kernel_isa

    path = args.model
    if path is None:
        path = args.file
        ensure_file(path)
    print(f"page cache warmed in {warm_page_cache(path):.1f} s", flush=True)
    model = gptj_ref.load(path, backend="cpp", threads=args.threads)
    backend = model.backend
    ids = np.random.default_rng(0).integers(0, 50000, args.tokens)
    prompt_len = min(args.tokens, model.config.n_positions)

    prompt_s, score_s = [], []
    for _ in range(args.repeats):
        cache = backend.new_cache(prompt_len)
        t0 = time.perf_counter()
        backend.forward(ids[:prompt_len], cache, last_only=True)
        prompt_s.append(time.perf_counter() - t0)
        del cache
        t0 = time.perf_counter()
        scores = model.score(ids, stride=args.stride)
        score_s.append(time.perf_counter() - t0)
        print(
            f"  prompt {prompt_len}: {prompt_len / prompt_s[-1]:.1f} tokens/s; "
            f"score {len(scores.token_ids)}: {len(scores.token_ids) / score_s[-1]:.1f} scored tokens/s",
            flush=True,
        )

    prompt_rate = prompt_len / min(prompt_s)
    score_rate = len(scores.token_ids) / min(score_s)
    print(f"CPU: {cpu_name()}, {backend.threads} threads, {kernel_isa()} kernels")
    print(f"model: {model.description} ({backend.name}, {backend.kv_dtype} KV cache)")
    print(f"prompt: {prompt_rate:.1f} tokens/s ({prompt_len} tokens, logits of the last position only)")
    print(
        f"score:  {score_rate:.1f} scored tokens/s ({len(scores.token_ids)} tokens scored, every position's "
        f"logits and log-softmax) = {score_rate / prompt_rate:.2f} x the prompt rate (best of {args.repeats})"
    )
    if args.questions:
        shared_s, separate_s = multiple_choice(model, args.questions)
        print(
            f"multiple choice, {args.questions} x (64-token context, 4 x 16-token choices): {shared_s:.1f} s with "
            f"the context run once, {separate_s:.1f} s pair by pair ({separate_s / shared_s:.2f} x)"
        )


def multiple_choice(model, questions: int):
    """Seconds to score the questions' pairs together, and pair by pair; the results must agree."""
    from gptj_ref.scoring import score_pairs, sum_scores

    rng = np.random.default_rng(2)
    pairs = []
    for _ in range(questions):
        context = rng.integers(0, 50000, 64).tolist()
        pairs += [(context, rng.integers(0, 50000, 16).tolist()) for _ in range(4)]
    t0 = time.perf_counter()
    together = sum_scores(score_pairs(model.backend, pairs))
    shared_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    apart = [sum_scores(score_pairs(model.backend, [pair]))[0] for pair in pairs]
    separate_s = time.perf_counter() - t0
    worst = max(abs(a[0] - b[0]) / abs(b[0]) for a, b in zip(together, apart))
    print(f"  shared-context and pair-by-pair log-likelihoods differ by {worst:.1e} relative at most", flush=True)
    return shared_s, separate_s


if __name__ == "__main__":
    main()
