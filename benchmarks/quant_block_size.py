"""int8 block size 32 vs 64: how far the logits move from the float32 reference.

docs/design.md ("int8 scheme") says the block size is chosen by measurement. For each test model and block
size this runs the NumPy reference twice on the same token ids:

    weights-only  the reference on dequantized int8 weights (what backend="reference" runs on a q8 file)
    w8a8          every quantized linear layer replaced by the exact int8 emulation `quant.q8_linear`
                  (int8 weights AND per-token int8 activations: what the C++ int8 runtime computes)

and reports, against the float32 reference: mean and minimum cosine similarity of the logit rows,
max |Δ logit| (absolute and relative to the largest |logit|) and top-1 agreement. Random weights have
no outliers, real LLM activations do (a few residual channels far larger than the rest), so each geometry
also runs with "outlier channels": 4 LayerNorm channels scaled by 20, which puts a few large values in
the activations every quantized layer sees.

    python benchmarks/quant_block_size.py
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gptj_ref.config import GPTJConfig  # noqa: E402
from gptj_ref.layout import random_weights  # noqa: E402
from gptj_ref.quant import dequantize_blocks, is_quantized, q8_linear, quantize_blocks  # noqa: E402
from gptj_ref.reference import Reference  # noqa: E402

GEOMETRIES = {
    "width-256": GPTJConfig(
        vocab_size=1000, n_positions=128, n_embd=256, n_layer=4, n_head=4, rotary_dim=32, bos_token_id=0, eos_token_id=0
    ),
    "real-heads-1024": GPTJConfig(
        vocab_size=4000,
        n_positions=128,
        n_embd=1024,
        n_layer=4,
        n_head=4,
        rotary_dim=64,
        bos_token_id=0,
        eos_token_id=0,
    ),
}
BLOCK_SIZES = (32, 64)
TOKENS = 48


class Q8Matrix:
    """A quantized weight that the reference's `x @ weight.T` runs through the exact int8 emulation."""

    __array_ufunc__ = None  # make `ndarray @ Q8Matrix` defer to __rmatmul__

    def __init__(self, q, scales):
        self.q, self.scales = q, scales

    @property
    def T(self):
        return self

    def __rmatmul__(self, x):
        return q8_linear(x, self.q, self.scales)


def make_weights(config: GPTJConfig, seed: int, outliers: bool):
    weights = random_weights(config, seed=seed, std=1.5 / config.n_embd**0.5)
    if outliers:
        channels = np.random.default_rng(seed + 1).choice(config.n_embd, 4, replace=False)
        for name, w in weights.items():
            if name.endswith("ln_1.weight") or name == "transformer.ln_f.weight":
                w[channels] *= 20
    return weights


def compare(name, logits, reference):
    a, b = logits.astype(np.float64), reference.astype(np.float64)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    delta = np.abs(a - b).max()
    top1 = (a.argmax(-1) == b.argmax(-1)).mean()
    return (
        f"{name:<13} cos mean {cos.mean():.6f} min {cos.min():.6f}   max|Δ| {delta:.4f} "
        f"({delta / np.abs(b).max():.2%} of max|logit| {np.abs(b).max():.2f})   top-1 agree {top1:.1%}"
    )


def main() -> None:
    for label, config in GEOMETRIES.items():
        for outliers in (False, True):
            weights = make_weights(config, seed=0, outliers=outliers)
            ids = np.random.default_rng(1).integers(0, config.vocab_size, TOKENS)
            reference = Reference(config, weights).forward(ids)
            print(
                f"\n{label} ({config.n_layer} layers, n_embd {config.n_embd}, vocab {config.vocab_size}), "
                f"{'4 outlier channels x20' if outliers else 'Gaussian weights'}, {TOKENS} tokens"
            )
            for qk in BLOCK_SIZES:
                started = time.perf_counter()
                quantized = {n: quantize_blocks(w, qk) for n, w in weights.items() if is_quantized(n)}
                dequantized = {n: dequantize_blocks(*quantized[n]) if n in quantized else w for n, w in weights.items()}
                emulated = {n: Q8Matrix(*quantized[n]) if n in quantized else w for n, w in weights.items()}
                print(f"  block {qk} ({1 + 2 / qk:.4f} bytes/weight):")
                print("   ", compare("weights-only", Reference(config, dequantized).forward(ids), reference))
                print(
                    "   ",
                    compare("w8a8", Reference(config, emulated).forward(ids), reference),
                    f"  [{time.perf_counter() - started:.1f} s]",
                )


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
