"""Reading and writing the safetensors format without torch or the safetensors package.

A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON
`{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}`,
then the raw little-endian tensor bytes; offsets are relative to the end of the header.

The reader validates the whole header (dtypes, shapes, offsets inside the file, byte counts that match
the shapes, no overlaps) before any tensor is touched, and hands out memory-mapped arrays: nothing is
read until it is used. The writer streams tensors one at a time into a temporary file in the target's
directory and renames it into place only when everything is written.
"""

from __future__ import annotations

import fcntl
import json
import math
import mmap
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import CheckpointError, is_int
from .limits import MAX_DIM, loads_bounded, open_regular, short_repr

# safetensors dtype name -> NumPy dtype. BF16 has no NumPy dtype: it is exposed as its raw uint16 bits
# (see `bf16_to_f32`).
DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAME_OF = {
    np.dtype("<f8"): "F64",
    np.dtype("<f4"): "F32",
    np.dtype("<f2"): "F16",
    np.dtype("<i8"): "I64",
    np.dtype("<i4"): "I32",
    np.dtype("<i2"): "I16",
    np.dtype("i1"): "I8",
    np.dtype("u1"): "U8",
    np.dtype("?"): "BOOL",
}

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
DATA_ALIGNMENT = 64  # our writer pads the header so tensor data starts 64-byte aligned


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 stored bits up and reinterpret."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def dtype_name(dtype) -> str:
    try:
        return _NAME_OF[np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)]
    except KeyError:
        raise CheckpointError(f"dtype {np.dtype(dtype)} cannot be stored in safetensors") from None


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors name: "F32", "F16", "BF16", "I8", ...
    shape: Tuple[int, ...]
    offset: int  # absolute byte offset of the first element in the file
    nbytes: int


