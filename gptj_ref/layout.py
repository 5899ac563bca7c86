"""The tensors of a GPT-J model: names (as in the Hugging Face checkpoint) and shapes, in one place."""

from __future__ import annotations

import re
from typing import Dict, Tuple

import numpy as np

from .config import GPTJConfig

BLOCK = "transformer.h.{}."  # the prefix of every tensor of block i
# The linear layers of a block, in the order they run; GPT-J's attention projections have no bias.
BLOCK_LINEARS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc_in", "mlp.fc_out")
_BLOCK_LINEAR = "|".join(map(re.escape, BLOCK_LINEARS))
_LINEAR_WEIGHT = re.compile(rf"^(transformer\.h\.\d+\.({_BLOCK_LINEAR})|lm_head)\.weight$")

# Buffers that old GPT-J checkpoints carry (a causal mask and its fill value). They are not
# parameters; every reader skips them.
LEGACY_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


def weight_shapes(config: GPTJConfig) -> Dict[str, Tuple[int, ...]]:
    """Every parameter of GPTJForCausalLM with its shape, linear weights [out, in], in model order."""
    d, f, v = config.n_embd, config.d_ff, config.n_vocab
    shapes: Dict[str, Tuple[int, ...]] = {"transformer.wte.weight": (v, d)}
    for i in range(config.n_layer):
        p = BLOCK.format(i)
        shapes[p + "ln_1.weight"] = (d,)
        shapes[p + "ln_1.bias"] = (d,)
        for proj in BLOCK_LINEARS[:4]:
            shapes[p + f"{proj}.weight"] = (d, d)  # no bias in GPT-J attention
        shapes[p + "mlp.fc_in.weight"] = (f, d)
        shapes[p + "mlp.fc_in.bias"] = (f,)
        shapes[p + "mlp.fc_out.weight"] = (d, f)
        shapes[p + "mlp.fc_out.bias"] = (d,)
    shapes["transformer.ln_f.weight"] = (d,)
    shapes["transformer.ln_f.bias"] = (d,)
    shapes["lm_head.weight"] = (v, d)
    shapes["lm_head.bias"] = (v,)
    return shapes


def is_linear_weight(name: str) -> bool:
    """True for the weight matrix of a linear layer: the six of every block (BLOCK_LINEARS) and lm_head."""
    return _LINEAR_WEIGHT.match(name) is not None


def random_weights(config: GPTJConfig, seed: int = 0, std: float = 0.02) -> Dict[str, np.ndarray]:
    """Deterministic random fp32 weights: normal(0, std) matrices, LayerNorm weight ~1 and bias ~0.

    Used for the built-in demo model, tests and benchmarks. The LayerNorm parameters get a little
    noise too, so that a swapped weight and bias would show up in comparisons.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in weight_shapes(config).items():
        if ".ln_" in name or name.startswith("transformer.ln_f"):
            base = 1.0 if name.endswith("weight") else 0.0
            w = base + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            w = std * rng.standard_normal(shape, dtype=np.float32)
        weights[name] = w.astype(np.float32)
    return weights
