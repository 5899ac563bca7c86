"""Model.score / loglikelihood(s) against transformers' logits, batched against one at a time, and the
pieces under them (strided windows, the C++ cache's row copy, lm-eval's pair tokenization)."""

from __future__ import annotations

import numpy as np
import pytest

from gptj_ref.api import Model
from gptj_ref.errors import InputError
from gptj_ref.scoring import encode_pair, strided_windows
from gptj_ref.tokenizer import default_tokenizer

# Per-token log-probabilities of our fp32 backends and transformers agree to ~1e-6 on these random
# models (the same fp32 arithmetic summed in another order, then a float64 log-softmax); 1e-5 absolute
# per token leaves a margin and still catches any wrong position, shift or normalisation (those move
# log-probabilities by whole units).
LOGPROB_ATOL = 1e-5


def make_model(hf_models, backend, name="rot-lt-head"):
    from gptj_ref.reference import Reference
    from gptj_ref.runtime import CppModel

    hf, config, weights = hf_models[name]
    impl = Reference(config, weights) if backend == "reference" else CppModel(config, weights, threads=2)
    return hf, Model(impl, default_tokenizer())


def torch_logprobs(hf, ids):
    import torch

    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_score_equals_log_softmax_of_transformers_logits(hf_models, backend):
    hf, model = make_model(hf_models, backend)
    ids = np.random.default_rng(0).integers(0, 99, size=60).tolist()
    expected = torch_logprobs(hf, ids)
    scores = model.score(ids)
    np.testing.assert_allclose(scores.logprobs, expected[np.arange(59), ids[1:]], rtol=0, atol=LOGPROB_ATOL)
    assert scores.token_ids == ids[1:]
    np.testing.assert_array_equal(scores.greedy, expected[:-1].argmax(axis=1) == np.array(ids[1:]))
    assert scores.perplexity == pytest.approx(np.exp(-expected[np.arange(59), ids[1:]].mean()), rel=1e-5)


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_loglikelihoods_equal_transformers_and_batched_equals_one_at_a_time(hf_models, backend):
    hf, model = make_model(hf_models, backend)
    rng = np.random.default_rng(1)
    shared = rng.integers(0, 99, size=20).tolist()
    pairs = [(shared, rng.integers(0, 99, size=n).tolist()) for n in (1, 3, 7, 1, 12)]  # multiple choice
    pairs += [(rng.integers(0, 99, size=9).tolist(), rng.integers(0, 99, size=4).tolist())]  # its own context
    pairs += [(shared[:5], [7])]  # a prefix of it
    # A greedy continuation, so that is_greedy is True at least once.
    greedy_cont = []
    for _ in range(3):
        greedy_cont.append(int(torch_logprobs(hf, shared + greedy_cont)[-1].argmax()))
    pairs.append((shared, greedy_cont))

    batched = model.loglikelihoods(pairs)
    one_by_one = [model.loglikelihood(c, t) for c, t in pairs]
    for (c, t), (ll, greedy), (ll1, greedy1) in zip(pairs, batched, one_by_one):
        logp = torch_logprobs(hf, c + t)
        rows = np.arange(len(c) - 1, len(c) + len(t) - 1)
        assert ll == pytest.approx(logp[rows, t].sum(), abs=LOGPROB_ATOL * len(t))
        assert greedy == bool((logp[rows].argmax(axis=1) == np.array(t)).all())
        # The shared-context batch and a single pass differ only in fp32 summation order.
        assert ll == pytest.approx(ll1, abs=1e-6 * len(t)) and greedy == greedy1
    assert batched[-1][1] is True


