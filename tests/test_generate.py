"""Sampling semantics against transformers' logits processors; streaming, batches, seeds, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptj_ref.api import Model, load, pipeline
from gptj_ref.errors import InputError, SettingsError
from gptj_ref.generate import GenerationSettings, process_logits, stop_prefix_len
from gptj_ref.reference import Reference

torch = pytest.importorskip("torch")
V, EOS = 97, 96


def transformers_processed(scores, previous, s: GenerationSettings):
    """The same settings through transformers' own processors, in generate()'s order."""
    from transformers.generation import logits_process as lp

    processors = []
    if s.repetition_penalty != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if s.min_length > 0:
        processors.append(lp.MinLengthLogitsProcessor(s.min_length, EOS))
    if s.min_new_tokens > 0:
        prompt_len = len(previous) - s._n_new  # noqa: SLF001 (test-only attribute)
        processors.append(lp.MinNewTokensLengthLogitsProcessor(prompt_len, s.min_new_tokens, EOS))
    if s.do_sample:
        if s.temperature != 1.0:
            processors.append(lp.TemperatureLogitsWarper(s.temperature))
        if s.top_k:
            processors.append(lp.TopKLogitsWarper(s.top_k))
        if s.top_p < 1.0:
            processors.append(lp.TopPLogitsWarper(s.top_p))
    ids = torch.tensor([previous])
    out = torch.tensor(scores)[None].clone()
    for p in processors:
        out = p(ids, out)
    return out[0].numpy()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    do_sample=st.booleans(),
    temperature=st.sampled_from([0.3, 0.7, 1.0, 1.5]),
    top_k=st.sampled_from([0, 1, 5, 40, 200]),
    top_p=st.sampled_from([0.05, 0.5, 0.9, 1.0]),
    repetition_penalty=st.sampled_from([1.0, 1.3, 0.8]),
    min_length=st.integers(0, 12),
    min_new_tokens=st.integers(0, 5),
    n_new=st.integers(0, 6),
)
def test_processed_distribution_equals_transformers(
    seed, do_sample, temperature, top_k, top_p, repetition_penalty, min_length, min_new_tokens, n_new
):
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal(V) * 3).astype(np.float32)
    if top_p == 1.0:
        # Ties at the top exercise top-k's "keep everything equal to the k-th" rule. Not with top-p: which
        # of several exactly tied tokens survives the nucleus cut depends on the sort's order for equal
        # keys, which torch does not define.
        scores[rng.integers(0, V, 5)] = scores.max()
    previous = rng.integers(0, V, size=6 + n_new).tolist()
    s = GenerationSettings(
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        min_length=min_length,
        min_new_tokens=min_new_tokens,
    )
    object.__setattr__(s, "_n_new", n_new)
    ours = process_logits(scores, previous, n_new, s, EOS)
    theirs = transformers_processed(scores, previous, s)
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def demo():
    return load("tiny-random", backend="reference")  # the random tiny model, named explicitly


def test_seeded_sampling_is_reproducible(demo):
    a = demo.generate("The dog", max_new_tokens=12, do_sample=True, seed=5)
    b = demo.generate("The dog", max_new_tokens=12, do_sample=True, seed=5)
    c = demo.generate("The dog", max_new_tokens=12, do_sample=True, seed=6)
    assert a == b and a != c


@pytest.mark.parametrize("seed", range(12))
def test_stream_reproduces_generate_exactly(demo, seed):
    # Random weights sample byte-level tokens freely, so characters split over tokens occur often here.
    kwargs = dict(max_new_tokens=24, do_sample=True, seed=seed, temperature=1.5, top_k=0)
    pieces = list(demo.stream("Zürich ’🤗", **kwargs))
    assert "".join(pieces) == demo.generate("Zürich ’🤗", **kwargs)
    assert len(pieces) > 1  # it really streams


def test_stream_with_multi_token_characters_is_never_broken(demo):
    """Force a continuation of 4-byte emoji bytes split over single-byte tokens."""
    tok = demo.tokenizer
    byte_ids = [i for i in range(256) if len(tok.token_bytes(i)) == 1]
    target = "🤗é".encode()
    ids = [next(i for i in byte_ids if tok.token_bytes(i) == bytes([b])) for b in target]
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert [p for p in pieces if p] == ["🤗", "é"]


def test_stop_strings(demo):
    full = demo.generate("The dog", max_new_tokens=20)
    stop = full[5:8]
    cut = demo.generate("The dog", max_new_tokens=20, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(demo.stream("The dog", max_new_tokens=20, stop=[stop])) == cut
    assert stop_prefix_len("abcxy", ["xyz"]) == 2 and stop_prefix_len("abc", ["xyz"]) == 0


def test_batched_generation_equals_each_alone(demo):
    prompts = ["The dog", "Hello, my dog is a little", "A"]
    batch = demo.generate(prompts, max_new_tokens=10)
    assert batch == [demo.generate(p, max_new_tokens=10) for p in prompts]


def test_min_new_tokens_suppresses_end_of_text():
    from gptj_ref.config import GPTJConfig
    from gptj_ref.layout import random_weights
    from gptj_ref.tokenizer import default_tokenizer

    config = GPTJConfig(vocab_size=50400, n_positions=64, n_embd=32, n_layer=1, n_head=2, rotary_dim=8)
    weights = random_weights(config, seed=1)
    weights["lm_head.bias"][config.eos_token_id] = 100.0  # end-of-text always wins unless suppressed
    model = Model(Reference(config, weights), default_tokenizer())
    assert model.generate_ids([464], max_new_tokens=8) == []
    assert len(model.generate_ids([464], max_new_tokens=8, min_new_tokens=5)) == 5
    assert len(model.generate_ids([464], max_new_tokens=8, min_length=4)) == 3


def test_pipeline_accepts_the_model_card_call(demo):
    generator = pipeline("text-generation", model=demo)
    out = generator("EleutherAI has", do_sample=True, min_length=50, seed=0)
    assert isinstance(out, list) and set(out[0]) == {"generated_text"}
    text = out[0]["generated_text"]
    assert text.startswith("EleutherAI has")
    assert len(demo.encode(text)) >= 45  # 50 tokens generated in total; re-encoding may merge a few


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1.0), r"temperature must be >= 0 \(0 = greedy\)"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be an integer >= 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1"),
        (dict(max_new_tokens=5000), "exceed the model's context of 2048"),
        (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
        (dict(stop=[""]), "stop strings must be non-empty"),
    ],
)
def test_bad_settings_raise_settings_error(demo, kwargs, message):
    with pytest.raises(SettingsError, match=message):
        demo.generate("The dog", **kwargs)


def test_bad_prompts_and_backends(demo):
    with pytest.raises(InputError, match="prompt is empty"):
        demo.generate("")
    with pytest.raises(InputError, match="outside the vocabulary"):
        demo.generate_ids([50400])
    with pytest.raises(SettingsError, match="unknown backend 'gpu'"):
        load(backend="gpu")
    with pytest.raises(SettingsError, match="unknown task"):
        pipeline("summarization")
