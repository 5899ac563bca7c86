"""The NumPy reference against transformers' GPTJForCausalLM (fp32, eager), and its own invariants.

Tolerance for logits: max |Δ| <= 2e-5 * max(1, max |logit|). Both sides compute in fp32 with the same
operations in the same order except the reductions (matmul accumulation order in BLAS vs oneDNN/MKL,
the LayerNorm mean/variance sums, the softmax sum). Each such sum of K terms carries a rounding error of
order sqrt(K) * 2^-24 relative to its magnitude; with K <= 2048 (d_ff of the widest test model) and two
or three blocks that stays around 1e-6 relative: measured 4e-7 to 8e-7 of the logit scale
(`python benchmarks/parity_report.py`), so 2e-5 leaves a margin of ~20x while still catching any real
semantic error (a wrong rotary convention or a missing bias moves logits by 1e-2 or more).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptj_ref.errors import InputError
from gptj_ref.reference import Reference, rotary, rotary_tables, softmax
from helpers import CONFIGS, report_diff

torch = pytest.importorskip("torch")

REL_TOL = 2e-5


def assert_logits_close(actual, expected, rel=REL_TOL):
    tol = rel * max(1.0, float(np.abs(expected).max()))
    assert np.abs(actual - expected).max() <= tol, report_diff(actual, expected)


def hf_logits(model, ids, attention_mask=None, position_ids=None):
    with torch.no_grad():
        kwargs = {}
        if attention_mask is not None:
            kwargs["attention_mask"] = torch.tensor(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = torch.tensor(position_ids)
        return model(torch.tensor(np.atleast_2d(ids)), **kwargs).logits.numpy()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_sequence_logits_match_transformers(hf_models, name):
    model, config, weights = hf_models[name]
    ids = np.random.default_rng(1).integers(0, config.vocab_size, size=40)
    expected = hf_logits(model, ids)[0]
    actual = Reference(config, weights).forward(ids)
    assert actual.shape == (40, config.vocab_size) and actual.dtype == np.float32
    assert np.abs(expected).max() > 1.0, "test model's logits are too small to be a meaningful comparison"
    assert_logits_close(actual, expected)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_hidden_states_match_transformers(hf_models, name):
    model, config, weights = hf_models[name]
    ids = np.random.default_rng(2).integers(0, config.vocab_size, size=17)
    with torch.no_grad():
        hf = model(torch.tensor(ids[None]), output_hidden_states=True).hidden_states
    ours = Reference(config, weights).hidden_states(ids)
    assert len(ours) == config.n_layer + 3
    # transformers: embeddings, blocks 0..n-2, then ln_f(last block); ours: embeddings, blocks 0..n-1, ln_f, logits
    pairs = list(zip(ours[: config.n_layer], hf[: config.n_layer])) + [(ours[-2], hf[-1])]
    for mine, theirs in pairs:
        theirs = theirs[0].numpy()
        assert np.abs(mine - theirs).max() <= REL_TOL * max(1.0, np.abs(theirs).max()), report_diff(mine, theirs)


@pytest.mark.parametrize("name", ["rot-lt-head", "real-heads"])
def test_cached_decoding_equals_full_forward(hf_models, name):
    _, config, weights = hf_models[name]
    ref = Reference(config, weights)
    ids = np.random.default_rng(3).integers(0, config.vocab_size, size=30)
    full = ref.forward(ids)
    cache = ref.new_cache(30)
    pieces = [ref.forward(ids[a:b], cache) for a, b in [(0, 11), (11, 12), (12, 20), (20, 21), (21, 30)]]
    assert cache.length == 30
    # Cached and full runs differ only in matmul shapes (BLAS may block them differently): a few ulp.
    assert_logits_close(np.concatenate(pieces), full, rel=1e-5)


@pytest.mark.parametrize("name", ["rot-lt-head", "real-heads"])
def test_left_padded_batch_equals_rows_alone(hf_models, name):
    _, config, weights = hf_models[name]
    ref = Reference(config, weights)
    rng = np.random.default_rng(4)
    lengths = [9, 4, 1]
    rows = [rng.integers(0, config.vocab_size, size=n) for n in lengths]
    T = max(lengths)
    ids = np.full((3, T), config.eos_token_id)
    mask = np.zeros((3, T), np.int64)
    for b, row in enumerate(rows):
        ids[b, T - len(row) :] = row
        mask[b, T - len(row) :] = 1
    cache = ref.new_cache(T + 3, batch=3)
    batch = ref.forward(ids, cache, attention_mask=mask)
    step_ids = rng.integers(0, config.vocab_size, size=(3, 3))
    batch_steps = [ref.forward(step_ids[:, [j]], cache)[:, 0] for j in range(3)]
    for b, row in enumerate(rows):
        alone = ref.forward(np.concatenate([row, step_ids[b]]))
        assert_logits_close(batch[b, T - len(row) :], alone[: len(row)], rel=1e-5)
        for j in range(3):
            assert_logits_close(batch_steps[j][b], alone[len(row) + j], rel=1e-5)


def test_left_padding_matches_transformers_with_position_ids(hf_models):
    """transformers' test_left_padding_compatibility: 32 pads in front, positions cumsum(mask)-1."""
    model, config, weights = hf_models["rot-lt-head"]
    ids = np.random.default_rng(5).integers(0, config.vocab_size - 1, size=(1, 12))
    padded = np.concatenate([np.full((1, 32), config.eos_token_id), ids], axis=1)
    mask = np.concatenate([np.zeros((1, 32), np.int64), np.ones((1, 12), np.int64)], axis=1)
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)
    expected = hf_logits(model, padded, mask, positions)[0, 32:]
    actual = Reference(config, weights).forward(padded, attention_mask=mask)[0, 32:]
    assert_logits_close(actual, expected)


