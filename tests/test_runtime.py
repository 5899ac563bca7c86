"""The C++ fp32 runtime (gptj_ref.runtime.CppModel) against the NumPy reference, on every kernel level.

Tolerance for logits: max |Δ| <= 1e-4 * max |logit| (the logit scale). Both backends compute in fp32
with the same operations; they differ only in the order of the reductions (matmul sums, LayerNorm and
softmax sums) and in the AVX2 exp/tanh (<= 3e-7). Each reduction of K <= 2048 terms is off by about
sqrt(K) u ~ 3e-6 relative at most in practice, and two or three blocks compound that to a few 1e-6 of
the logit scale (measured: below 2e-6). 1e-4 leaves a wide margin while a semantic error (a wrong rotary
pair, a missing bias, an off-by-one position) moves logits by 1e-2 of their scale or more.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptj_ref.config import GPTJConfig
from gptj_ref.errors import CheckpointError, InputError, SettingsError
from gptj_ref.layout import random_weights
from gptj_ref.reference import Reference
from helpers import CONFIGS, report_diff, use_isa

runtime = pytest.importorskip("gptj_ref.runtime")
from gptj_ref.runtime import CppModel  # noqa: E402

ISAS = runtime._core.available_isas()
REL_TOL = 1e-4


def assert_logits_close(actual, expected, rel=REL_TOL):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tol = rel * float(np.abs(expected).max())
    assert np.abs(actual - expected).max() <= tol, report_diff(actual, expected)


@pytest.fixture(scope="module")
def models(hf_models):
    """name -> (config, weights, Reference, CppModel with 2 threads) for every geometry in CONFIGS."""
    return {
        name: (config, weights, Reference(config, weights), CppModel(config, weights, threads=2))
        for name, (_, config, weights) in hf_models.items()
    }


def random_ids(config, n, seed):
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=n)


# --------------------------------------------------------------------------------------------------
# Logits against the reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_full_sequence_logits_match_reference(models, name, isa):
    config, _, ref, cpp = models[name]
    ids = random_ids(config, 33, seed=1)
    expected = ref.forward(ids)
    with use_isa(isa):
        actual = cpp.forward(ids)
    assert actual.dtype == np.float32 and np.abs(expected).max() > 1.0
    assert_logits_close(actual, expected)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decoding_matches_full_sequence(models, name, isa):
    config, _, ref, cpp = models[name]
    ids = random_ids(config, 20, seed=2)
    expected = ref.forward(ids)
    with use_isa(isa):
        cache = cpp.new_cache(24)
        steps = [cpp.forward(ids[:7], cache)]  # a prompt, then one token at a time
        steps += [cpp.forward(ids[t : t + 1], cache) for t in range(7, 13)]
        steps += [cpp.forward(ids[13:20], cache)]  # and a chunk on top of a cache
        full = cpp.forward(ids)
    assert cache.length == 20 and cache.row_lengths == [20]
    assert_logits_close(np.concatenate(steps), expected)
    assert_logits_close(full, expected)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["rot-lt-head", "real-heads"])
def test_hidden_states_match_reference(models, name, isa):
    config, _, ref, cpp = models[name]
    ids = random_ids(config, 11, seed=3)
    expected = ref.hidden_states(ids)
    with use_isa(isa):
        actual = cpp.hidden_states(ids)
    assert len(actual) == config.n_layer + 3
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, i
        assert np.abs(a - e).max() <= REL_TOL * np.abs(e).max(), f"state {i}: " + report_diff(a, e)


def greedy(backend, prompt, n_new):
    cache = backend.new_cache(len(prompt) + n_new)
    logits = backend.forward(np.asarray(prompt), cache)[-1]
    out = []
    for _ in range(n_new):
        out.append(int(np.argmax(logits)))
        logits = backend.forward(np.array([out[-1]]), cache)[-1]
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_generation_is_identical(models, name, isa):
    config, _, ref, cpp = models[name]
    prompt = list(random_ids(config, 5, seed=4))
    with use_isa(isa):
        assert greedy(cpp, prompt, 12) == greedy(ref, prompt, 12)


# --------------------------------------------------------------------------------------------------
# Batches with left padding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    name=st.sampled_from(list(CONFIGS)),
    seed=st.integers(0, 2**31),
)
def test_left_padded_batch_rows_equal_each_row_alone(models, isa, lengths, name, seed):
    config, _, ref, cpp = models[name]
    B, T, n_new = len(lengths), max(lengths), 3
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, config.vocab_size, size=n) for n in lengths]
    ids = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    for b, row in enumerate(rows):
        ids[b, T - len(row) :], mask[b, T - len(row) :] = row, 1
    new = rng.integers(0, config.vocab_size, size=(B, n_new))

    with use_isa(isa):
        cache = cpp.new_cache(T + n_new, batch=B)
        prompt = cpp.forward(ids, cache, attention_mask=mask)  # [B, T, V]
        steps = [cpp.forward(new[:, i : i + 1], cache, np.ones((B, 1), np.int64)) for i in range(n_new)]
        alone = [cpp.forward(np.concatenate([row, new[b]])) for b, row in enumerate(rows)]

    expected = ref.forward(ids, ref.new_cache(T + n_new, B), attention_mask=mask)
    assert_logits_close(prompt[mask.astype(bool)], expected[mask.astype(bool)])
    assert np.all(prompt[~mask.astype(bool)] == 0), "pad positions are not computed: their logits are 0"
    for b, row in enumerate(rows):
        got = np.concatenate([prompt[b, T - len(row) :]] + [s[b] for s in steps])
        assert_logits_close(got, alone[b])
    assert cache.length == T + n_new and cache.row_lengths == [n + n_new for n in lengths]


@pytest.mark.parametrize("isa", ISAS)
def test_last_only_logits_equal_the_last_position_of_the_full_pass(models, isa):
    # Generation asks for the last position only; lm_head then runs on those rows alone. The kernels
    # compute each output row independently of the other rows, so the values are bitwise the same.
    config, _, ref, cpp = models["real-heads"]
    ids = random_ids(config, 9, seed=3)
    batch = np.stack([ids, np.concatenate([[0, 0], ids[:7]]), np.concatenate([ids[:5], [0] * 4])])
    mask = np.array([[1] * 9, [0, 0] + [1] * 7, [1] * 5 + [0] * 4])  # row 2 ends in padding
    with use_isa(isa):
        last = cpp.forward(ids, last_only=True)
        full = cpp.forward(ids)
        last_b = cpp.forward(batch, cpp.new_cache(9, 3), attention_mask=mask, last_only=True)
        full_b = cpp.forward(batch, cpp.new_cache(9, 3), attention_mask=mask)
    assert last.shape == (config.vocab_size,) and last_b.shape == (3, config.vocab_size)
    assert np.array_equal(last, full[-1])
    assert np.array_equal(last_b, full_b[:, -1]), report_diff(last_b, full_b[:, -1])
    assert not last_b[2].any(), "a row whose last position is padding gets zeros, as in the full pass"
    ref_last = ref.forward(batch, ref.new_cache(9, 3), attention_mask=mask, last_only=True)
    ref_full = ref.forward(batch, ref.new_cache(9, 3), attention_mask=mask)
    # Same NumPy operations on fewer rows; BLAS may block a 1-row product differently: rounding only.
    assert_logits_close(ref_last[:2], ref_full[:2, -1], rel=1e-6)
    assert_logits_close(last_b[:2], ref_last[:2])


def test_logit_rows_are_checked():
    config, weights = TINY_CFG, random_weights(TINY_CFG, seed=0)
    cpp = CppModel(config, weights)
    ids, counts = np.array([1, 2, 3], np.int64), np.array([3], np.int64)
    with pytest.raises(IndexError, match="logit row 3 is outside"):
        cpp._core.forward(ids, counts, cpp.new_cache(8).core, np.array([3], np.int64))
    with pytest.raises(ValueError, match="4 logit rows of 3"):
        cpp._core.forward(ids, counts, cpp.new_cache(8).core, np.array([0, 1, 2, 2], np.int64))
    with pytest.raises(TypeError, match="logit_rows"):
        cpp._core.forward(ids, counts, cpp.new_cache(8).core, [0])


def test_interior_padding_follows_the_reference(models):
    # A 0 in the mask after real tokens (e.g. a row that sat out a step) is skipped as well: later
    # tokens' positions count real tokens only, as in the reference.
    config, _, ref, cpp = models["odd-vocab"]
    ids = random_ids(config, 12, seed=5).reshape(2, 6)
    mask = np.array([[0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]])
    expected = ref.forward(ids, attention_mask=mask)
    actual = cpp.forward(ids, attention_mask=mask)
    assert_logits_close(actual[mask == 1], expected[mask == 1])


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["rot-eq-head", "real-heads"])
def test_logits_are_bitwise_identical_for_1_and_2_threads(models, name, isa):
    config, weights, _, _ = models[name]
    one, two = CppModel(config, weights, threads=1), CppModel(config, weights, threads=2)
    ids = random_ids(config, 30, seed=6).reshape(2, 15)
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    results = []
    with use_isa(isa):
        for model in (one, two):
            cache = model.new_cache(20, batch=2)
            out = [model.forward(ids, cache, mask)]
            out += [model.forward(ids[:, i : i + 1], cache, np.ones((2, 1))) for i in range(3)]
            results.append(np.concatenate(out, axis=1))
    assert two.threads == 2 and one.threads == 1
    assert np.array_equal(results[0], results[1]), report_diff(results[1], results[0])


def test_threads_can_be_changed(models):
    config, weights, _, _ = models["rot-lt-head"]
    model = CppModel(config, weights, threads=1)
    ids = random_ids(config, 9, seed=7)
    before = model.forward(ids)
    model.threads = 2
    assert model.threads == 2 and np.array_equal(model.forward(ids), before)
    with pytest.raises(SettingsError):
        model.threads = 0


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

TINY_CFG = GPTJConfig(
    vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2, rotary_dim=4, bos_token_id=0, eos_token_id=0
)
Q = "transformer.h.0.attn.q_proj.weight"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: w.update({Q: w[Q].astype(np.float64)}), f"weight {Q} has dtype float64, expected float32"),
        (lambda w: w.update({Q: np.asfortranarray(w[Q])}), f"weight {Q} is not C-contiguous"),
        (lambda w: w.update({Q: w[Q][:, :8]}), f"weight {Q} is not C-contiguous"),
        (lambda w: w.update({Q: w[Q][:8].copy()}), f"weight {Q} has shape (8, 16), expected (16, 16)"),
        (
            lambda w: w.update({"lm_head.bias": np.zeros(49, np.float32)}),
            "weight lm_head.bias has shape (49,), expected (50,)",
        ),
        (lambda w: w.pop("transformer.ln_f.bias"), "missing weight transformer.ln_f.bias"),
        (lambda w: w.update({Q: w[Q].tolist()}), f"weight {Q} is a list, expected a numpy.ndarray"),
    ],
)
def test_bad_weights_raise_checkpoint_error(change, message):
    weights = random_weights(TINY_CFG, seed=0)
    change(weights)
    with pytest.raises(CheckpointError) as info:
        CppModel(TINY_CFG, weights)
    assert message in str(info.value)


def test_weights_are_views_not_copies():
    weights = random_weights(TINY_CFG, seed=0)
    model = CppModel(TINY_CFG, weights, threads=1)
    ids = np.arange(5)
    before = model.forward(ids)
    weights["lm_head.bias"][:] += 1.0  # the model reads the caller's array in place
    assert np.allclose(model.forward(ids), before + 1.0, atol=1e-5)


def test_bad_tokens_and_caches_raise_input_error():
    model = CppModel(TINY_CFG, random_weights(TINY_CFG, seed=0), threads=1)
    with pytest.raises(InputError, match="outside the vocabulary"):
        model.forward([1, 50])
    with pytest.raises(InputError, match="integers"):
        model.forward([1.5])
    with pytest.raises(InputError, match="no tokens"):
        model.forward(np.zeros(0, np.int64))
    cache = model.new_cache(4)
    model.forward([1, 2, 3], cache)
    with pytest.raises(InputError, match="exceed the cache size of 4"):
        model.forward([1, 2], cache)
    with pytest.raises(InputError, match="cache holds 1 rows but 2"):
        model.forward([[1], [2]], cache)
    with pytest.raises(InputError, match="cache size"):
        model.new_cache(33)
    with pytest.raises(InputError, match="own new_cache"):
        model.forward([1], Reference(TINY_CFG, random_weights(TINY_CFG)).new_cache(4))


def test_kernel_isa_switch_and_environment():
    with pytest.raises(SettingsError):
        runtime.set_kernel_isa("neon")
    with use_isa("scalar"):
        assert runtime.kernel_isa() == "scalar"
    env = dict(os.environ, GPTJ_FORCE_SCALAR="1")
    out = subprocess.run(
        [sys.executable, "-c", "from gptj_ref import runtime; print(runtime.kernel_isa())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),  # not the source tree, whose gptj_ref has no _core
    )
    assert out.stdout.strip() == "scalar"
