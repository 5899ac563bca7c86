"""Held-out perplexity of the demo model: fp32 (reference and cpp), int8 (cpp), and the reference on the
dequantized int8 weights; and how long loading the shipped file takes.

    python training/train_demo.py --out runs/demo ...          # writes runs/demo/hf and runs/demo/corpus
    python benchmarks/demo_perplexity.py --run runs/demo

The held-out text is the training run's corpus/heldout.txt (books never trained on), tokenized as in
training: each chapter followed by <|endoftext|>. It is cut into windows of n_positions tokens; in each
window every token after the first is predicted from the ones before it. perplexity = exp(mean NLL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import gptj_ref
from gptj_ref.demo import DEMO_PATH
from gptj_ref.tokenizer import END_OF_TEXT_ID, default_tokenizer


def heldout_ids(path: str) -> np.ndarray:
    tokenizer = default_tokenizer()
    with open(path, encoding="utf-8") as f:
        chapters = f.read().strip().split("\n\n")
    ids = []
    for chapter in chapters:
        ids.extend(tokenizer.encode(chapter))
        ids.append(END_OF_TEXT_ID)
    return np.asarray(ids, np.int64)


def perplexity(model, ids: np.ndarray, window: int) -> tuple:
    """(perplexity, tokens scored) over non-overlapping windows of `window` tokens."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        logits = model.backend.forward(chunk).astype(np.float64)  # [T, vocab]
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= log_probs[np.arange(len(chunk) - 1), chunk[1:]].sum()
        count += len(chunk) - 1
    return float(np.exp(total / count)), count


def load_seconds(repeats: int) -> list:
    """Wall time of gptj_ref.load() (the shipped demo file, cpp backend) in fresh processes, after import."""
    code = "import time, gptj_ref; t = time.perf_counter(); m = gptj_ref.load(); print(time.perf_counter() - t)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    return [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout)
        for _ in range(repeats)
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the training run directory (hf/ and corpus/heldout.txt)")
    p.add_argument("--model", default=DEMO_PATH, help="the q8 file (default: the shipped demo model)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N held-out tokens")
    p.add_argument("--load-repeats", type=int, default=5)
    args = p.parse_args()

    ids = heldout_ids(os.path.join(args.run, "corpus", "heldout.txt"))
    if args.max_tokens:
        ids = ids[: args.max_tokens]
    runs = [
        ("fp32 reference (trained checkpoint)", os.path.join(args.run, "hf"), "reference"),
        ("fp32 cpp (trained checkpoint)", os.path.join(args.run, "hf"), "cpp"),
        ("int8 cpp (shipped file)", args.model, "cpp"),
        ("reference on the dequantized int8 weights", args.model, "reference"),
    ]
    results = {}
    for label, path, backend in runs:
        model = gptj_ref.load(path, backend=backend)
        started = time.perf_counter()
        ppl, n = perplexity(model, ids, model.config.n_positions)
        results[label] = ppl
        print(f"{label:<44} perplexity {ppl:8.3f}   ({n} tokens, {time.perf_counter() - started:.1f} s)")
    fp32, int8 = results[runs[0][0]], results[runs[2][0]]
    print(f"int8 / fp32 perplexity: {int8 / fp32:.4f} ({100 * (int8 / fp32 - 1):+.2f}%)")
    times = load_seconds(args.load_repeats)
    print(
        f"gptj_ref.load() of {args.model} ({os.path.getsize(args.model) / 1e6:.1f} MB): median "
        f"{statistics.median(times):.3f} s over {len(times)} fresh processes "
        f"(min {min(times):.3f}, max {max(times):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