def test_masked_tokens_have_no_influence(hf_models):
    _, config, weights = hf_models["rot-eq-head"]
    ref = Reference(config, weights)
    ids = np.random.default_rng(6).integers(0, config.vocab_size, size=(1, 10))
    mask = np.ones((1, 10), np.int64)
    mask[0, :4] = 0
    a = ref.forward(ids, attention_mask=mask)
    changed = ids.copy()
    changed[0, :4] = (changed[0, :4] + 7) % config.vocab_size
    b = ref.forward(changed, attention_mask=mask)
    # Masked keys get weight exp(MASKED - max) == 0 exactly, so real positions are bit-identical.
    np.testing.assert_array_equal(a[0, 4:], b[0, 4:])


def test_greedy_generation_matches_transformers(hf_models):
    from gptj_ref.api import Model
    from gptj_ref.tokenizer import default_tokenizer

    model, config, weights = hf_models["real-heads"]
    prompt = [5, 77, 300, 12]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=config.eos_token_id,
        )
    expected = out[0, len(prompt) :].tolist()
    ours = Model(Reference(config, weights), default_tokenizer()).generate_ids(
        prompt, max_new_tokens=32, min_new_tokens=32
    )
    assert ours == expected


# ----------------------------------------------------------------------------------------------------
# Invariants and golden values of the pieces
# ----------------------------------------------------------------------------------------------------


def test_rotary_table_golden_values():
    """docs/gptj.md, "Golden values": the rotary table."""
    sin, cos = rotary_tables(2048, 64)
    inv_freq_0_to_3 = np.array([1.0, 0.7498942, 0.56234133, 0.4216965], np.float32)
    np.testing.assert_allclose(np.arctan2(sin[1, :4], cos[1, :4]), inv_freq_0_to_3, rtol=1e-6)
    np.testing.assert_allclose([sin[1, 0], cos[1, 0]], [0.84147096, 0.5403023], rtol=1e-7)
    np.testing.assert_allclose([sin[2, 0], cos[2, 0]], [0.9092974, -0.41614684], rtol=1e-7)
    np.testing.assert_allclose([sin[2047, 0], cos[2047, 0]], [-0.9683193, 0.24971525], rtol=1e-6)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2000), st.integers(0, 2**31 - 1))
def test_rotary_is_complex_multiplication_and_keeps_norms(pairs, position, seed):
    n_rot = 2 * pairs
    sin, cos = rotary_tables(2048, n_rot)
    x = np.random.default_rng(seed).standard_normal((1, 1, 3, n_rot)).astype(np.float32)
    y = rotary(x, sin[[[position]]], cos[[[position]]])
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * np.arctan2(sin[position], cos[position]))
    np.testing.assert_allclose(y[..., 0::2], z.real, atol=1e-5)
    np.testing.assert_allclose(y[..., 1::2], z.imag, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 2**31 - 1))