def test_pairs_longer_than_the_context_keep_their_last_tokens(hf_models):
    """As lm-eval's hf model: the context is cut from the left to n_positions + 1 tokens in all."""
    hf, model = make_model(hf_models, "cpp")
    rng = np.random.default_rng(2)
    context, continuation = rng.integers(0, 99, size=150).tolist(), rng.integers(0, 99, size=10).tolist()
    kept = (context + continuation)[-129:]
    logp = torch_logprobs(hf, kept[:-1])  # the model reads all but the last kept token
    rows = np.arange(len(kept) - 11, len(kept) - 1)
    ((ll, _),) = model.loglikelihoods([(context, continuation), (context, continuation[:3])])[:1]
    assert ll == pytest.approx(logp[rows, continuation].sum(), abs=LOGPROB_ATOL * 10)
    with pytest.raises(InputError, match="more than the model's context"):
        model.loglikelihood([1], rng.integers(0, 99, size=129).tolist())


def test_long_texts_are_scored_in_strided_windows_each_token_once(hf_models):
    hf, model = make_model(hf_models, "cpp")
    ids = np.random.default_rng(3).integers(0, 99, size=300).tolist()
    for stride in (1, 50, 127, 128):
        windows = strided_windows(len(ids), 128, stride)
        scored = [t for _, first, end in windows for t in range(first, end)]
        assert scored == sorted(set(scored)) and all(end - begin <= 128 for begin, _, end in windows)
        expected_missing = {0} | ({w[0] for w in windows} if stride == 128 else set())
        assert set(range(300)) - set(scored) == expected_missing
    scores = model.score(ids, stride=50)
    begin, first, end = strided_windows(300, 128, 50)[2]
    window_logp = torch_logprobs(hf, ids[begin:end])
    offset = sum(e - f for _, f, e in strided_windows(300, 128, 50)[:2])
    np.testing.assert_allclose(
        scores.logprobs[offset : offset + end - first],
        window_logp[np.arange(first - begin - 1, end - begin - 1), ids[first:end]],
        rtol=0,
        atol=LOGPROB_ATOL,
    )
    with pytest.raises(InputError, match="stride"):
        model.score(ids, stride=129)


def test_cpp_copy_row_shares_a_prefix_and_rewinds(hf_models):
    _, model = make_model(hf_models, "cpp")
    backend = model.backend
    ids = np.arange(10, 30, dtype=np.int64)
    cache = backend.new_cache(40, 2)
    mask = np.zeros((2, 20), np.int64)
    mask[0] = 1
    backend.forward(np.tile(ids, (2, 1)), cache, attention_mask=mask)
    cache.core.copy_row(0, 1, 12)
    assert cache.row_lengths == [20, 12]
    for layer in range(model.config.n_layer):
        for which in ("keys", "values"):
            np.testing.assert_array_equal(
                cache.core.stored(which, layer, 1), cache.core.stored(which, layer, 0)[:, :12]
            )
    cache.core.copy_row(0, 0, 5)
    assert cache.row_lengths == [5, 12]
    with pytest.raises(ValueError):
        cache.core.copy_row(0, 1, 6)  # row 0 now holds 5 tokens


def test_text_pairs_are_tokenized_as_lm_eval_does():
    from lm_eval.api.model import TemplateLM

    tokenizer = default_tokenizer()

    class Encoder(TemplateLM):  # lm-eval's own pair splitting over our tokenizer
        eot_token_id = tokenizer.eos_token_id

        def tok_encode(self, string, **kwargs):
            return tokenizer.encode(string)

        _loglikelihood_tokens = loglikelihood_rolling = generate_until = None

    lm_eval_encoder = Encoder()
    for context, continuation in [
        ("The cat sat on the", " mat"),
        ("Trailing space ", "here"),
        ("a\n", "b"),
        ("Question: 2+2=", " 4"),
        ("naïve café", " crème brûlée"),
        ("x", "y z"),
    ]:
        assert encode_pair(tokenizer, context, continuation) == lm_eval_encoder._encode_pair(context, continuation)
    assert encode_pair(tokenizer, "", " hello") == ([tokenizer.eos_token_id], tokenizer.encode(" hello"))
    with pytest.raises(InputError):
        encode_pair(tokenizer, "context", "")