class SafetensorsFile:
    """One safetensors file, validated and memory-mapped.  `array(name)` returns a read-only view."""

    def __init__(self, path: "str | os.PathLike[str]"):
        self.path = os.fspath(path)
        self._file = open_regular(self.path, CheckpointError, "safetensors file")
        # The mapping keeps the data reachable after the file handle is closed, so no handle stays open
        # for as long as arrays handed out are alive.
        with self._file:
            self.metadata, self.entries = self._read_header()
            size = os.fstat(self._file.fileno()).st_size
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def _read_header(self):
        size = os.fstat(self._file.fileno()).st_size
        if size < 8:
            raise CheckpointError(
                f"{self.path}: {size} bytes is too short for a safetensors file (needs an 8-byte header length)"
            )
        (n,) = struct.unpack("<Q", self._file.read(8))
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{self.path}: header length {n} does not fit in the file of {size} bytes; "
                "the file is truncated or not safetensors"
            )
        try:
            header = loads_bounded(self._file.read(n))
        except ValueError as e:  # also UnicodeDecodeError and JSONDecodeError
            raise CheckpointError(f"{self.path}: the safetensors header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: the safetensors header must be a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointError(f"{self.path}: __metadata__ must map strings to strings")
        data_start, data_size = 8 + n, size - 8 - n
        entries: Dict[str, TensorEntry] = {}
        spans = []
        for name, spec in header.items():
            entries[name] = entry = _parse_entry(self.path, name, spec, data_start, data_size)
            spans.append((entry.offset, entry.offset + entry.nbytes, name))
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise CheckpointError(f"{self.path}: tensors {short_repr(a)} and {short_repr(b)} overlap in the file")
        return metadata, entries

    def names(self) -> Sequence[str]:
        return list(self.entries)

    def array(self, name: str, copy: bool = False) -> np.ndarray:
        """The stored tensor as a read-only memory-mapped array (BF16 as raw uint16 bits); with copy=True,
        read into memory instead (`read_copy`: a file truncated meanwhile is an error, not a SIGBUS)."""
        entry = self.entries.get(name)
        if entry is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        if entry.nbytes == 0:
            return np.zeros(entry.shape, DTYPES[entry.dtype])
        if copy:
            return read_copy(self.path, entry.offset, DTYPES[entry.dtype], entry.shape)
        flat = np.frombuffer(
            self._mmap,
            dtype=DTYPES[entry.dtype],
            count=entry.nbytes // DTYPES[entry.dtype].itemsize,
            offset=entry.offset,
        )
        return flat.reshape(entry.shape)

    def close(self) -> None:
        """Nothing to release: the file handle is closed at open, and the mapping lives as long as
        the arrays handed out need it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_copy(path: str, offset: int, dtype: np.dtype, shape: Tuple[int, ...]) -> np.ndarray:
    """Read an array from a file with read(), not a memory map: reading a mapped page past the end of a
    file that shrank since it was mapped kills the process with SIGBUS, a short read is an error."""
    out = np.empty(shape, dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open_regular(path, CheckpointError) as f:
        f.seek(offset)
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise CheckpointError(
                    f"{path}: the file ends at byte {offset + done}, inside a tensor that should end "
                    f"at byte {offset + len(view)}; it was truncated or changed while being read"
                )
            done += n
    return out


def _parse_entry(path, name, spec, data_start, data_size) -> TensorEntry:
    def bad(why):
        return CheckpointError(f"{path}: tensor {short_repr(name)}: {why}")

    if not isinstance(spec, dict):
        raise bad("header entry is not an object")
    dtype = spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"unknown dtype {short_repr(dtype)}; supported: {', '.join(DTYPES)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise bad(f"shape must be a list of integers in [0, 2**63), got {short_repr(shape)}")
    offsets = spec.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_int(o) for o in offsets):
        raise bad(f"data_offsets must be [begin, end], got {short_repr(offsets)}")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize  # Python ints: no wrap-around
    if not 0 <= begin <= end:
        raise bad(f"data_offsets {offsets} are not an increasing pair")
    if end > data_size:
        raise bad(f"data ends at byte {end} but the file holds only {data_size} bytes of data; the file is truncated")
    if end - begin != nbytes:
        raise bad(f"shape {shape} of {dtype} needs {nbytes} bytes but data_offsets span {end - begin}")
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, nbytes)


def release_mapped_pages(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set (madvise DONTNEED).

    The data stays in the page cache and is read back on the next access; only arrays that view an
    `mmap.mmap` are touched (anonymous memory is freed by dropping the array, and DONTNEED would zero it).
    Use it only on arrays nobody writes to (ours are read-only), so nothing is lost.
    """
    owner = array
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    if not isinstance(owner, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED") or array.nbytes == 0 or len(owner) == 0:
        return
    map_start = np.frombuffer(owner, dtype=np.uint8, count=1).ctypes.data
    low, high = _byte_bounds(array)
    page = mmap.PAGESIZE
    begin = (low - map_start) // page * page
    end = min(-(-(high - map_start) // page) * page, len(owner))
    if 0 <= begin < end:
        owner.madvise(mmap.MADV_DONTNEED, begin, end - begin)


def _byte_bounds(array: np.ndarray):
    try:
        from numpy.lib.array_utils import byte_bounds
    except ImportError:  # numpy < 2
        byte_bounds = np.byte_bounds
    return byte_bounds(array)


def safetensors_header(
    specs: Sequence[Tuple[str, str, Tuple[int, ...]]], metadata: Optional[Mapping[str, str]] = None
) -> bytes:
    """The JSON header `write_safetensors` writes for these tensors (padded so the data starts aligned)."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in specs:
        if dtype not in DTYPES:
            raise CheckpointError(f"cannot write tensor {name!r} with unknown dtype {dtype!r}")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return blob + b" " * (-(8 + len(blob)) % DATA_ALIGNMENT)  # spaces are valid JSON padding


TEMP_PREFIX = ".tmp-"


def _remove_stale_temps(directory: str, target: str) -> None:
    """Remove temporaries of `target` left by a writer that was killed (kill -9, power loss). A live
    writer holds a lock on its temporary, so only files nobody holds are removed."""
    prefix = TEMP_PREFIX + target + "-"
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
                os.unlink(full)
        except OSError:
            pass
        finally:
            os.close(fd)


def write_safetensors(
    path: "str | os.PathLike[str]",
    specs: Iterable[Tuple[str, str, Tuple[int, ...]]],
    produce: Callable[[str], np.ndarray],
    metadata: Optional[Mapping[str, str]] = None,
    progress: Optional[Callable[[str, int], None]] = None,
) -> None:
    """Write a safetensors file, one tensor at a time, atomically.

    `specs` lists (name, safetensors dtype, shape) in file order; `produce(name)` returns that tensor
    only when it is written, so at most one tensor needs to be in memory. `progress(name, nbytes)` is
    called after each tensor. The file appears at `path` only once complete.
    """
    path = os.fspath(path)
    specs = [(name, dtype, tuple(int(d) for d in shape)) for name, dtype, shape in specs]
    blob = safetensors_header(specs, metadata)

    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temps(directory, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + os.path.basename(path) + "-", dir=directory)
    lock = os.dup(fd)  # shares fd's lock; held until the file is in place: marks it as being written
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, dtype, shape in specs:
                array = np.asarray(produce(name))
                expected = DTYPES[dtype]
                if array.shape != shape or array.dtype.newbyteorder("<") != expected.newbyteorder("<"):
                    raise CheckpointError(
                        f"tensor {name!r}: produced {array.dtype} {array.shape}, expected {dtype} {shape}"
                    )
                data = np.ascontiguousarray(array, dtype=expected)
                f.write(data.data if data.size else b"")
                if progress is not None:
                    progress(name, data.nbytes)
                del array, data
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(lock)


def save_tensors(path, tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Convenience: write a dict of in-memory arrays (BF16 is not produced; store F32/F16/I8/...)."""
    specs = [(name, dtype_name(a.dtype), a.shape) for name, a in tensors.items()]
    write_safetensors(path, specs, lambda name: tensors[name], metadata)
