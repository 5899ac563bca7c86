"""Reading Hugging Face GPT-J checkpoints without torch.

A Hugging Face model directory holds `config.json` and the weights in one of four layouts:

    model.safetensors                      one safetensors file               format "safetensors"
    model.safetensors.index.json + shards  {"weight_map": {name: file}}       format "safetensors-sharded"
    pytorch_model.bin                      a torch.save zip archive           format "bin"
    pytorch_model.bin.index.json + shards  {"weight_map": {name: file}}       format "bin-sharded"

`open_checkpoint(path)` picks one (safetensors first) and returns a `Checkpoint` that reads tensors lazily,
one at a time, as float32 views of a memory-mapped file (or converted copies for fp16/bf16), so GPT-J 6B's
24 GB can be walked on a machine with far less RAM.

The torch.save zip format (PyTorch >= 1.6; docs/gptj.md, "Checkpoints"):

    <prefix>/data.pkl       a pickle of the state dict; each tensor is
                            _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, metadata])
                            and each storage a persistent id ('storage', torch.FloatStorage, key, location, numel)
    <prefix>/data/<key>     the raw little-endian bytes of storage <key>, stored uncompressed
    <prefix>/byteorder      "little" (absent in older files, which are little-endian)

The pickle is read by `_StateDictUnpickler`, which knows a handful of globals by name and maps each to a
harmless stand-in defined here; any other global is refused before it is looked up, so no code from the
file ever runs. torch is never imported.
"""

from __future__ import annotations

import collections
import io
import math
import mmap
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple

import numpy as np

from .config import GPTJConfig
from .errors import CheckpointError, is_int
from .layout import LEGACY_BUFFER, weight_shapes
from .limits import MAX_DIM, load_json_file, open_regular, short_repr
from .safetensors_file import DTYPES, SafetensorsFile, bf16_to_f32, read_copy, release_mapped_pages

# Weight files in the order they are preferred: (file name, is an index of shards, format name).
WEIGHT_FILES = (
    ("model.safetensors", False, "safetensors"),
    ("model.safetensors.index.json", True, "safetensors-sharded"),
    ("pytorch_model.bin", False, "bin"),
    ("pytorch_model.bin.index.json", True, "bin-sharded"),
)

FLOAT_DTYPES = ("F32", "F16", "BF16")  # what `read` converts to float32
MAX_LISTED = 20  # problems listed per kind in one error message


# ---------------------------------------------------------------------------------------------------
# The public API
# ---------------------------------------------------------------------------------------------------