def test_rotary_scores_depend_only_on_relative_position(p, shift, seed):
    sin, cos = rotary_tables(2048, 8)
    q, k = np.random.default_rng(seed).standard_normal((2, 1, 1, 1, 8)).astype(np.float32)
    at = lambda x, pos: rotary(x, sin[[[pos]]], cos[[[pos]]])  # noqa: E731
    a = float((at(q, p + 5) * at(k, p)).sum())
    b = float((at(q, p + 5 + shift) * at(k, p + shift)).sum())
    assert abs(a - b) <= 1e-4 * max(1.0, abs(a))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 50), st.integers(0, 2**31 - 1), st.floats(0.1, 1e4))
def test_softmax_rows_sum_to_one(n, seed, scale):
    x = (np.random.default_rng(seed).standard_normal((3, n)) * scale).astype(np.float32)
    p = softmax(x)
    assert np.all(p >= 0) and np.allclose(p.sum(-1), 1.0, atol=1e-5)


def test_causality_future_tokens_do_not_change_the_past(hf_models):
    _, config, weights = hf_models["odd-vocab"]
    ref = Reference(config, weights)
    ids = np.random.default_rng(8).integers(0, config.vocab_size, size=12)
    other = ids.copy()
    other[8:] = (other[8:] + 1) % config.vocab_size
    np.testing.assert_array_equal(ref.forward(ids)[:8], ref.forward(other)[:8])


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(hf_models):
    _, config, weights = hf_models["rot-lt-head"]
    ref = Reference(config, weights)
    with pytest.raises(InputError, match=r"token id 99 .* outside the vocabulary \[0, 99\)"):
        ref.forward([1, 2, 99])
    with pytest.raises(InputError, match="outside the vocabulary"):
        ref.forward([-1])
    with pytest.raises(InputError, match="must be integers"):
        ref.forward(np.array([1.5, 2.0]))
    with pytest.raises(InputError, match="shape"):
        ref.forward(np.zeros((1, 1, 1), np.int64))
    with pytest.raises(InputError, match="at least one token"):
        ref.forward(np.zeros(0, np.int64))
    with pytest.raises(InputError, match="exceed the cache size"):
        ref.forward(np.zeros(config.n_positions + 1, np.int64), ref.new_cache())
    cache = ref.new_cache(8)
    ref.forward([1, 2, 3, 4, 5], cache)
    with pytest.raises(InputError, match="5 cached \\+ 4 new tokens exceed the cache size of 8"):
        ref.forward([1, 2, 3, 4], cache)
    with pytest.raises(InputError, match="attention_mask"):
        ref.forward([[1, 2]], attention_mask=[[1, 2]])


def test_prompt_longer_than_context_is_refused(hf_models):
    from gptj_ref.api import Model
    from gptj_ref.tokenizer import default_tokenizer

    _, config, weights = hf_models["rot-lt-head"]
    model = Model(Reference(config, weights), default_tokenizer())
    with pytest.raises(InputError, match=f"context is {config.n_positions}"):
        model.logits([1] * (config.n_positions + 1))


# ----------------------------------------------------------------------------------------------------
# The real model, when the user has it
# ----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("GPTJ_CHECKPOINT"),
    reason="set GPTJ_CHECKPOINT to a GPT-J 6B checkpoint directory or native file to run",
)
def test_real_gptj_6b_golden_greedy_continuation():
    """docs/gptj.md, "Golden values": transformers' and TF's fp32 golden ids for 'The dog', greedy, 18 new tokens."""
    import gptj_ref

    model = gptj_ref.load(os.environ["GPTJ_CHECKPOINT"], backend=os.environ.get("GPTJ_BACKEND", "auto"))
    assert model.encode("The dog") == [464, 3290]
    expected = [318, 257, 582, 338, 1266, 1545, 13, 632, 318, 257, 9112, 15185, 11, 290, 340, 318, 257, 1545]
    assert model.generate_ids([464, 3290], max_new_tokens=18) == expected
