"""The per-row generation state (RowState) and the continuous-batching forward (CppModel.forward_rows)."""

from __future__ import annotations

import numpy as np
import pytest

from gptj_ref.api import Model
from gptj_ref.config import GPTJConfig
from gptj_ref.errors import InputError, NumericalError, SettingsError
from gptj_ref.generate import (
    GenerationSettings,
    RowState,
    apply_presence_frequency_penalty,
    log_softmax,
    process_logits,
)
from gptj_ref.layout import random_weights
from gptj_ref.runtime import CppModel
from gptj_ref.tokenizer import default_tokenizer

CONFIG = GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256)


@pytest.fixture(scope="module")
def model():
    return Model(CppModel(CONFIG, random_weights(CONFIG, seed=5), threads=1), default_tokenizer())


def test_presence_and_frequency_penalties_follow_openai():
    # OpenAI: mu[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty, c[j] counting the
    # generated tokens only. Written here as a plain loop over the vocabulary.
    rng = np.random.default_rng(0)
    scores = rng.standard_normal(50).astype(np.float32)
    prompt, generated = [1, 2, 3, 3], [3, 7, 7, 7, 9]
    expected = scores.copy()
    for j in range(50):
        c = generated.count(j)
        expected[j] = scores[j] - c * np.float32(0.5) - (c > 0) * np.float32(0.25)
    got = apply_presence_frequency_penalty(scores, generated, 0.25, 0.5)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # float32 rounding of one subtraction
    s = GenerationSettings(presence_penalty=0.25, frequency_penalty=0.5)
    processed = process_logits(scores, prompt + generated, len(generated), s, eos_id=49)
    np.testing.assert_allclose(processed, expected, rtol=0, atol=1e-6)
    assert np.array_equal(apply_presence_frequency_penalty(scores, generated, 0.0, 0.0), scores)
    for bad in (dict(presence_penalty=2.5), dict(frequency_penalty=-3), dict(presence_penalty=float("nan"))):
        with pytest.raises(SettingsError, match="must be a number in \\[-2, 2\\]"):
            GenerationSettings(**bad)


def test_penalties_change_generation(model):
    plain = model.generate_ids(model.encode("The dog"), max_new_tokens=30)
    penalised = model.generate_ids(model.encode("The dog"), max_new_tokens=30, frequency_penalty=2.0)
    assert len(set(penalised)) > len(set(plain))  # greedy random-weight text repeats; the penalty breaks that


def test_a_batch_of_seeded_prompts_equals_each_alone(model):
    prompts = ["The dog", "Hello, my dog is a little", "A"]
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.3, seed=4)
    assert model.generate(prompts, **kwargs) == [model.generate(p, **kwargs) for p in prompts]


def test_non_finite_logits_name_the_step():
    s = GenerationSettings(max_new_tokens=8)
    row = RowState([1, 2], s, eos_id=0)
    logits = np.zeros(10, np.float32)
    logits[5] = 1
    row.step(logits)
    row.step(logits)
    logits[3] = np.inf
    with pytest.raises(NumericalError, match="non-finite logits .* at generation step 3, after 4 tokens"):
        row.step(logits)


def test_nan_weights_raise_instead_of_printing_text():
    weights = random_weights(CONFIG, seed=5)
    weights["lm_head.bias"][17] = np.nan
    broken = Model(CppModel(CONFIG, weights, threads=1), default_tokenizer())
    for do_sample in (False, True):
        with pytest.raises(NumericalError, match="generation step 1"):
            broken.generate("The dog", max_new_tokens=4, do_sample=do_sample)


def test_row_state_text_logprobs_and_finish(model):
    tok = model.tokenizer
    s = GenerationSettings(max_new_tokens=5, stop=("zz",))
    row = RowState(model.encode("a"), s, eos_id=tok.eos_token_id, tokenizer=tok, logprobs=3)
    rng = np.random.default_rng(1)
    pieces = []
    while not row.done:
        logits = rng.standard_normal(CONFIG.vocab_size).astype(np.float32)
        step = row.step(logits)
        logp = log_softmax(logits)
        assert step.token == int(np.argmax(logits)) and step.logprob == pytest.approx(logp.max())
        assert [t for t, _ in step.top_logprobs] == list(np.argsort(-logp)[:3])
        pieces.append(step.text)
    assert row.finish_reason == "length" and "".join(pieces) == row.text == tok.decode(row.new)

    # End-of-text ends the row without becoming part of it; the held-back text is released.
    row = RowState([1], GenerationSettings(max_new_tokens=5), eos_id=7, tokenizer=tok)
    logits = np.zeros(CONFIG.vocab_size, np.float32)
    logits[7] = 5
    step = row.step(logits)
    assert row.finish_reason == "eos" and row.new == [] and step.token == 7 and step.text == ""


def test_forward_rows_rows_are_independent_and_bitwise_alone(model):
    cpp = model.backend
    a, b, c = list(range(10, 27)), [5, 6, 7], [99, 98, 97, 96, 95]
    cache = cpp.new_cache(64, batch=3)
    # Row 0 prefills in two chunks while row 1 decodes and row 2 is idle, then row 1 is reset and reused.
    first = cpp.forward_rows([a[:9], b, []], cache)
    second = cpp.forward_rows([a[9:], [8], []], cache, logit_tokens=[(0, 0), (0, 7), (1, 0)])
    cpp.reset_row(cache, 1)
    third = cpp.forward_rows([[1], c, [4]], cache)
    assert cache.row_lengths == [18, 5, 1]
    alone_a, alone_b = cpp.forward(np.array(a + [1])), cpp.forward(np.array(b + [8]))
    alone_c, alone_4 = cpp.forward(np.array(c)), cpp.forward(np.array([4]))
    assert np.array_equal(first, np.stack([alone_a[8], alone_b[2]]))
    assert np.array_equal(second, np.stack([alone_a[9], alone_a[16], alone_b[3]]))
    assert np.array_equal(third, np.stack([alone_a[17], alone_c[4], alone_4[0]]))
    assert cpp.forward_rows([[], [], []], cache).shape == (0, CONFIG.vocab_size)
    with pytest.raises(InputError, match="holds 3 rows"):
        cpp.forward_rows([[1]], cache)
    with pytest.raises(InputError, match="token 2 of row 0"):
        cpp.forward_rows([[1], [], []], cache, logit_tokens=[(0, 2)])
    with pytest.raises(InputError, match="outside the vocabulary"):
        cpp.forward_rows([[CONFIG.vocab_size], [], []], cache)
    with pytest.raises(InputError, match=r"row must be an integer in \[0, 3\)"):
        cpp.reset_row(cache, 3)