def open_checkpoint(path: "str | os.PathLike[str]") -> "Checkpoint":
    """Open a Hugging Face GPT-J directory: config.json plus safetensors or pytorch_model.bin weights."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(
            f"{path!r} is not a directory; a Hugging Face checkpoint is a directory "
            "holding config.json and the weight files"
        )
    present = [entry for entry in WEIGHT_FILES if os.path.isfile(os.path.join(path, entry[0]))]
    if not present:
        found = sorted(os.listdir(path))
        raise CheckpointError(
            f"{path}: no weights found. Expected one of {', '.join(f for f, _, _ in WEIGHT_FILES)}; "
            f"the directory holds {', '.join(found) if found else 'nothing'}"
        )
    filename, sharded, fmt = present[0]  # the preferred one
    weights = os.path.join(path, filename)
    config = GPTJConfig.from_json_file(os.path.join(path, "config.json"))
    return Checkpoint(path, config, fmt, weights, _read_index(weights) if sharded else None)


class Checkpoint:
    """The tensors of one checkpoint directory, read on demand.

    `names()` lists what is stored (the legacy `attn.bias` / `attn.masked_bias` buffers left out);
    `dtype`, `shape` and `nbytes` come from headers alone; `read(name)` maps that tensor's bytes and
    nothing else. `check()` compares the whole checkpoint against `config.json`.
    """

    def __init__(
        self, path: str, config: GPTJConfig, format: str, weights_file: str, weight_map: Optional[Dict[str, str]]
    ):
        self.path = path
        self.config = config
        self.format = format
        self._weights_file = weights_file
        self._open: Dict[str, "_TensorFile"] = {}  # file name -> opened weight file
        if weight_map is None:  # a single file: its own names
            only = self._file(os.path.basename(weights_file))
            weight_map = {name: os.path.basename(weights_file) for name in only.names()}
        else:  # shards are opened when first needed
            missing = sorted({f for f in weight_map.values() if not os.path.isfile(os.path.join(path, f))})
            if missing:
                raise CheckpointError(
                    f"{weights_file}: the index names shard files that do not exist: "
                    f"{', '.join(missing)} (the directory holds {', '.join(sorted(os.listdir(path)))})"
                )
        self._where = {name: f for name, f in weight_map.items() if not LEGACY_BUFFER.match(name)}

    # Headers ----------------------------------------------------------------------------------------
    def names(self) -> List[str]:
        return list(self._where)

    def dtype(self, name: str) -> str:
        return self._entry(name).dtype

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._entry(name).shape

    def nbytes(self, name: str) -> int:
        entry = self._entry(name)
        return math.prod(entry.shape) * DTYPES[entry.dtype].itemsize

    # Data -------------------------------------------------------------------------------------------
    # True: `read` reads the bytes with read() instead of mapping them, so a file truncated meanwhile is an
    # error rather than a SIGBUS (the converter sets it: it reads every tensor once).
    copy_reads = False

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32: a read-only memory-mapped view when stored as F32, a converted copy otherwise."""
        entry = self._entry(name)
        if entry.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} is stored as {entry.dtype}; "
                f"expected a float tensor ({', '.join(FLOAT_DTYPES)})"
            )
        raw = self._file(self._where[name]).array(name, self.copy_reads)
        if entry.dtype == "F32":
            return raw
        converted = raw.astype(np.float32) if entry.dtype == "F16" else bf16_to_f32(raw)  # BF16: raw uint16 bits
        release_mapped_pages(raw)  # the copy is what is used: don't keep the source pages resident too
        return converted

    def check(self) -> None:
        """Every tensor config.json implies is present with its shape and a float dtype; nothing else is.

        Raises one CheckpointError listing every problem found.
        """
        expected = weight_shapes(self.config)
        missing = [n for n in expected if n not in self._where]
        unexpected = [n for n in self._where if n not in expected]
        wrong = []
        for name, shape in expected.items():
            if name not in self._where:
                continue
            entry = self._entry(name)
            if entry.shape != shape:
                wrong.append(f"{name}: checkpoint has shape {entry.shape}, config.json implies {shape}")
            if entry.dtype not in FLOAT_DTYPES:
                wrong.append(f"{name}: checkpoint has dtype {entry.dtype}, expected one of {', '.join(FLOAT_DTYPES)}")
        problems = (
            _listing("missing tensors", missing)
            + _listing("unexpected tensors", unexpected)
            + _listing("mismatches", wrong)
        )
        if problems:
            raise CheckpointError(
                f"{self.path} ({self.format}) does not match its config.json "
                f"(n_layer {self.config.n_layer}, n_embd {self.config.n_embd}, "
                f"d_ff {self.config.d_ff}, vocab_size {self.config.vocab_size}):\n" + "\n".join(problems)
            )

    def load_weights(self) -> Dict[str, np.ndarray]:
        """check(), then every weight as float32, keyed and ordered as `layout.weight_shapes`."""
        self.check()
        return {name: self.read_weight(name) for name in weight_shapes(self.config)}

    def read_weight(self, name: str) -> np.ndarray:
        """read(name), with a vector (a LayerNorm or a bias: 0.03% of the bytes, read in full) checked to be
        finite; the matrices are checked when converted (see SECURITY.md)."""
        w = self.read(name)
        if w.ndim == 1:
            from .native import check_finite

            check_finite(w, f"{self.path}: tensor {name!r}")
        return w

    # Lifetime ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the files. Arrays already read stay valid: they hold on to their memory map."""
        for f in self._open.values():
            f.close()
        self._open.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({self.path!r}, format={self.format!r}, {len(self._where)} tensors)"

    # Internals --------------------------------------------------------------------------------------
    def _entry(self, name: str) -> "_Entry":
        filename = self._where.get(name)
        if filename is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r} in the checkpoint")
        return self._file(filename).entry(name)

    def _file(self, filename: str) -> "_TensorFile":
        if filename not in self._open:
            full = os.path.join(self.path, filename)
            self._open[filename] = (
                _SafetensorsWeights(full) if filename.endswith(".safetensors") else _TorchZipWeights(full)
            )
        return self._open[filename]


