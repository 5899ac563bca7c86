"""The bounds every reader of a user's file keeps, and the small checks that enforce them.

Nothing in a file is trusted: sizes, nesting and numbers it states are checked against these limits and
against the bytes actually present before anything proportional to them is allocated or computed.
SECURITY.md states what these bounds guarantee.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import stat
from typing import Any, Type

from .errors import GPTJError

# JSON a file carries (safetensors headers, config.json, shard indexes, vocab.json).
MAX_JSON_DEPTH = 64  # a GPT-J header or config nests 3 deep
MAX_JSON_VALUES = 1_000_000  # values of any kind; a 6B header has ~3000, a GPT-2 vocab.json 50k
MAX_JSON_INT_DIGITS = 20  # enough for any 64-bit integer; beyond it is not a size or an offset
MAX_SMALL_FILE_BYTES = 64 << 20  # config.json, index.json, tokenizer files are read whole: at most this

# Model geometry. GPT-J 6B: 50400 / 2048 / 4096 / 28 / 16; the limits leave room for far larger models and
# bound what is allocated from the config alone (the rotary table: n_positions * rotary_dim * 4 bytes).
MAX_VOCAB = 1 << 22
MAX_POSITIONS = 1 << 17
MAX_WIDTH = 1 << 17  # n_embd and d_ff
MAX_LAYERS = 1 << 12
MAX_DIM = (1 << 63) - 1  # any tensor dimension or element count, as in int64

_short = reprlib.Repr()
_short.maxlevel, _short.maxtuple, _short.maxlist, _short.maxdict = 3, 6, 6, 4
_short.maxstring, _short.maxother, _short.maxlong = 60, 60, 40


def short_repr(value: Any) -> str:
    """repr of an untrusted value with bounded depth, width and length (never recursive past 3 levels)."""
    try:
        return _short.repr(value)
    except Exception:  # a hostile object's repr may fail; say what it is instead
        return f"<{type(value).__name__}>"


def open_regular(path: "str | os.PathLike[str]", error: Type[GPTJError], what: str = "file", text: bool = False):
    """Open `path` for reading only if it is a regular file: a FIFO, device or directory is refused
    without blocking (opened non-blocking, checked with fstat, then switched back to blocking)."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise error(f"{path}: no such file (expected a {what})") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory; expected a {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot open the {what} ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "directory" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "special file"
        raise error(f"{path}: is a {kind}; expected a regular {what}")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "r" if text else "rb", **({"encoding": "utf-8"} if text else {}))


def read_small_file(
    path: "str | os.PathLike[str]", error: Type[GPTJError], what: str = "file", limit: int = MAX_SMALL_FILE_BYTES
) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (checked before reading)."""
    with open_regular(path, error, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise error(f"{os.fspath(path)}: {size} bytes is more than the {limit >> 20} MiB a {what} may have")
        return f.read(limit + 1)[:limit]


_LONG_NUMBER = re.compile(r"\d{%d,}" % (MAX_JSON_INT_DIGITS + 1))
_BRACKETS = re.compile(r"[\[\]{}]")


def json_structure(text: str) -> str:
    """The JSON text with the contents of its strings removed (C-speed string operations, no regex
    backtracking): escaped backslashes and quotes are dropped, then the text between quotes goes."""
    return "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[0::2])


def check_json_shape(text: str) -> None:
    """Raise ValueError unless the JSON text nests at most MAX_JSON_DEPTH deep, holds at most
    MAX_JSON_VALUES values and no integer of more than MAX_JSON_INT_DIGITS digits.

    Linear in the text; json.loads then parses what passed, so its recursion, its integer conversion
    and the memory of the values it builds (about 100 bytes each, plus the strings) are bounded.
    """
    bare = json_structure(text)
    if _LONG_NUMBER.search(bare):
        raise ValueError(f"a number has more than {MAX_JSON_INT_DIGITS} digits")
    if bare.count(",") + bare.count("[") + bare.count("{") > MAX_JSON_VALUES:
        raise ValueError(f"more than {MAX_JSON_VALUES} values")
    depth = 0
    for m in _BRACKETS.finditer(bare):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nesting deeper than {MAX_JSON_DEPTH} levels")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads_bounded(data: "bytes | str") -> Any:
    """json.loads within the bounds of `check_json_shape`; NaN and Infinity literals are refused.
    Raises ValueError (UnicodeDecodeError and JSONDecodeError are ValueErrors) on anything else."""
    text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    check_json_shape(text)
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # cannot happen once check_json_shape passed; kept so no input can escape
        raise ValueError("nesting too deep") from None


def load_json_file(path: "str | os.PathLike[str]", error: Type[GPTJError], what: str = "JSON file") -> Any:
    """A small regular JSON file, parsed within the bounds above; every failure is `error`."""
    data = read_small_file(path, error, what)
    try:
        return loads_bounded(data)
    except ValueError as e:
        raise error(f"{os.fspath(path)} is not valid JSON within gptj_ref's limits ({e})") from None
