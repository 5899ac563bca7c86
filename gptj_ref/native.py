"""The native model file: one safetensors file that holds a whole GPT-J model.

Any safetensors tool can read it. Its `__metadata__` (all strings):

    format          "gptj_ref"
    format_version  "2" (files of version 1 are read too: they differ only in the embedding of a block
                    format, below)
    dtype           a weight format of gptj_ref/formats.py: "q4" | "q8" | "f16" | "f32"
    dtype_version   that format's layout version, e.g. "1" (files written before this key existed are
                    version 1)
    config          GPTJConfig.to_hf() as JSON
    tokenizer       the tokenizer as `tokenizers` JSON ("" when none was available: the built-in GPT-2
                    BPE is then used)
    qk              "32", the int8 block size (written in every file, checked in every file)

Tensors keep the Hugging Face names, linear weights [out, in]:

    f32   every tensor F32.
    f16   every matrix (the six linear weights of each block, lm_head and the embedding) F16;
          1-D tensors (LayerNorm weights and biases, linear biases) stay F32 in every file: they are
          0.03% of the bytes, and keeping them F32 means no file rounds LayerNorm or a bias through fp16.
    q8    each tensor that `quant.is_quantized` names is stored as two tensors:
              transformer.h.0.attn.q_proj.weight         I8  [out, in]       the int8 values q
              transformer.h.0.attn.q_proj.weight_scale   F16 [out, in/32]    one scale per block of 32
          meaning weight = q * scale blockwise (see quant.py); everything else is F32, as in f32 files.
          The embedding transformer.wte.weight is stored as q8 rows too (I8 + F16 scales, each row cut
          into blocks of 32) from format version 2 on, in q8 and q4 files alike (formats.py says so:
          `WeightFormat.tensor_format`): a lookup dequantizes the rows it gathers. It is the largest
          tensor of a small-width model (the demo model's would be 26 MB in F32, 6.8 MB as q8 rows) and
          0.8 GB of GPT-J 6B's 7 GB. Version 1 files keep it F32.
    q4    as q8, with the weight's 4-bit values packed two a byte:
              transformer.h.0.attn.q_proj.weight         U8  [out, in/2]     the 4-bit values (quant.py)
              transformer.h.0.attn.q_proj.weight_scale   F16 [out, in/32]

Order: the F32 tensors first, then the F16 tensors, then for a block format each weight's values
followed by its F16 scales, every group in model order. The writer starts the data 64-byte aligned; F32
sizes are multiples of 4 and an I8 weight's size is out * in with in a multiple of 32, so every tensor
starts at a multiple of its element size and the C++ runtime uses the memory-mapped pointers directly (for
GPT-J 6B every tensor even starts 64-byte aligned). Writing the scales right after their weight lets the writer
quantize each weight once and stream it out.

`NativeFile` validates everything a header can say before anything is computed: the format marker and
version, the config, the exact set of tensors with the dtype and shape the config implies, offsets
inside the file, alignment, and finite non-negative scales.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import formats
from .config import GPTJConfig
from .errors import CheckpointError, ConfigError, GPTJError, InputError
from .formats import CURRENT_FILE_VERSION, FORMATS, WeightFormat, scale_name, weight_format
from .layout import weight_shapes
from .limits import loads_bounded, open_regular
from .quant import QK
from .safetensors_file import DTYPES, MAX_HEADER_BYTES, SafetensorsFile, safetensors_header, write_safetensors

FORMAT = "gptj_ref"
FORMAT_VERSION = CURRENT_FILE_VERSION
EMBEDDING = formats.EMBEDDING
NATIVE_DTYPES = tuple(FORMATS)  # ("q8", "q4", "f16", "f32")

Spec = Tuple[str, str, Tuple[int, ...]]  # (stored name, safetensors dtype, shape)

# Float tensors are converted to float16 a slice of rows at a time (bounded temporaries).
_CHUNK_ELEMENTS = 1 << 20


def native_specs(config: GPTJConfig, dtype: str, version: int = FORMAT_VERSION) -> List[Spec]:
    """Every tensor of a native file of this config, dtype and format version, in file order (see the
    module docstring)."""
    if dtype not in NATIVE_DTYPES:
        raise InputError(f"unknown native dtype {dtype!r}; choose one of {', '.join(NATIVE_DTYPES)}")
    fmt = weight_format(dtype)
    f32: List[Spec] = []
    f16: List[Spec] = []
    blocks: List[Spec] = []
    for name, shape in weight_shapes(config).items():
        try:
            stored = fmt.stores(name, shape, version)
        except InputError as e:
            raise ConfigError(str(e)) from None
        if len(stored) == 2:  # a block format's values and scales
            blocks += stored
        elif stored[0][1] == "F16":
            f16 += stored
        else:
            f32 += stored
    return f32 + f16 + blocks


def native_tensor_count(config: GPTJConfig, dtype: str, version: int = FORMAT_VERSION) -> int:
    """len(native_specs(config, dtype, version)), without listing n_layer layers: checked against a file's
    header before anything proportional to the config's sizes is built."""
    one = len(native_specs(config.replace(n_layer=1), dtype, version))
    per_layer = len(native_specs(config.replace(n_layer=2), dtype, version)) - one
    return one + (config.n_layer - 1) * per_layer


