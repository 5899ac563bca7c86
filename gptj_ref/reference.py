"""GPT-J in NumPy: the reference forward pass.

This file is the correctness oracle for every other backend and is meant to be read beside the GPT-J
model card. Everything is float32, one code path, no speed tricks. Where GPT-J differs from GPT-2 the
line says so.

Shapes use these names (the GPT-J 6B value in brackets):

    B        batch rows
    T        new tokens in this call
    S        key positions: cached tokens + new tokens (at most n_ctx)
    n_embd   model width                                   [4096]
    n_head   attention heads                               [16]
    d_head   width of one head = n_embd / n_head           [256]
    n_rot    leading dims of each head that are rotated    [64]
    d_ff     MLP width                                     [16384]
    n_vocab  rows of the embedding and of lm_head          [50400]
    n_ctx    longest sequence, rows of the rotary table    [2048]
    n_layer  blocks                                        [28]

(GPTJConfig's fields keep Hugging Face's names, vocab_size, n_positions, rotary_dim, n_inner; the config
also answers to these short ones. docs/design.md lists both.)

Weights are a dict keyed exactly like the Hugging Face checkpoint (`transformer.h.3.attn.q_proj.weight`),
every linear weight stored [out, in] as in torch's nn.Linear, so `y = x @ W.T + b`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from .backend import (
    DEFAULT_KV_DTYPE,
    check_cache_arrays,
    check_cache_room,
    check_cache_size,
    check_inputs,
    check_kv_dtype,
)
from .config import GPTJConfig

# The shape comments are aligned in columns so the equations read as a table; the formatter leaves them.
# fmt: off
f32 = np.float32
MASKED = np.finfo(np.float32).min  # transformers adds this to the scores of keys a query must not see


# ---------------------------------------------------------------------------------------------------
# The pieces, one equation each
# ---------------------------------------------------------------------------------------------------

def layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, biased variance."""
    mean = x.mean(axis=-1, keepdims=True)                    # [..., 1]
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)     # [..., 1]
    return (x - mean) / np.sqrt(var + f32(eps)) * weight + bias


def linear(x, weight, bias=None):
    """nn.Linear: [..., in] @ [out, in].T (+ [out]) -> [..., out]."""
    y = x @ weight.T
    return y if bias is None else y + bias


def gelu_new(x):
    """GELU, tanh approximation (transformers' "gelu_new"); GPT-J does not use the erf GELU."""
    return f32(0.5) * x * (f32(1.0) + np.tanh(f32(np.sqrt(2.0 / np.pi)) * (x + f32(0.044715) * (x * x * x))))


