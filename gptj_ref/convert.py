"""Checkpoint -> native model file, tensor by tensor, in bounded memory.

    from gptj_ref.convert import convert
    convert("./gpt-j-6B", "gpt-j-6B.gptj", dtype="q8")      # `gptj convert ./gpt-j-6B gpt-j-6B.gptj`

Memory: one source tensor is read at a time and dropped once written. Quantizing and casting to float16
go a slice of rows at a time (quant.quantize_blocks, native.to_float16), so the biggest tensor is never
copied whole more than once. A float32 source is memory-mapped; the pages of a tensor count in this
process's resident set once read, so they are handed back to the page cache (madvise DONTNEED) as soon as
the tensor is written. Peak RSS is therefore about

    largest source tensor + its converted copy (1/4 of it for q8, 1/7 for q4, 1/2 for f16) + a constant (~100 MB)

e.g. for GPT-J 6B in float32 (lm_head: 825 MB) about 1.1 GB for q8, whatever the 24 GB total is
(a float16 / bfloat16 source adds the float32 copy that `Checkpoint.read` makes of one tensor).
benchmarks/convert_memory.py measures it.

Safety: the output is written to a temporary file beside `dst` and renamed into place only once
complete; an error or Ctrl-C leaves neither a partial `dst` nor the temporary file behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from contextlib import contextmanager
from typing import List, Optional

import numpy as np

from .config import GPTJConfig
from .errors import CheckpointError, ConfigError, GPTJError, OutputError, SettingsError
from .formats import weight_format
from .native import NATIVE_DTYPES, model_kind, native_file_size, native_size, open_native, write_native
from .progress import progress_bar
from .safetensors_file import release_mapped_pages


def convert(
    src: "str | os.PathLike[str]",
    dst: "str | os.PathLike[str]",
    dtype: str = "q8",
    progress: bool = True,
    tokenizer_json: Optional[str] = None,
) -> None:
    """Convert a checkpoint to a native model file.

    src             a Hugging Face GPT-J directory (anything `checkpoint.open_checkpoint` reads), or an
                    existing native file (to change its dtype)
    dst             the native file to write; replaced atomically if it exists
    dtype           a format of gptj_ref/formats.py: "q8" (int8 blocks), "q4" (4-bit blocks), "f16" or "f32"
    progress        show a progress bar on stderr (only when stderr is a terminal)
    tokenizer_json  the tokenizer to embed; None takes the checkpoint's own (tokenizer.json, or
                    vocab.json + merges.txt), falling back to the built-in GPT-2 BPE

    Raises GPTJError subclasses for bad input: SettingsError for arguments, CheckpointError for a
    source that is missing, malformed or disagrees with its config, ConfigError for a config that the
    dtype cannot hold (q8 and q4 need n_embd and d_ff to be multiples of 32).
    """
    if dtype not in NATIVE_DTYPES:
        raise SettingsError(f"unknown dtype {dtype!r}; choose one of {', '.join(NATIVE_DTYPES)}")
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.exists(src):
        raise CheckpointError(f"no checkpoint at {src!r}: give a Hugging Face GPT-J directory or a native file")
    _check_destination(src, dst)

    source = _open_source(src)
    try:
        _check_not_an_input(dst, source.files())
        config = source.config
        block = weight_format(dtype).block
        if config.n_embd % block or config.d_ff % block:
            raise ConfigError(
                f"{dtype} needs n_embd ({config.n_embd}) and d_ff ({config.d_ff}) to be multiples of "
                f"{block}, its block size; convert to f16 or f32 instead"
            )
        source.check_tensors()
        if tokenizer_json is None:
            tokenizer_json = source.tokenizer_json()
        _check_free_space(dst, native_file_size(config, dtype, tokenizer_json))

        bar = progress_bar(native_size(config, dtype), f"convert {dtype}", enabled=progress)
        handed_out: List[np.ndarray] = []

        def tensor_source(name: str) -> np.ndarray:
            array = source.read(name)
            handed_out.append(array)
            return array

        def tensor_written(name: str, nbytes: int) -> None:
            while handed_out:
                release_mapped_pages(handed_out.pop())
            bar.update(nbytes)

        try:
            with _terminate_as_exit():
                write_native(dst, config, tensor_source, dtype, tokenizer_json, progress=tensor_written)
        except OSError as e:  # the destination: not writable, disk full, gone
            raise OutputError(f"cannot write {dst}: {e.strerror or e}; nothing was written") from None
        finally:
            handed_out.clear()
            bar.close()
    finally:
        source.close()


@contextmanager
def _terminate_as_exit():
    """SIGTERM during the write unwinds like Ctrl-C (exit status 143), so the temporary file is removed;
    a temporary left by kill -9 is removed by the next write to the same destination."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_not_an_input(dst: str, inputs: List[str]) -> None:
    """The output must not be, or replace, any file the conversion reads."""
    target = os.path.realpath(dst)
    for path in inputs:
        same = os.path.realpath(path) == target or (
            os.path.exists(dst) and os.path.exists(path) and os.path.samefile(path, dst)
        )
        if same:
            raise OutputError(
                f"the output {dst!r} is one of the input's files ({path}); converting would destroy "
                "the input: write to another file"
            )


