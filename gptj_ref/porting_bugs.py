"""The classic mistakes of porting GPT-J, each a switch on a copy of the reference.

    from gptj_ref.porting_bugs import BUGS, buggy_reference
    model = buggy_reference("rotate_half", config, weights, blocks=[2])   # the bug in block 2 only
    model.hidden_states(ids)                                              # as Reference.hidden_states

`buggy_reference` loads a fresh copy of `gptj_ref/reference.py` as its own module (reference.py itself is
never changed) and swaps one piece of that copy for the wrong one while the chosen blocks run; every other
block runs the copy's own, unchanged code, so before the first buggy block the copy agrees with the
reference bit for bit. `gptj_ref.parity.first_departure` then finds the block where the two part.

The bugs (see the walkthrough, docs/walkthrough.md, for what each does to the numbers):

    rotate_half    rotary pairs dim i with dim i + n_rot/2 (GPT-NeoX / LLaMA) instead of the neighbouring
                   dims (2i, 2i+1) GPT-J rotates
    ln_2           a GPT-2 style block: the MLP reads LayerNorm(x + attention) instead of the same ln_1
                   output attention read (GPT-J has one LayerNorm per block and runs both in parallel)
    erf_gelu       the exact erf GELU instead of GPT-J's tanh approximation (gelu_new)
    mask_off_by_one  the causal mask lets each token see one token ahead (key <= query + 1)
    qkv_bias       q/k/v projections with a bias GPT-J does not have, left at nn.Linear's random
                   initialisation, uniform(-1/sqrt(n_embd), 1/sqrt(n_embd)), when the weights were loaded
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
import sys
from typing import Iterable, Mapping, Optional

import numpy as np

from . import reference as _reference
from .config import GPTJConfig
from .errors import SettingsError

BUGS = ("rotate_half", "ln_2", "erf_gelu", "mask_off_by_one", "qkv_bias")


def reference_copy():
    """A fresh module object executed from reference.py's own source: patching it leaves the real one alone."""
    name = "gptj_ref._reference_copy"
    spec = importlib.util.spec_from_file_location(name, _reference.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


# The wrong pieces ---------------------------------------------------------------------------------


def rotary_rotate_half(x, sin, cos):
    """GPT-NeoX's rotary: dim i turns with dim i + n_rot/2 (GPT-J's weights expect pairs (2i, 2i+1))."""
    half = x.shape[-1] // 2
    sin = np.concatenate([sin, sin], axis=-1)[:, :, None, :]  # [B, T, 1, n_rot]: s0 s1 ... s0 s1 ...
    cos = np.concatenate([cos, cos], axis=-1)[:, :, None, :]
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_erf(x):
    """The exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)): BERT's and torch's default, not GPT-J's."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(np.float32)


def mask_one_ahead(mask):
    """The causal mask with its diagonal moved up by one: query slot s also sees key slot s + 1."""
    _, _, T, S = mask.shape
    query_slot = np.arange(S - T, S)[:, None]
    key_slot = np.arange(S)[None, :]
    leak = key_slot == query_slot + 1  # [T, S]
    return np.where(leak[None, None], np.float32(0.0), mask).astype(np.float32)


def random_qkv_biases(config: GPTJConfig, seed: int = 0):
    """What nn.Linear(bias=True) holds before the (bias-less) GPT-J weights are loaded into it."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / math.sqrt(config.n_embd)
    return [rng.uniform(-bound, bound, size=(3, config.n_embd)).astype(np.float32) for _ in range(config.n_layer)]


# The switch ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _swapped(module, **pieces):
    saved = {name: getattr(module, name) for name in pieces}
    for name, piece in pieces.items():
        setattr(module, name, piece)
    try:
        yield
    finally:
        for name, piece in saved.items():
            setattr(module, name, piece)


def buggy_reference(
    bug: str, config: GPTJConfig, weights: Mapping[str, np.ndarray], blocks: Optional[Iterable[int]] = None
):
    """A Reference (from a copy of reference.py) that has `bug` in `blocks` (default: every block)."""
    if bug not in BUGS:
        raise SettingsError(f"unknown porting bug {bug!r}; choose one of {', '.join(BUGS)}")
    buggy_blocks = set(range(config.n_layer) if blocks is None else blocks)
    ref = reference_copy()
    correct_block, correct_linear = ref.block, ref.linear
    calls = itertools.count()
    biases = random_qkv_biases(config) if bug == "qkv_bias" else None

    def block(x, w, cache_k, cache_v, step, config):
        index = next(calls) % config.n_layer  # blocks run in order 0 .. n_layer - 1 in every pass
        args = (x, w, cache_k, cache_v, step, config)
        if index not in buggy_blocks:
            return correct_block(*args)
        if bug == "rotate_half":
            with _swapped(ref, rotary=rotary_rotate_half):
                return correct_block(*args)
        if bug == "erf_gelu":
            with _swapped(ref, gelu_new=gelu_erf):
                return correct_block(*args)
        if bug == "mask_off_by_one":
            leaky = ref.Step(step.start, step.sin, step.cos, mask_one_ahead(step.mask))
            return correct_block(x, w, cache_k, cache_v, leaky, config)
        if bug == "qkv_bias":
            bias_of = {
                id(w["attn"][name]["weight"]): b for name, b in zip(("q_proj", "k_proj", "v_proj"), biases[index])
            }

            def linear(x, weight, bias=None):
                return correct_linear(x, weight, bias_of.get(id(weight), bias))

            with _swapped(ref, linear=linear):
                return correct_block(*args)
        # ln_2: attention as in GPT-J, then the MLP on a second LayerNorm of (x + attention), GPT-2 style
        # (the port has no ln_2 weights of its own and reuses ln_1's).
        eps, ln_1 = config.layer_norm_epsilon, w["ln_1"]
        h = ref.layer_norm(x, ln_1["weight"], ln_1["bias"], eps)
        a = ref.attn(h, w["attn"], cache_k, cache_v, step, config.n_head, config.n_rot)
        h2 = ref.layer_norm(x + a, ln_1["weight"], ln_1["bias"], eps)
        return (a + ref.mlp(h2, w["mlp"])) + x

    ref.block = block
    return ref.Reference(config, weights)