def _listing(title: str, items: List[str]) -> List[str]:
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"] + [f"  {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return lines


def _read_index(index_path: str) -> Dict[str, str]:
    """The `weight_map` of a sharded checkpoint's index: tensor name -> shard file in the same directory."""
    index = load_json_file(index_path, CheckpointError, "shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f'{index_path}: expected a JSON object with "weight_map": {{tensor name: shard file}}')
    for shard in set(weight_map.values()):
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index_path}: shard {shard!r} is not a plain file name in the checkpoint directory")
    return weight_map


# ---------------------------------------------------------------------------------------------------
# Weight files: one class per format, the same small interface
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    dtype: str  # safetensors dtype name: "F32", "F16", "BF16", "BOOL", "I64", ...
    shape: Tuple[int, ...]


class _TensorFile(Protocol):
    """What Checkpoint needs from one weight file."""

    def names(self) -> List[str]: ...
    def entry(self, name: str) -> _Entry: ...
    def array(self, name: str, copy: bool = False) -> np.ndarray: ...  # stored dtype (BF16 as uint16 bits)
    def close(self) -> None: ...


class _SafetensorsWeights:
    def __init__(self, path: str):
        self.path = path
        self._file = SafetensorsFile(path)
        # The header is parsed and the file mapped: arrays come from the map alone, so the descriptor can go
        # now (a Checkpoint that is never closed then leaks nothing but its memory maps).
        self._file.close()

    def names(self) -> List[str]:
        return list(self._file.names())

    def entry(self, name: str) -> _Entry:
        e = self._file.entries.get(name)
        if e is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r} (the shard index says it is here)")
        return _Entry(e.dtype, e.shape)

    def array(self, name: str, copy: bool = False) -> np.ndarray:
        self.entry(name)
        return self._file.array(name, copy)

    def close(self) -> None:
        """Nothing to do: the file was closed once mapped."""


# torch.save zip archives ---------------------------------------------------------------------------

# torch storage class -> safetensors dtype name (the NumPy dtype is DTYPES[name]).
STORAGE_DTYPES = {
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "DoubleStorage": "F64",
    "BoolStorage": "BOOL",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
}