def native_metadata(config: GPTJConfig, dtype: str, tokenizer_json: Optional[str]) -> Dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "dtype": dtype,
        "dtype_version": str(weight_format(dtype).version),
        "config": json.dumps(config.to_hf(), sort_keys=True),
        "tokenizer": tokenizer_json or "",
        "qk": str(QK),
    }


def native_size(config: GPTJConfig, dtype: str) -> int:
    """Bytes of a native file's tensor data (the header adds the tokenizer JSON and a few KB)."""
    return sum(
        int(np.prod(shape, dtype=np.int64)) * DTYPES[st].itemsize for _, st, shape in native_specs(config, dtype)
    )


def native_file_size(config: GPTJConfig, dtype: str, tokenizer_json: Optional[str]) -> int:
    """Bytes of the whole native file: the 8-byte length, the header (with the tokenizer) and the data."""
    header = safetensors_header(native_specs(config, dtype), native_metadata(config, dtype, tokenizer_json))
    return 8 + len(header) + native_size(config, dtype)


# -------------------------------------------------------------------------------------------------
# Writing
# -------------------------------------------------------------------------------------------------


def write_native(
    path: "str | os.PathLike[str]",
    config: GPTJConfig,
    tensor_source: Callable[[str], np.ndarray],
    dtype: str = "q8",
    tokenizer_json: Optional[str] = "",
    progress: Optional[Callable[[str, int], None]] = None,
) -> None:
    """Write a native model file, one tensor at a time, atomically.

    tensor_source(name) returns the float tensor of a Hugging Face name when it is needed (a memory-mapped
    array is fine: it is only read, a slice at a time); each is asked for once. progress(name, nbytes)
    is called after each stored tensor. Nothing appears at `path` unless the whole file was written.
    """
    specs = native_specs(config, dtype)
    fmt = weight_format(dtype)
    stored_names = {name for name, _, _ in specs}
    expected = weight_shapes(config)
    scales_due: Dict[str, np.ndarray] = {}  # the scales of the weight just quantized, written next

    def produce(stored: str) -> np.ndarray:
        if stored in scales_due:
            return scales_due.pop(stored)
        w = np.asarray(tensor_source(stored))
        if w.shape != expected[stored]:
            raise CheckpointError(
                f"tensor {stored!r} has shape {list(w.shape)} but the config implies {list(expected[stored])}"
            )
        check_finite(w, f"tensor {stored!r}")
        try:
            if scale_name(stored) in stored_names:
                values, scales = fmt.tensor_format(stored, w.shape).quantize(w)
                scales_due[scale_name(stored)] = scales
                return values
            if dtype == "f16" and w.ndim == 2:
                return to_float16(w, stored)
        except InputError as e:
            raise CheckpointError(f"tensor {stored!r}: {e}") from None
        return np.asarray(w, dtype=np.float32)

    write_safetensors(path, specs, produce, native_metadata(config, dtype, tokenizer_json), progress)