def softmax(x):
    """Softmax over the last axis, with the row maximum subtracted first so exp cannot overflow."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rotary_tables(n_ctx, n_rot):
    """sin and cos of the rotary angles, each [n_ctx, n_rot/2].

    Pair i of a head turns by angle p * inv_freq[i] at position p, inv_freq[i] = 10000^(-2i/n_rot).
    The angles are computed in float32 as transformers does; sin/cos are then rounded once from float64.
    """
    inv_freq = f32(1.0) / (f32(10000.0) ** (np.arange(0, n_rot, 2, dtype=f32) / f32(n_rot)))  # [n_rot/2]
    angles = np.arange(n_ctx, dtype=f32)[:, None] * inv_freq[None, :]                           # [n_ctx, n_rot/2]
    return np.sin(angles.astype(np.float64)).astype(f32), np.cos(angles.astype(np.float64)).astype(f32)


def rotary(x, sin, cos):
    """Rotate pairs (x[2i], x[2i+1]) by the angle of their position.

    GPT-J pairs *neighbouring* dims ("rotate_every_two"), unlike GPT-NeoX/LLaMA, which pair dim i with
    dim i + n_rot/2. Applying the wrong convention to GPT-J weights is a classic porting bug.

    x [B, T, n_head, n_rot];  sin, cos [B, T, n_rot/2] for the positions of the T tokens.
    """
    sin = np.repeat(sin[:, :, None, :], 2, axis=-1)      # [B, T, 1, n_rot]: s0 s0 s1 s1 ...
    cos = np.repeat(cos[:, :, None, :], 2, axis=-1)      # [B, T, 1, n_rot]
    x_swapped = np.empty_like(x)                         # [B, T, n_head, n_rot]
    x_swapped[..., 0::2] = -x[..., 1::2]                 # (x0, x1) -> (-x1, x0)
    x_swapped[..., 1::2] = x[..., 0::2]
    return x * cos + x_swapped * sin


def attention(q, k, v, mask):
    """Scaled dot-product attention, scores and softmax in float32.

    q [B, n_head, T, d_head];  k, v [B, n_head, S, d_head];  mask [B, 1, T, S] (0 or MASKED)
    -> [B, n_head, T, d_head]
    """
    d_head = q.shape[-1]
    scores = q @ k.transpose(0, 1, 3, 2) / f32(np.sqrt(d_head)) + mask  # [B, n_head, T, S]
    return softmax(scores) @ v                                           # [B, n_head, T, d_head]


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------

@dataclass
class KVCache:
    """Keys (after rotary) and values of every layer for the tokens seen so far.

    keys, values [n_layer, B, n_head, max_tokens, d_head]: float32, or float16 to reproduce the C++
    runtime's half-precision cache (rounded when stored, widened when read). `real` [B, max_tokens]
    marks the slots that hold real tokens rather than left padding; `length` slots are filled.
    """

    keys: np.ndarray
    values: np.ndarray
    real: np.ndarray
    length: int = 0

    @property
    def max_tokens(self) -> int:
        return self.keys.shape[3]

    @property
    def batch(self) -> int:
        return self.keys.shape[1]


@dataclass
class Step:
    """Where the T new tokens of one forward pass sit: what attention needs besides the activations."""

    start: int        # the new tokens fill cache slots [start, start + T)
    sin: np.ndarray   # [B, T, n_rot/2] rotary sin and cos at each new token's position
    cos: np.ndarray
    mask: np.ndarray  # [B, 1, T, start + T]: 0 where a query may see a key, MASKED where not


def attn(x, w, cache_k, cache_v, step: Step, n_head, n_rot):
    """Causal self-attention with rotary positions.  x [B, T, n_embd] -> [B, T, n_embd].

    w holds q_proj, k_proj, v_proj and out_proj; GPT-J's have no bias. cache_k, cache_v are this
    layer's [B, n_head, max_tokens, d_head]: the new keys and values are written into slots
    [step.start, step.start + T), then the queries attend over slots [0, step.start + T).
    """
    B, T, n_embd = x.shape
    d_head = n_embd // n_head
    q = linear(x, w["q_proj"]["weight"]).reshape(B, T, n_head, d_head)   # [B, T, n_head, d_head]
    k = linear(x, w["k_proj"]["weight"]).reshape(B, T, n_head, d_head)   # [B, T, n_head, d_head]
    v = linear(x, w["v_proj"]["weight"]).reshape(B, T, n_head, d_head)   # [B, T, n_head, d_head]

    # Rotary on the first n_rot dims of each head only; the other d_head - n_rot dims pass through.
    q = np.concatenate([rotary(q[..., :n_rot], step.sin, step.cos), q[..., n_rot:]], axis=-1)
    k = np.concatenate([rotary(k[..., :n_rot], step.sin, step.cos), k[..., n_rot:]], axis=-1)

    end = step.start + T
    cache_k[:, :, step.start:end] = k.transpose(0, 2, 1, 3)        # [B, n_head, T, d_head]
    cache_v[:, :, step.start:end] = v.transpose(0, 2, 1, 3)        # (a float16 cache rounds them here)
    keys = cache_k[:, :, :end].astype(f32, copy=False)             # attention in float32 either way
    values = cache_v[:, :, :end].astype(f32, copy=False)
    out = attention(q.transpose(0, 2, 1, 3), keys, values, step.mask)
    out = out.transpose(0, 2, 1, 3).reshape(B, T, n_embd)          # merge heads: [B, T, n_embd]
    return linear(out, w["out_proj"]["weight"])


def mlp(x, w):
    """Feed-forward: [B, T, n_embd] -> fc_in -> [B, T, d_ff] -> gelu_new -> fc_out -> [B, T, n_embd]."""
    return linear(gelu_new(linear(x, w["fc_in"]["weight"], w["fc_in"]["bias"])), w["fc_out"]["weight"],
                  w["fc_out"]["bias"])


def block(x, w, cache_k, cache_v, step: Step, config: GPTJConfig):
    """One GPT-J block with weights w (ln_1, attn, mlp).  x [B, T, n_embd] -> [B, T, n_embd].

    GPT-J differs from GPT-2 here: ONE LayerNorm, and attention and MLP run *in parallel* on its
    output, both added to the residual: x + attn(ln_1(x)) + mlp(ln_1(x)). There is no ln_2.
    """
    h = layer_norm(x, w["ln_1"]["weight"], w["ln_1"]["bias"], config.layer_norm_epsilon)   # [B, T, n_embd]
    a = attn(h, w["attn"], cache_k, cache_v, step, config.n_head, config.n_rot)            # [B, T, n_embd]
    m = mlp(h, w["mlp"])                                                                   # [B, T, n_embd]
    return (a + m) + x


def causal_mask(real, start, T):
    """Additive mask [B, 1, T, S] for T queries in slots [start, start+T) over keys in slots [0, S).

    A query sees a key when the key is not in its future and is a real token (not left padding).
    """
    S = start + T
    query_slot = np.arange(start, S)[:, None]                       # [T, 1]
    key_slot = np.arange(S)[None, :]                                # [1, S]
    visible = (key_slot <= query_slot)[None] & real[:, None, :S]    # [B, T, S]
    return np.where(visible, f32(0.0), MASKED)[:, None].astype(f32)


def nest(weights: Mapping[str, np.ndarray]) -> dict:
    """{"a.b.c": w} -> {"a": {"b": {"c": w}}}, so checkpoint names become dictionary paths."""
    tree: dict = {}
    for name, value in weights.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


class Reference:
    """The NumPy GPT-J as a backend (gptj_ref.backend.Backend): `config`, `new_cache`, `forward`."""

    name = "reference"

    def __init__(self, config: GPTJConfig, weights: Mapping[str, np.ndarray], kv_dtype: str = DEFAULT_KV_DTYPE):
        """kv_dtype: "float32" (GPT-J's own precision) or "float16" (to reproduce the half-precision
        cache the C++ runtime keeps for int8 models)."""
        self.config = config
        self.kv_dtype = check_kv_dtype(kv_dtype)
        tree = nest(weights)
        self.wte = tree["transformer"]["wte"]["weight"]              # [n_vocab, n_embd]
        self.blocks = [tree["transformer"]["h"][str(i)] for i in range(config.n_layer)]
        self.ln_f = tree["transformer"]["ln_f"]
        self.lm_head = tree["lm_head"]
        self.sin, self.cos = rotary_tables(config.n_ctx, config.n_rot)  # [n_ctx, n_rot/2] each

    def new_cache(self, max_tokens: Optional[int] = None, batch: int = 1) -> KVCache:
        c = self.config
        max_tokens, batch = check_cache_size(c, max_tokens, batch)
        shape = (c.n_layer, batch, c.n_head, max_tokens, c.d_head)
        dtype = np.dtype(self.kv_dtype)
        return KVCache(np.zeros(shape, dtype), np.zeros(shape, dtype), np.zeros((batch, max_tokens), bool))

    def forward(self, token_ids, cache: Optional[KVCache] = None, attention_mask=None,
                last_only: bool = False) -> np.ndarray:
        """Logits for T new tokens: ids [T] -> [T, n_vocab], or [B, T] -> [B, T, n_vocab].

        `attention_mask` [B, T] marks real tokens with 1 and left padding with 0. last_only=True returns
        only the last position's logits, [n_vocab] or [B, n_vocab] (equal to `forward(...)[..., -1, :]`):
        all generation needs, without lm_head's work on the other tokens.
        """
        ids, mask, squeeze = check_inputs(self.config, token_ids, attention_mask)
        if cache is None:
            cache = self.new_cache(ids.shape[1], ids.shape[0])
        logits = self._run(ids, mask, cache, last_only=last_only)
        return logits[0] if squeeze else logits

    def hidden_states(self, token_ids) -> list:
        """For one sequence ids [T]: the residual stream [T, n_embd] entering block 0 (the embeddings),
        after each block, after ln_f, and finally the logits [T, n_vocab] (n_layer + 3 arrays)."""
        ids, mask, _ = check_inputs(self.config, np.asarray(token_ids)[None])
        states: list = []
        self._run(ids, mask, self.new_cache(ids.shape[1]), states=states)
        return [h[0] for h in states]

    def _run(self, ids, mask, cache: KVCache, last_only=False, states=None) -> np.ndarray:
        """ids [B, T] with mask [B, T] -> logits [B, T, n_vocab] ([B, n_vocab] with last_only). A list
        given as `states` receives the residual stream entering each block, then ln_f's input and output
        and the logits."""
        B, T = ids.shape
        check_cache_arrays(cache, KVCache, self.config, self.kv_dtype)
        step = self._place(cache, check_cache_room(cache, B, T), mask)
        keep = states.append if states is not None else (lambda state: None)
        x = self.wte[ids]                               # [B, T, n_embd]; no position embedding in GPT-J
        for i, w in enumerate(self.blocks):
            keep(x)
            x = block(x, w, cache.keys[i], cache.values[i], step, self.config)
        cache.length = step.start + T
        keep(x)
        x = layer_norm(x, self.ln_f["weight"], self.ln_f["bias"], self.config.layer_norm_epsilon)
        if last_only:
            x = x[:, -1]                                # [B, n_embd]
        logits = linear(x, self.lm_head["weight"], self.lm_head["bias"])  # GPT-J's lm_head has a bias
        keep(x)
        keep(logits)
        return logits

    def _place(self, cache: KVCache, start: int, mask) -> Step:
        """Record which new slots are real, and give each new token its position, rotary angles and mask."""
        T = mask.shape[1]
        cache.real[:, start:start + T] = mask
        # A token's position counts the real tokens before it in its row, so left padding shifts nothing.
        positions = cache.real[:, :start].sum(axis=1, keepdims=True) + np.cumsum(mask, axis=1) - 1  # [B, T]
        positions = np.where(mask, positions, 1)  # pads take position 1 as in transformers; never compared
        return Step(start, self.sin[positions], self.cos[positions], causal_mask(cache.real, start, T))