class _Sealed:
    """Refuses the pickle BUILD opcode, which would otherwise overwrite a stand-in's fields after validation."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"the pickle tries to set the state of a {type(self).__name__[1:]}")


@dataclass(frozen=True)
class _StorageType(_Sealed):
    """Stand-in for a torch storage class such as torch.FloatStorage."""

    dtype: str


@dataclass(frozen=True)
class _Storage(_Sealed):
    """Stand-in for a storage: which zip member holds its bytes."""

    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef(_Sealed):
    """Stand-in for a tensor: a strided window into a storage."""

    storage: _Storage
    offset: int
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor; checks the arguments, builds nothing."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(
            f"a tensor's storage must be a persistent storage id, got {type(storage).__name__}"
        )
    if not is_int(storage_offset) or not 0 <= storage_offset <= MAX_DIM:
        raise pickle.UnpicklingError(f"storage offset must be an int in [0, 2**63), got {short_repr(storage_offset)}")
    for what, dims in (("size", size), ("stride", stride)):
        if not isinstance(dims, tuple) or not all(is_int(d) and 0 <= d <= MAX_DIM for d in dims):
            raise pickle.UnpicklingError(f"tensor {what} must be a tuple of ints in [0, 2**63), got {short_repr(dims)}")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} have different lengths")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2 (requires_grad, hooks and metadata are irrelevant here)."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_parameter: a saved nn.Parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError(f"a parameter must wrap a tensor, got {type(data).__name__}")
    return data


class _SealedFunction(_Sealed):
    """A stand-in function the pickle can call but not modify: a plain function would let a BUILD
    opcode rewrite its `__defaults__` in the running process."""

    def __init__(self, function):
        self._function = function

    def __call__(self, *args):
        return self._function(*args)


class _StateDict(collections.OrderedDict):
    """Stand-in for collections.OrderedDict. BUILD may only give it what torch.save writes for a module's
    state dict, {"_metadata": {module name: {...}}}, which is checked and dropped: no other attribute of
    the dict can be set (a BUILD setting `items` would otherwise replace the method)."""

    def __setstate__(self, state):
        if not (isinstance(state, dict) and set(state) == {"_metadata"} and isinstance(state["_metadata"], dict)):
            raise pickle.UnpicklingError(
                "the pickle sets attributes of an OrderedDict other than the _metadata of a state dict"
            )


# (module, name) -> stand-in. Everything a torch.save of a plain state dict emits; nothing else.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _StateDict,
    ("torch._utils", "_rebuild_tensor"): _SealedFunction(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _SealedFunction(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _SealedFunction(_rebuild_parameter),
    **{("torch", storage): _StorageType(dtype) for storage, dtype in STORAGE_DTYPES.items()},
}


# Bounds on what a state-dict pickle may build. A torch.save state dict nests about 5 deep, and its keys
# (tensor names) are flat strings; the bounds are far above that and far below what could hang or
# exhaust the process: unpickling is linear in the pickle's size once they hold.
MAX_PICKLE_BYTES = 16 << 20  # data.pkl of GPT-J 6B is ~30 KB; this allows ~150,000 tensors
MAX_PICKLE_DEPTH = 32  # nesting of containers
MAX_PICKLE_HASHED = 1 << 22  # elements hashed as dict keys / set items, shared references counted each time

_ATOMS = {
    "INT",
    "BININT",
    "BININT1",
    "BININT2",
    "LONG",
    "LONG1",
    "LONG4",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
    "BYTEARRAY8",
    "UNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "FLOAT",
    "BINFLOAT",
    "NONE",
    "NEWTRUE",
    "NEWFALSE",
    "EMPTY_TUPLE",
    "EMPTY_LIST",
    "EMPTY_DICT",
    "EMPTY_SET",
    "GLOBAL",
    "PERSID",
    "EXT1",
    "EXT2",
    "EXT4",
}
_FIXED_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_FROM_MARK = {"TUPLE", "LIST", "DICT", "FROZENSET", "OBJ", "INST"}  # build one object from the marked items
_INTO_TOP = {"APPENDS", "SETITEMS", "ADDITEMS"}  # add the marked items to the object below
_MARK = object()


class _Node:
    """What the pickle check knows of one object: its size with shared references expanded, and its depth."""

    __slots__ = ("size", "depth", "shared")

    def __init__(self, children=()):
        self.size = 1 + sum(c.size for c in children)
        self.depth = 1 + max((c.depth for c in children), default=0)
        self.shared = False
        for c in children:
            c.shared = True


def check_pickle_shape(data: bytes, where: str) -> None:
    """Walk the pickle's opcodes (nothing is built or called) and refuse one whose objects nest deeper than
    MAX_PICKLE_DEPTH, or whose dict keys and set items add up to more than MAX_PICKLE_HASHED elements
    once shared references are expanded (hashing a tuple of shared tuples 40 deep would take 2**40
    steps), or that changes a container after it was shared (the sizes would no longer hold).
    Time and memory are linear in len(data)."""
    import pickletools

    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{where}: the pickle has {len(data)} bytes, more than the {MAX_PICKLE_BYTES >> 20} MiB a state dict needs"
        )
    stack: list = []
    memo: dict = {}
    hashed = 0

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{where}: refused: {why} (not a state dict written by torch.save)")

    def pop(n: int = 1) -> list:
        if len(stack) < n or any(x is _MARK for x in stack[len(stack) - n :]):
            raise bad("an opcode takes more objects than the stack holds")
        items = stack[len(stack) - n :]
        del stack[len(stack) - n :]
        return items

    def pop_mark() -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise bad("no MARK for an opcode that needs one")

    def push(node: _Node) -> None:
        if node.depth > MAX_PICKLE_DEPTH:
            raise bad(f"objects nest deeper than {MAX_PICKLE_DEPTH} levels")
        stack.append(node)

    def hash_cost(keys) -> None:
        nonlocal hashed
        hashed += sum(k.size for k in keys)
        if hashed > MAX_PICKLE_HASHED:
            raise bad(f"dict keys or set items hold more than {MAX_PICKLE_HASHED} elements in all")

    def add_to_top(items, keys=()) -> None:
        container = pop()[0]
        if container.shared:
            raise bad("a container is changed after it was shared")
        hash_cost(keys)
        grown = _Node(items)
        container.size += grown.size - 1
        container.depth = max(container.depth, grown.depth)
        push(container)

    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("PROTO", "FRAME", "STOP"):
                continue
            if name in _ATOMS:
                push(_Node())
            elif name == "MARK":
                stack.append(_MARK)
            elif name in _FIXED_TUPLES:
                push(_Node(pop(_FIXED_TUPLES[name])))
            elif name in _FROM_MARK:
                items = pop_mark()
                if name == "DICT":
                    hash_cost(items[0::2])
                elif name == "FROZENSET":
                    hash_cost(items)
                push(_Node(items))
            elif name in _INTO_TOP:
                items = pop_mark()
                add_to_top(items, items[0::2] if name == "SETITEMS" else items if name == "ADDITEMS" else ())
            elif name in ("APPEND", "SETITEM", "BUILD"):
                items = pop(2 if name == "SETITEM" else 1)
                add_to_top(items, items[:1] if name == "SETITEM" else ())
            elif name in ("STACK_GLOBAL", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BINPERSID"):
                push(_Node(pop({"NEWOBJ_EX": 3, "BINPERSID": 1}.get(name, 2))))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack or stack[-1] is _MARK:
                    raise bad("memoizes a MARK")
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
                node = memo.get(arg) if name != "DUP" else (stack[-1] if stack and stack[-1] is not _MARK else None)
                if node is None:
                    raise bad(f"{name} of an object that does not exist")
                node.shared = True
                push(node)
            elif name == "POP":
                stack.pop() if stack else pop()
            elif name == "POP_MARK":
                pop_mark()
            else:
                raise bad(f"opcode {name} is not used by torch.save")
    except CheckpointError:
        raise
    except ValueError as e:  # pickletools: truncated or unknown opcode
        raise CheckpointError(f"{where}: not a valid pickle ({e})") from None


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict into `_TensorRef`s without importing torch or running any code.

    `find_class` hands out only the stand-ins in `_ALLOWED_GLOBALS`; any other global is refused by name,
    before anything is imported or called.
    """

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data))
        self._where = where
        self._storages: Dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        standin = _ALLOWED_GLOBALS.get((module, name))
        if standin is None:
            if module == "torch" and name.endswith("Storage"):
                raise CheckpointError(
                    f"{self._where}: tensors stored as torch.{name} are not supported; expected float tensors "
                    f"(torch.FloatStorage, HalfStorage or BFloat16Storage; also readable: "
                    f"{', '.join(sorted(set(STORAGE_DTYPES) - {'FloatStorage', 'HalfStorage', 'BFloat16Storage'}))})"
                )
            raise CheckpointError(
                f"{self._where}: the pickle refers to {module}.{name}, which a state dict does not need; refused "
                f"without running it (allowed: {', '.join(m + '.' + n for m, n in _ALLOWED_GLOBALS)})"
            )
        return standin

    def persistent_load(self, pid):
        """('storage', storage type, key, location, numel) -> _Storage; the same key gives the same storage."""
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and is_int(pid[4])
            and 0 <= pid[4] <= MAX_DIM
        ):
            raise CheckpointError(
                f"{self._where}: unexpected persistent id {short_repr(pid)}; "
                "expected ('storage', torch.<Type>Storage, key, location, numel)"
            )
        _, storage_type, key, _location, numel = pid
        storage = self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise CheckpointError(
                f"{self._where}: storage {short_repr(key)} is used as {storage.dtype}[{storage.numel}] "
                f"and as {storage_type.dtype}[{numel}]"
            )
        return storage