def check_finite(w: np.ndarray, what: str) -> None:
    """Refuse NaN or inf in a float array, a slice of rows at a time (bounded temporaries): a model with a
    non-finite weight computes NaN or nonsense, so every file gptj_ref writes has finite weights only."""
    flat = w.reshape(w.shape[0], -1) if w.ndim > 1 else w.reshape(1, -1)
    step = max(1, _CHUNK_ELEMENTS // max(flat.shape[1], 1))
    for start in range(0, flat.shape[0], step):
        chunk = flat[start : start + step]
        bad = ~np.isfinite(chunk)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            index = [start + row, col] if w.ndim > 1 else [col]
            raise CheckpointError(
                f"{what} holds {chunk[row, col]} at {index}; gptj_ref stores only finite weights. The "
                "checkpoint is damaged (or was saved from a diverged training run)"
            )


def to_float16(w: np.ndarray, name: str = "tensor") -> np.ndarray:
    """float -> float16 (round to nearest even), a slice of rows at a time; finite values beyond float16's
    range are an error rather than a silent inf."""
    out = np.empty(w.shape, dtype=np.float16)
    step = max(1, _CHUNK_ELEMENTS // max(w.shape[-1], 1))
    for start in range(0, w.shape[0], step):
        src = w[start : start + step]
        with np.errstate(over="ignore"):
            out[start : start + step] = src
        overflow = np.isinf(out[start : start + step]) & np.isfinite(src)
        if overflow.any():
            row = start + int(np.argwhere(overflow)[0][0])
            raise InputError(
                f"{name} holds values beyond float16's range (|x| > 65504) in row {row}; store it as f32 or q8"
            )
    return out


# -------------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------------


def is_native_file(path: "str | os.PathLike[str]") -> bool:
    """True when `path` is a safetensors file whose metadata says format "gptj_ref" (reads only the header)."""
    try:
        with open_regular(path, CheckpointError) as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                return False
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER_BYTES, size - 8):
                return False
            header = loads_bounded(f.read(n))
    except (OSError, ValueError, CheckpointError):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and metadata.get("format") == FORMAT


class NativeFile:
    """A native model file, memory-mapped and validated on open. Nothing is copied on load.

    .config, .dtype, .tokenizer_json, .format_version
    .tensor(name)            the stored array (read-only, memory-mapped), by stored name
    .weights_for_runtime()   every stored array by stored name (values and F16 scales for block formats)
    .dequantized_weights()   float32 weights by Hugging Face name: what the reference backend runs
    .check()                 a full scan of the data (q8's int8 never -128, floats finite); open checks only
                             what the header and the scales say, without reading the weights
    """

    def __init__(self, path: "str | os.PathLike[str]"):
        self.path = os.fspath(path)
        self._file = SafetensorsFile(self.path)  # validates the header, offsets, sizes, overlaps
        try:
            self._validate()
        finally:
            # The memory map outlives the file descriptor: arrays stay valid and no descriptor is held
            # open by a model that is never closed explicitly.
            self._file.close()

    def _error(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {why}")

    def _validate(self) -> None:
        meta = self._file.metadata
        if meta.get("format") != FORMAT:
            raise self._error(
                f"not a gptj_ref native model file: its metadata has format {meta.get('format')!r}, "
                f"expected {FORMAT!r}; make one with `gptj convert`"
            )
        version = meta.get("format_version", "")
        if not version.isdigit() or len(version) > 9:
            raise self._error(f"format_version {version!r} is not a version number; the file is damaged")
        self.format_version = int(version)
        if self.format_version > FORMAT_VERSION:
            raise self._error(
                f"file format version {self.format_version} is newer than this gptj_ref supports "
                f"({FORMAT_VERSION}); upgrade gptj_ref"
            )
        if self.format_version < 1:
            raise self._error(f"file format version {self.format_version} does not exist (versions start at 1)")
        version = self.format_version
        self.dtype = meta.get("dtype")
        if self.dtype not in NATIVE_DTYPES:
            raise self._error(f"dtype {self.dtype!r} is unknown; expected one of {', '.join(NATIVE_DTYPES)}")
        self.format = weight_format(self.dtype)
        dtype_version = meta.get("dtype_version", "1")
        if dtype_version != str(self.format.version):
            raise self._error(
                f"{self.dtype} layout version {dtype_version!r} is not the one this gptj_ref reads "
                f"({self.format.version}); convert the model again with this version"
            )
        if meta.get("qk") != str(QK):
            raise self._error(f"int8 block size qk = {meta.get('qk')!r}; this gptj_ref reads only {QK}")
        try:
            self.config = GPTJConfig.from_hf(loads_bounded(meta.get("config", "")))
            count = native_tensor_count(self.config, self.dtype, version)
            if count > 2 * len(self._file.entries) + 100:  # far off: refuse before listing every tensor
                raise self._error(
                    f"the file holds {len(self._file.entries)} tensors but a {self.dtype} file of its "
                    f"config (n_layer {self.config.n_layer}) has {count}; the file is damaged"
                )
            specs = native_specs(self.config, self.dtype, version)
        except CheckpointError:
            raise
        except (ValueError, GPTJError) as e:
            raise self._error(f"the config in the file is not valid: {e}") from None
        self.tokenizer_json = meta.get("tokenizer", "")
        self.config_shapes = weight_shapes(self.config)

        entries = self._file.entries
        expected = {name: (st, shape) for name, st, shape in specs}
        missing = [name for name in expected if name not in entries]
        if missing:
            raise self._error(
                f"{len(missing)} tensor(s) missing, e.g. {missing[0]!r}; a {self.dtype} file of this "
                "config needs them all; the file is damaged or was not written by gptj_ref"
            )
        unexpected = [name for name in entries if name not in expected]
        if unexpected:
            raise self._error(
                f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all); a {self.dtype} file "
                "of this config has none such"
            )
        for name, (st, shape) in expected.items():
            entry = entries[name]
            if entry.dtype != st or entry.shape != shape:
                raise self._error(
                    f"tensor {name!r} is {entry.dtype} {list(entry.shape)} but a {self.dtype} file of "
                    f"this config needs {st} {list(shape)}"
                )
            if entry.offset % DTYPES[st].itemsize != 0:
                raise self._error(
                    f"tensor {name!r} starts at byte {entry.offset}, not a multiple of its element "
                    f"size {DTYPES[st].itemsize}; rewrite the file with `gptj convert`"
                )
        self._names = [name for name, _, _ in specs]
        if self.format.is_block:
            for name in self._names:
                if scale_name(name) in expected:
                    self._check_scales(name)
        for name, _, shape in specs:  # LayerNorms and biases: 0.03% of the bytes, read in full
            if len(shape) == 1:
                check_finite(self._file.array(name), f"{self.path}: tensor {name!r}")

    def _check_scales(self, weight: str) -> None:
        fmt, name = self.tensor_format(weight), scale_name(weight)
        scales = self._file.array(name)
        step = max(1, _CHUNK_ELEMENTS // max(scales.shape[1], 1))
        for start in range(0, scales.shape[0], step):
            chunk = scales[start : start + step]
            bad = ~np.isfinite(chunk) if fmt.signed_scales else ~(np.isfinite(chunk) & (chunk >= 0))
            if bad.any():
                row, col = (int(i) for i in np.argwhere(bad)[0])
                raise self._error(
                    f"scale tensor {name!r} holds {chunk[row, col]} at [{start + row}, {col}]; "
                    f"{fmt.name} scales must be finite{'' if fmt.signed_scales else ' and >= 0'}; "
                    "the file is damaged"
                )

    # Access ------------------------------------------------------------------------------------------
    def names(self) -> List[str]:
        """Stored tensor names in file order."""
        return list(self._names)

    def tensor(self, name: str) -> np.ndarray:
        if name not in self._file.entries:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        return self._file.array(name)

    def tensor_format(self, name: str) -> WeightFormat:
        """The format the weight `name` (a Hugging Face name) is stored in (formats.py decides)."""
        return self.format.tensor_format(name, self.config_shapes[name], self.format_version)

    def tensor_formats(self) -> Dict[str, str]:
        """Format name by weight name, for every weight of the file."""
        return {name: self.tensor_format(name).name for name in self.config_shapes}

    def weights_for_runtime(self) -> Dict[str, np.ndarray]:
        """Every stored tensor as its memory-mapped array, by stored name (nothing copied)."""
        return {name: self._file.array(name) for name in self._names}

    def weight(self, name: str) -> np.ndarray:
        """One weight by Hugging Face name as float32 (dequantized for a block format; mapped, not copied,
        when F32)."""
        stored = self.tensor(name)
        if scale_name(name) in self._file.entries:
            return self.tensor_format(name).dequantize(stored, self.tensor(scale_name(name)))
        if stored.dtype == np.float32:
            return stored
        return stored.astype(np.float32)

    def dequantized_weights(self) -> Dict[str, np.ndarray]:
        """float32 weights by Hugging Face name: exactly what the file means (see quant.py for q8)."""
        return {name: self.weight(name) for name in weight_shapes(self.config)}

    def check(self) -> None:
        """Read every tensor: the format's check of its values (q8: int8 in [-127, 127]), every float
        finite. Slow for big files."""
        for name in self._names:
            a = self._file.array(name)
            fmt = self.tensor_format(name) if name in self.config_shapes else self.format
            flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
            step = max(1, _CHUNK_ELEMENTS // max(flat.shape[1], 1))
            for start in range(0, flat.shape[0], step):
                chunk = flat[start : start + step]
                if a.dtype.kind in "iu":
                    problem = fmt.check_values(chunk) if fmt.check_values else None
                    if problem:
                        raise self._error(f"tensor {name!r} {problem}")
                elif not np.isfinite(chunk).all():
                    raise self._error(f"tensor {name!r} holds NaN or inf")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "NativeFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_native(path: "str | os.PathLike[str]") -> NativeFile:
    """Open and validate a native model file."""
    return NativeFile(path)


def model_kind(path: "str | os.PathLike[str]") -> str:
    """What a model path holds: "native" (a gptj_ref native file) or "checkpoint" (a directory, taken to
    be a Hugging Face checkpoint and checked when opened). Anything else raises CheckpointError."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "checkpoint"
    if not os.path.exists(path):
        raise CheckpointError(f"no model at {path!r}: give a Hugging Face GPT-J directory or a native .gptj file")
    if not is_native_file(path):
        raise CheckpointError(
            f"{path} is a file but not a gptj_ref native model file; for a Hugging Face "
            "checkpoint, give the directory that holds config.json"
        )
    return "native"
