"""GPT-J semantics that a comparison of logits cannot see, against transformers (docs/gptj.md).

Rotary makes every attention score depend only on the difference of two positions, so positions that
start at 1 instead of 0 leave every logit comparison passing; the keys in the KV cache (rotated by
absolute position) and a prompt of the full context show it. The top-p boundary shows only on tied
probabilities. A slightly wrong GELU constant moves the logits less than the parity tolerances, so the
activation is tested at its own precision.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptj_ref.generate import apply_top_p
from gptj_ref.reference import Reference, gelu_new, softmax
from helpers import report_diff

NAMES = ["rot-lt-head", "real-heads"]


def transformers_keys(model, ids):
    """transformers' KV cache keys after one forward pass over ids [T]: per layer [n_head, T, d_head]."""
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(ids))[None], use_cache=True)
    return [layer.keys[0].numpy() for layer in out.past_key_values.layers]


def transformers_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))[None]).logits[0].numpy()


def backends(config, weights):
    """The reference, and the C++ runtime when it is built, each with a way to read its cached keys."""
    found = [(Reference(config, weights), lambda cache, layer: cache.keys[layer][0])]
    try:
        from gptj_ref.runtime import CppModel
    except ImportError:
        return found
    found.append((CppModel(config, weights, threads=2), lambda cache, layer: cache.core.stored("keys", layer, 0)))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_cached_keys_equal_transformers_past_key_values(hf_models, name):
    # Keys are stored after rotary, so they carry absolute positions: the first token's key is
    # unrotated (position 0), the others turned by position * inv_freq.
    model, config, weights = hf_models[name]
    ids = np.random.default_rng(1).integers(0, config.vocab_size, 12)
    expected = transformers_keys(model, ids)
    for backend, stored_keys in backends(config, weights):
        cache = backend.new_cache(len(ids))
        backend.forward(ids, cache)
        for layer in range(config.n_layer):
            got = stored_keys(cache, layer)[:, : len(ids)]
            # Tolerance: float32 matmul rounding through at most this many layers, ~1e-6 of the keys' scale
            # (measured: below 9e-7 relative); one position off turns pair 0 by a radian, an O(1) change.
            scale = np.abs(expected[layer]).max()
            np.testing.assert_allclose(
                got,
                expected[layer],
                rtol=0,
                atol=1e-5 * scale,
                err_msg=f"{backend.name} layer {layer}: {report_diff(got, expected[layer])}",
            )


@pytest.mark.parametrize("name", NAMES)
def test_a_prompt_of_the_whole_context(hf_models, name):
    # Positions 0 .. n_positions - 1 use every row of the rotary table and no more.
    model, config, weights = hf_models[name]
    ids = np.random.default_rng(2).integers(0, config.vocab_size, config.n_positions)
    expected = transformers_logits(model, ids)
    for backend, _ in backends(config, weights):
        got = backend.forward(ids)
        # Tolerance: the reference's and runtime's documented parity with transformers, 2e-5 of the
        # logits' scale (tests/test_reference.py, tests/test_runtime.py).
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 2e-5 * scale, f"{backend.name}: " + report_diff(got, expected)


@pytest.mark.parametrize("top_p,survivors", [(0.75, 3), (0.5, 2), (0.25, 1), (0.8, 4)])
def test_top_p_with_tied_probabilities_matches_transformers(top_p, survivors):
    # Four equal scores have probabilities of exactly 0.25 (and the others far below): transformers
    # removes a token when its ascending cumulative probability is <= 1 - top_p, so at top_p = 0.75 the
    # first tied token (cumulative 0.25 = 1 - 0.75) goes and three stay. `<` would keep four.
    from transformers.generation.logits_process import TopPLogitsWarper

    scores = np.full(10, -40.0, np.float32)
    scores[[1, 4, 6, 9]] = 2.0
    ours = np.isfinite(apply_top_p(scores, top_p))  # removed tokens get -inf
    theirs = np.isfinite(TopPLogitsWarper(top_p)(None, torch.tensor(scores)[None])[0].numpy())
    assert ours.sum() == survivors
    assert np.array_equal(ours, theirs)


def test_reference_gelu_new_to_float32_precision():
    # A constant off in its fourth digit (0.0447 for 0.044715) changes gelu_new by ~1e-5 relative near
    # |x| = 2: invisible in the logits' parity tolerance, 100 times this test's.
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    got = gelu_new(x)
    # Tolerance: a handful of float32 roundings (tanh within 1 ulp, five products and sums): 8 ulp of the
    # result, plus 8 ulp of 0.5 |x| for the cancellation in 1 + tanh near large negative x.
    tol = 8 * 2.0**-24 * (np.abs(expected) + 0.5 * np.abs(x64))
    assert np.all(np.abs(got - expected) <= tol), report_diff(got, expected)
    from transformers.activations import NewGELUActivation

    torch_gelu = NewGELUActivation()(torch.tensor(x)).numpy()
    assert np.all(np.abs(got - torch_gelu) <= tol), report_diff(got, torch_gelu)


def test_reference_softmax_of_scores_beyond_exps_range():
    # exp overflows float32 above 88.7; subtracting the row maximum first keeps such scores exact.
    x = np.array([[1000.0, 999.0, 990.0, -5.0], [-200.0, -201.0, -300.0, -1000.0]], np.float32)
    shifted = x.astype(np.float64) - x.max(-1, keepdims=True)
    expected = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    # Tolerance: a few float32 roundings of each probability.
    np.testing.assert_allclose(softmax(x), expected, rtol=1e-6, atol=1e-38)