def _check_destination(src: str, dst: str) -> None:
    if dst == "" or dst.endswith(("/", os.sep)):
        raise OutputError(f"the output {dst!r} is not a file name; give one such as model.gptj")
    if os.path.isdir(dst):
        raise SettingsError(f"the output {dst!r} is a directory; give a file name such as model.gptj")
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise SettingsError(f"the output {dst!r} is the input; write to another file")
    directory = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(directory):
        raise OutputError(f"the output directory {directory!r} does not exist; create it first")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"the output directory {directory!r} is not writable")


def _check_free_space(dst: str, needed: int) -> None:
    directory = os.path.dirname(os.path.abspath(dst))
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OutputError(
            f"not enough space in {directory}: the output needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB are free"
        )


# -------------------------------------------------------------------------------------------------
# Sources: a Hugging Face checkpoint or an existing native file, behind one small interface
# -------------------------------------------------------------------------------------------------


class _CheckpointSource:
    def __init__(self, path: str):
        from .checkpoint import open_checkpoint

        self.path = path
        self._ckpt = open_checkpoint(path)
        self._ckpt.copy_reads = True  # read, not mapped: a source truncated meanwhile is an error, not SIGBUS
        self.config: GPTJConfig = self._ckpt.config

    def check_tensors(self) -> None:
        self._ckpt.check()  # every tensor the config implies, with its shape and a float dtype

    def read(self, name: str) -> np.ndarray:
        return self._ckpt.read(name)

    def files(self) -> List[str]:
        """Every file in the checkpoint directory (the weights, config, tokenizer files, shards)."""
        return [os.path.join(self.path, f) for f in os.listdir(self.path)]

    def tokenizer_json(self) -> str:
        from .tokenizer import Tokenizer

        return Tokenizer.from_checkpoint_dir(self.path).to_json()

    def close(self) -> None:
        self._ckpt.close()


class _NativeSource:
    def __init__(self, path: str):
        self._native = open_native(path)
        self.config: GPTJConfig = self._native.config

    def check_tensors(self) -> None:
        pass  # open_native validated every tensor against the config

    def files(self) -> List[str]:
        return [self._native.path]

    def read(self, name: str) -> np.ndarray:
        return self._native.weight(name)

    def tokenizer_json(self) -> str:
        return self._native.tokenizer_json

    def close(self) -> None:
        self._native.close()


def _open_source(path: str):
    if model_kind(path) == "native":
        return _NativeSource(path)
    try:
        return _CheckpointSource(path)
    except GPTJError:
        raise
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint at {path}: {e}") from None
