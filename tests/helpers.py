"""Helpers shared by the tests: random GPT-J models made by transformers, diff reports, and a switch of the
C++ kernel level."""

from __future__ import annotations

import contextlib

import numpy as np

# Geometries the parity tests cover. Each is a GPTJConfig keyword set.
CONFIGS = {
    # rotary on half of each head (transformers' own test geometry: 4 of 8 dims)
    "rot-lt-head": dict(vocab_size=99, n_positions=128, n_embd=32, n_layer=2, n_head=4, rotary_dim=4),
    # rotary on the whole head
    "rot-eq-head": dict(vocab_size=120, n_positions=128, n_embd=32, n_layer=3, n_head=4, rotary_dim=8),
    # GPT-J 6B's head geometry (256-wide heads, rotary 64) at reduced width and depth, odd vocabulary
    "real-heads": dict(vocab_size=1013, n_positions=128, n_embd=512, n_layer=2, n_head=2, rotary_dim=64),
    # an odd vocabulary size that is not a multiple of anything
    "odd-vocab": dict(vocab_size=257, n_positions=128, n_embd=64, n_layer=2, n_head=2, rotary_dim=16),
}


def make_hf_model(seed: int = 0, init_std=None, **config_kwargs):
    """A random transformers GPTJForCausalLM in fp32 eval mode.

    transformers initialises LayerNorms to exactly (1, 0) and biases to 0; both are perturbed here so
    that a swapped or missing parameter shows in every comparison. `init_std` defaults to
    1.5 / sqrt(n_embd), so a linear layer scales activations by about 1.5 as GPT-J 6B's do (std 0.02 at
    width 4096), and the logits spread over a few units, as a trained model's do, instead of sitting near 0.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    if init_std is None:
        init_std = 1.5 / config_kwargs["n_embd"] ** 0.5
    eos = config_kwargs["vocab_size"] - 1
    cfg = transformers.GPTJConfig(bos_token_id=eos, eos_token_id=eos, initializer_range=init_std, **config_kwargs)
    model = transformers.GPTJForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def state_dict_numpy(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def report_diff(actual, expected) -> str:
    """'max |Δ| = ... at index ... (actual ..., expected ...)' for assertion messages."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    d = np.abs(actual - expected)
    i = np.unravel_index(int(np.argmax(d)), d.shape) if d.size else ()
    return (
        f"max |Δ| = {d.max():.3e} at index {i} (actual {actual[i]:.7g}, expected {expected[i]:.7g}); "
        f"mean |Δ| = {d.mean():.3e}; max |expected| = {np.abs(expected).max():.3g}"
    )


@contextlib.contextmanager
def use_isa(isa: str):
    """Run the C++ kernels of level `isa` ("scalar", "avx2", ...) inside the block; the level before is
    restored after, whatever happens."""
    from gptj_ref import _core

    before = _core.isa()
    _core.set_isa(isa)
    try:
        yield
    finally:
        _core.set_isa(before)