# A legacy (pre-1.6) torch.save file starts with this number pickled with protocol 2 (the bytes before STOP).
_LEGACY_START = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[:-1]
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes


class _TorchZipWeights:
    """A torch.save zip archive: the pickle is read at once (no tensor data), each tensor mapped on demand."""

    def __init__(self, path: str):
        self.path = path
        self._file = open_regular(path, CheckpointError, "pytorch_model.bin file")
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            self._zip = self._open_zip()
            self._prefix = self._find_prefix()
            self._tensors = self._read_state_dict()
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        finally:
            # The zip directory and the pickle are in memory and the data is mapped, so the descriptor can go
            # now (a Checkpoint that is never closed then leaks nothing but its memory map).
            self._file.close()
        self._offsets: Dict[str, int] = {}  # storage key -> absolute offset of its bytes

    def _open_zip(self) -> zipfile.ZipFile:
        if not zipfile.is_zipfile(self._file):
            self._file.seek(0)
            head = self._file.read(32)
            if head.startswith(b"PK\x03\x04"):
                raise CheckpointError(
                    f"{self.path}: starts like a zip archive but has no valid zip directory at "
                    f"its end ({self._size} bytes); the file is truncated or corrupted"
                )
            if self._is_legacy_pickle(head) or self._is_tar():
                raise CheckpointError(
                    f"{self.path} uses the legacy (pre-1.6) torch.save format, which gptj_ref does "
                    "not read; re-save it with a newer torch: "
                    "torch.save(torch.load(path), path), or use save_pretrained (safetensors)"
                )
            raise CheckpointError(
                f"{self.path} is neither a torch.save zip archive nor a legacy torch file "
                f"(first bytes {head[:8]!r}); expected a pytorch_model.bin written by torch >= 1.6"
            )
        try:
            archive = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
            raise CheckpointError(f"{self.path}: corrupted zip archive ({e})") from None
        names = archive.namelist()
        if len(names) != len(set(names)):
            raise CheckpointError(f"{self.path}: the zip archive lists some members twice; the file is corrupted")
        return archive

    def _is_legacy_pickle(self, head: bytes) -> bool:
        """Compared as bytes: nothing from the file is unpickled here."""
        return head.startswith(_LEGACY_START)

    def _is_tar(self) -> bool:
        import tarfile

        self._file.seek(0)
        try:
            return tarfile.is_tarfile(self._file)
        finally:
            self._file.seek(0)

    def _find_prefix(self) -> str:
        pickles = [n for n in self._zip.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{self.path}: expected exactly one <archive>/data.pkl in the zip, "
                f"found {pickles or 'none'} among {self._zip.namelist()[:10]}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in self._zip.namelist():
            try:
                order = self._read_member(byteorder, 16).decode("ascii", "replace").strip()
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
                raise CheckpointError(
                    f"{self.path}: cannot read {byteorder!r} ({e}); the file is truncated or corrupted"
                ) from None
            if order != "little":
                raise CheckpointError(
                    f"{self.path}: tensors are stored {order!r}-endian; only little-endian is supported"
                )
        return prefix

    def _read_state_dict(self) -> Dict[str, _TensorRef]:
        where = f"{self.path}: {self._prefix}data.pkl"
        try:
            data = self._read_member(self._prefix + "data.pkl", MAX_PICKLE_BYTES)  # checks the CRC
            check_pickle_shape(data, where)
            state = _StateDictUnpickler(data, where).load()
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise CheckpointError(
                f"{where}: cannot read the pickle ({e}); the file is truncated or corrupted"
            ) from None
        except Exception as e:  # malformed pickle: UnpicklingError, TypeError from a stand-in, ...
            raise CheckpointError(f"{where}: not a valid state-dict pickle ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: holds a {type(state).__name__}; expected a state dict {{name: tensor}}")
        for name, tensor in state.items():
            if not isinstance(name, str) or not isinstance(tensor, _TensorRef):
                raise CheckpointError(
                    f"{where}: entry {short_repr(name)} is a {type(tensor).__name__}; "
                    "expected a state dict mapping names to tensors"
                )
        return dict(state)

    def _read_member(self, member: str, limit: int) -> bytes:
        """A small zip member, refused before reading unless stored uncompressed (as torch.save writes
        them) and at most `limit` bytes: a compressed record could inflate to any size."""
        info = self._zip.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{self.path}: member {member!r} is compressed (method {info.compress_type}); "
                "torch.save stores every record uncompressed"
            )
        if info.file_size > limit or info.compress_size > limit:
            raise CheckpointError(
                f"{self.path}: member {member!r} holds {info.file_size} bytes, more than the {limit} it may have"
            )
        return self._zip.read(member)  # checks the CRC

    # _TensorFile ------------------------------------------------------------------------------------
    def names(self) -> List[str]:
        return list(self._tensors)

    def entry(self, name: str) -> _Entry:
        t = self._ref(name)
        return _Entry(t.storage.dtype, t.shape)

    def array(self, name: str, copy: bool = False) -> np.ndarray:
        t = self._ref(name)
        dtype = DTYPES[t.storage.dtype]
        count = math.prod(t.shape)
        if count == 0:
            return np.zeros(t.shape, dtype)
        contiguous = _c_strides(t.shape)
        if any(n > 1 and s != c for n, s, c in zip(t.shape, t.stride, contiguous)):
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has shape {t.shape} and strides {t.stride}; "
                f"only C-contiguous tensors (strides {contiguous}) are supported. "
                "Save .contiguous() tensors"
            )
        if t.offset + count > t.storage.numel:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} ({count} elements at offset {t.offset}) runs past "
                f"the end of its storage of {t.storage.numel} elements"
            )
        start = self._storage_offset(t.storage) + t.offset * dtype.itemsize
        if copy:
            return read_copy(self.path, start, dtype, t.shape)
        flat = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=start)
        return flat.reshape(t.shape)

    def close(self) -> None:
        """Nothing to do: the file was closed once mapped; arrays handed out keep the map alive."""

    # Internals --------------------------------------------------------------------------------------
    def _read_at(self, offset: int, n: int) -> bytes:
        """Bytes of the file read (not mapped): a zip header of a file truncated since it was opened is
        then a short read, not a SIGBUS."""
        return _read_at_path(self.path, offset, n)

    def _ref(self, name: str) -> _TensorRef:
        t = self._tensors.get(name)
        if t is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r} (the shard index says it is here)")
        return t

    def _storage_offset(self, storage: _Storage) -> int:
        """Absolute file offset of a storage's bytes, from the member's LOCAL header.

        The local header's extra field can differ from the central directory's (torch pads it to align
        the data), so the data start is local header offset + 30 + len(name) + len(extra) as stored there.
        """
        if storage.key in self._offsets:
            return self._offsets[storage.key]
        member = f"{self._prefix}data/{storage.key}"
        try:
            info = self._zip.getinfo(member)
        except KeyError:
            raise CheckpointError(f"{self.path}: storage {storage.key!r} has no zip member {member!r}") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{self.path}: member {member!r} is compressed (method {info.compress_type}); "
                "torch.save stores tensor data uncompressed and gptj_ref maps it directly"
            )
        nbytes = storage.numel * DTYPES[storage.dtype].itemsize
        if info.file_size != nbytes:
            raise CheckpointError(
                f"{self.path}: member {member!r} holds {info.file_size} bytes but storage "
                f"{storage.dtype}[{storage.numel}] needs {nbytes}"
            )
        header = self._read_at(info.header_offset, _LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size:
            raise CheckpointError(
                f"{self.path}: the local header of {member!r} lies past the end of the file; the file is truncated"
            )
        signature, *_, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        name_start = info.header_offset + _LOCAL_HEADER.size
        if signature != b"PK\x03\x04" or self._read_at(name_start, name_len) != member.encode():
            raise CheckpointError(
                f"{self.path}: no valid local zip header for {member!r} at byte "
                f"{info.header_offset}; the file is corrupted"
            )
        start = name_start + name_len + extra_len
        if start + nbytes > self._size:
            raise CheckpointError(
                f"{self.path}: the data of {member!r} ends at byte {start + nbytes} but the file "
                f"has {self._size} bytes; the file is truncated"
            )
        self._offsets[storage.key] = start
        return start


def _read_at_path(path: str, offset: int, n: int) -> bytes:
    with open_regular(path, CheckpointError) as f:
        f.seek(offset)
        return f.read(n)


def _c_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Element strides of a C-contiguous array of this shape."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))
