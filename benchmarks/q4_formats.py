"""Which 4-bit scheme: the candidates measured side by side (the table in docs/kernels.md comes from here).

    python benchmarks/q4_formats.py [--width-only] [--model HF_DIR --text HELDOUT.txt]

Candidates (all blocks of 32 along K with float16 parameters):
    sym7      symmetric, d = max|w| / 7, q = round(w / d) in [-7, 7]            0.5625 bytes/weight
    q4_0      ggml's: d = (the signed w of largest |w|) / -8, q in [-8, 7]     0.5625
    q4_1      scale and minimum: w ~= q d + m, q in [0, 15]                    0.625
    errmin    symmetric [-8, 7], the scale minimising the block's squared error
              (gptj_ref's q4, quant.q4_quantize_blocks)                         0.5625
    errmin+lm errmin with lm_head kept at q8                                    (model-level only)
and q8 (gptj_ref's int8 blocks) for scale.

Measures
1. weight error at 6B shapes: relative rms error of the dequantized weight, for Gaussian and Student-t
   (5 degrees of freedom: heavier tails, as trained weights have) weights [4096, 4096];
2. logit error at 6B width: one GPT-J block (n_embd 4096, d_ff 16384, 16 heads) plus ln_f and an
   lm_head of 8192 rows, Student-t weights, 16 tokens, the NumPy reference on each candidate's
   dequantized weights against fp32: relative rms error of the logits and top-1 agreement;
3. with --model and --text: held-out perplexity of a trained checkpoint (the demo model) for fp32, q8 and
   each candidate, over the first --tokens tokens of the text in windows of the model's context.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gptj_ref import quant
from gptj_ref.config import GPTJConfig
from gptj_ref.reference import Reference

QK = 32


def blocks_of(w):
    N, K = w.shape
    return np.asarray(w, np.float32).reshape(N, K // QK, QK)


def sym7(w):
    b = blocks_of(w)
    d = (np.abs(b).max(-1) / 7).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(b / np.where(d > 0, d, 1)[..., None]), -7, 7)
    return (q * d[..., None]).reshape(w.shape)


def q4_0(w):
    b = blocks_of(w)
    idx = np.abs(b).argmax(-1)
    m = np.take_along_axis(b, idx[..., None], -1)[..., 0]
    d = (m / -8).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(b / np.where(d != 0, d, 1)[..., None]), -8, 7)
    return (q * d[..., None]).reshape(w.shape)


def q4_1(w):
    b = blocks_of(w)
    mn, mx = b.min(-1), b.max(-1)
    d = ((mx - mn) / 15).astype(np.float16).astype(np.float32)
    m = mn.astype(np.float16).astype(np.float32)
    q = np.clip(np.rint((b - m[..., None]) / np.where(d > 0, d, 1)[..., None]), 0, 15)
    return (q * d[..., None] + m[..., None]).reshape(w.shape)


def errmin(w):
    return quant.q4_dequantize_blocks(*quant.q4_quantize_blocks(w))


def q8(w):
    return quant.dequantize_blocks(*quant.quantize_blocks(w))


CANDIDATES = {"sym7": sym7, "q4_0": q4_0, "q4_1": q4_1, "errmin": errmin}


def in_chunks(fn, w, rows=1024):
    return np.concatenate([fn(w[i : i + rows]) for i in range(0, w.shape[0], rows)])


def quantized_weights(weights, scheme, lm_head_q8=False):
    out = {}
    for name, w in weights.items():
        if quant.is_quantized(name):
            fn = q8 if (scheme == "q8" or (lm_head_q8 and name == "lm_head.weight")) else CANDIDATES[scheme]
            out[name] = in_chunks(fn, w)
        else:
            out[name] = w
    return out


def weight_errors():
    rng = np.random.default_rng(0)
    print("1. weight error, relative rms, [4096, 4096]:")
    for dist, w in (("gaussian", rng.standard_normal((4096, 4096))), ("student-t(5)", rng.standard_t(5, (4096, 4096)))):
        w = (0.02 * w / w.std()).astype(np.float32)
        row = {
            name: np.sqrt(np.mean((in_chunks(fn, w) - w) ** 2)) / w.std()
            for name, fn in list(CANDIDATES.items()) + [("q8", q8)]
        }
        print(f"   {dist:13s} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)


def layer_logits():
    rng = np.random.default_rng(1)
    config = GPTJConfig(
        vocab_size=8192,
        n_positions=64,
        n_embd=4096,
        n_layer=1,
        n_head=16,
        rotary_dim=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    weights = {}
    from gptj_ref.layout import weight_shapes

    for name, shape in weight_shapes(config).items():
        if len(shape) == 1:
            weights[name] = (
                (1.0 if "ln_" in name and name.endswith("weight") else 0.0) + 0.02 * rng.standard_normal(shape)
            ).astype(np.float32)
        else:
            t = rng.standard_t(5, shape).astype(np.float32)
            weights[name] = (0.02 * t / t.std()).astype(np.float32)
    weights["transformer.wte.weight"] *= 50  # embeddings of a useful size next to LayerNorm's unit scale
    ids = rng.integers(0, config.vocab_size, 16)
    full = Reference(config, weights).forward(ids).astype(np.float64)
    print("2. logits at 6B width (1 block + lm_head of 8192 rows, student-t weights, 16 tokens) vs fp32:")
    for scheme in ["q8"] + list(CANDIDATES):
        t0 = time.perf_counter()
        got = Reference(config, quantized_weights(weights, scheme)).forward(ids).astype(np.float64)
        rel = np.sqrt(np.mean((got - full) ** 2)) / np.sqrt(np.mean(full**2))
        top1 = np.mean(got.argmax(-1) == full.argmax(-1))
        print(
            f"   {scheme:8s} rel rms {rel:.4f}  top-1 agreement {top1:.2f}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def perplexity(model_dir, text_path, n_tokens):
    from gptj_ref.checkpoint import open_checkpoint
    from gptj_ref.tokenizer import default_tokenizer

    ckpt = open_checkpoint(model_dir)
    config = ckpt.config
    weights = {name: np.asarray(ckpt.read(name), np.float32) for name in ckpt.names()}
    tok = default_tokenizer()
    with open(text_path, encoding="utf-8") as f:
        ids = np.array(tok.encode(f.read())[: n_tokens + 1])
    window = config.n_positions
    print(f"3. held-out perplexity, {model_dir}, first {len(ids) - 1} tokens of {text_path}, windows of {window}:")

    def ppl(w):
        model = Reference(config, w)
        nll, count = 0.0, 0
        for s in range(0, len(ids) - 1, window):
            x, y = ids[s : s + window], ids[s + 1 : s + window + 1]
            x = x[: len(y)]
            logits = model.forward(x).astype(np.float64)
            logits -= logits.max(-1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            nll -= logp[np.arange(len(y)), y].sum()
            count += len(y)
        return float(np.exp(nll / count))

    base = ppl(weights)
    print(f"   fp32     {base:.3f}", flush=True)
    for scheme, lm8 in [("q8", False)] + [(c, False) for c in CANDIDATES] + [("errmin", True)]:
        p = ppl(quantized_weights(weights, scheme, lm8))
        label = scheme + ("+lm" if lm8 else "")
        print(f"   {label:8s} {p:.3f}  ({100 * (p / base - 1):+.2f}% vs fp32)", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model")
    p.add_argument("--text")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--width-only", action="store_true")
    args = p.parse_args()
    if not args.model:
        weight_errors()
        if not args.width_only:
            layer_logits()
    if args.model:
        perplexity(args.model, args.text, args.tokens)


if __name__ == "__main__":
    main()
