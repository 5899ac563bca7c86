"""Hostile files: every parser a user's file reaches refuses bad input with a GPTJError, in bounded time
and memory (SECURITY.md). One test per defect of the adversarial review, grouped by class, then
property-based fuzzing of each parser (a few hundred examples each, seconds in all; fuzz/fuzz_parsers.py
runs the same properties for as long as it is given)."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gptj_ref
from gptj_ref.checkpoint import MAX_PICKLE_HASHED, check_pickle_shape, open_checkpoint
from gptj_ref.config import GPTJConfig
from gptj_ref.errors import CheckpointError, ConfigError, GPTJError
from gptj_ref.layout import random_weights
from gptj_ref.limits import MAX_JSON_DEPTH, loads_bounded, short_repr
from gptj_ref.native import open_native, write_native
from gptj_ref.safetensors_file import SafetensorsFile, save_tensors
from gptj_ref.tokenizer import Tokenizer

CONFIG = GPTJConfig(
    vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, bos_token_id=299, eos_token_id=299
)


def safetensors_bytes(header, data=b"") -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def open_safetensors(tmp_path, blob: bytes) -> SafetensorsFile:
    path = tmp_path / "t.safetensors"
    path.write_bytes(blob)
    return SafetensorsFile(path)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck")
    CONFIG.to_json_file(path / "config.json")
    save_tensors(path / "model.safetensors", random_weights(CONFIG, seed=1))
    return path


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("q8") / "m.gptj"
    write_native(path, CONFIG, random_weights(CONFIG, seed=1).__getitem__, "q8", "")
    return path


def bin_dir(tmp_path, pickle_bytes: bytes, compress=zipfile.ZIP_STORED, extra=()) -> str:
    CONFIG.to_json_file(tmp_path / "config.json")
    with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pickle_bytes, compress_type=compress)
        for member, data in extra:
            z.writestr(zipfile.ZipInfo(member), data)
    return str(tmp_path)


def glob(module, name) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def shared_tuples(depth: int, width: int) -> bytes:
    """Pickle opcodes leaving one tuple on the stack: `width` references to the tuple below, `depth` levels
    (width**depth elements once expanded, from ~3 * width * depth bytes)."""
    out = b"K\x01\x940"  # 1, memoized, popped
    for i in range(depth):
        out += b"(" + (b"h" + bytes([i])) * width + b"t\x940"
    return out + b"h" + bytes([depth])


PID = b"(X\x07\x00\x00\x00storage" + glob("torch", "FloatStorage") + b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"


def tensor_pickle(offset: bytes = b"K\x00", size: bytes = b"K\x04\x85", pid: bytes = PID) -> bytes:
    """A state dict {"a": _rebuild_tensor_v2(pid, offset, size, (1,), False, None)} with pieces replaceable."""
    return (
        b"\x80\x02}X\x01\x00\x00\x00a"
        + glob("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + pid
        + offset
        + size
        + b"K\x01\x85\x89NtRs."
    )


# ---------------------------------------------------------------------------------------------------
# Pickles (defects 2, 8, 15): bounded nesting and hashing, BUILD only for a state dict's _metadata
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["persistent id", "storage offset", "dict key", "frozenset"])
def test_exponential_shared_tuples_are_refused_quickly(tmp_path, where):
    deep = shared_tuples(40, 2)  # 2**40 elements from ~300 bytes
    pickles = {
        "persistent id": b"\x80\x02" + deep + b"Q.",
        "storage offset": tensor_pickle(offset=deep),
        "dict key": b"\x80\x02}" + deep + b"K\x01s.",
        "frozenset": b"\x80\x04\x8f(" + deep + b"\x91.",
    }
    with pytest.raises(CheckpointError, match="nest deeper than 32 levels"):
        open_checkpoint(bin_dir(tmp_path, pickles[where]))


def test_wide_shared_keys_within_the_depth_limit_are_refused(tmp_path):
    wide = shared_tuples(20, 4)  # 4**20 elements to hash, 20 levels deep
    with pytest.raises(CheckpointError, match=f"more than {MAX_PICKLE_HASHED} elements"):
        open_checkpoint(bin_dir(tmp_path, b"\x80\x02}" + wide + b"K\x01s."))


def test_deeply_nested_tuples_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="nest deeper"):
        open_checkpoint(bin_dir(tmp_path, b"\x80\x02}K\x01" + b"\x85" * 100_000 + b"K\x01s."))


def test_a_real_state_dict_passes_the_shape_check():
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with zipfile.ZipFile(buffer) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    check_pickle_shape(data, "state dict")  # the _metadata BUILD and shared storage types included


def test_build_on_ordered_dict_cannot_set_attributes(tmp_path):
    pkl = b"\x80\x02" + glob("collections", "OrderedDict") + b")R}X\x05\x00\x00\x00itemsK\x01sb."
    with pytest.raises(CheckpointError, match="sets attributes of an OrderedDict other than the _metadata"):
        open_checkpoint(bin_dir(tmp_path, pkl))


def test_a_shape_of_10_to_the_1000_is_refused(tmp_path):
    big = pickle.dumps(10**1000, protocol=2)[2:-1]
    with pytest.raises(CheckpointError, match=r"tensor size must be a tuple of ints in \[0, 2\*\*63\)"):
        open_checkpoint(bin_dir(tmp_path, tensor_pickle(size=big + b"\x85"), extra=[("archive/data/0", b"\0" * 16)]))


def test_error_messages_never_repr_untrusted_objects_unbounded():
    nested = ((),)
    for _ in range(40):
        nested = (nested, nested)
    assert len(short_repr(nested)) < 200
    assert len(short_repr("x" * 10**6)) < 100


# ---------------------------------------------------------------------------------------------------
# Zip records (defect 3): compressed or oversized records are refused before reading
# ---------------------------------------------------------------------------------------------------


def test_a_compressed_pickle_is_refused_before_inflating(tmp_path):
    pkl = b"\x80\x02X" + struct.pack("<I", 50 << 20) + b"\0" * (50 << 20) + b"."  # 50 MB of zeros, 50 KB deflated
    with pytest.raises(CheckpointError, match="'archive/data.pkl' is compressed"):
        open_checkpoint(bin_dir(tmp_path, pkl, compress=zipfile.ZIP_DEFLATED))


def test_an_oversized_byteorder_record_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="'archive/byteorder' holds 1000000 bytes, more than the 16"):
        open_checkpoint(bin_dir(tmp_path, b"\x80\x02}.", extra=[("archive/byteorder", b"l" * 10**6)]))


# ---------------------------------------------------------------------------------------------------
# safetensors headers (defect 9): bounded JSON, Python-int shapes, typed fields
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, message",
    [
        (b"[" * 100_000 + b"]" * 100_000, f"nesting deeper than {MAX_JSON_DEPTH} levels"),
        (b'{"a": ' + b"9" * 5000 + b"}", "a number has more than 20 digits"),
        ({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, r"unknown dtype \['F32'\]"),
        ({"a": {"dtype": "F32", "shape": [2**70], "data_offsets": [0, 4]}}, "more than 20 digits"),
        ({"a": {"dtype": "F32", "shape": [2**63], "data_offsets": [0, 4]}}, r"integers in \[0, 2\*\*63\)"),
        ({"a": {"dtype": "F32", "shape": [4, 2**62 + 1], "data_offsets": [0, 16]}}, "needs 73786976294838206480 bytes"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}}, r"data_offsets must be \[begin, end\]"),
        (b'{"a": NaN}', "NaN is not valid JSON"),
    ],
)
def test_bad_safetensors_headers_are_checkpoint_errors(tmp_path, header, message):
    with pytest.raises(CheckpointError, match=message):
        open_safetensors(tmp_path, safetensors_bytes(header, b"\0" * 16))


# ---------------------------------------------------------------------------------------------------
# Sizes (defect 4) and non-finite weights (defect 10)
# ---------------------------------------------------------------------------------------------------


def rewrite_config(src, dst, **changes):
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    config = json.loads(header["__metadata__"]["config"])
    config.update(changes)
    header["__metadata__"]["config"] = json.dumps(config)
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % 64)
    dst.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    return dst


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_positions=10**9), "n_positions = 1000000000 is beyond gptj_ref's limit"),
        (dict(n_layer=10**6), "n_layer = 1000000 is beyond gptj_ref's limit"),
        (dict(n_layer=1000), "the file holds 39 tensors but a q8 file of its config \\(n_layer 1000\\) has 16007"),
    ],
)
def test_config_sizes_are_checked_before_allocating(tmp_path, q8_file, changes, message):
    with pytest.raises(CheckpointError, match=message):
        open_native(rewrite_config(q8_file, tmp_path / "bad.gptj", **changes))


def test_config_limits():
    with pytest.raises(ConfigError, match="beyond gptj_ref's limit"):
        GPTJConfig(n_layer=5000)
    GPTJConfig(n_positions=1 << 17)  # the largest context allowed


def patch_float(path, name, value):
    entry = SafetensorsFile(path).entries[name]
    with open(path, "r+b") as f:
        f.seek(entry.offset)
        f.write(struct.pack("<f", value))


@pytest.mark.parametrize("name", ["transformer.ln_f.weight", "transformer.h.1.mlp.fc_out.bias"])
def test_non_finite_small_tensors_are_refused_at_load(tmp_path, q8_file, name):
    path = tmp_path / "nan.gptj"
    path.write_bytes(q8_file.read_bytes())
    patch_float(path, name, float("nan"))
    with pytest.raises(CheckpointError, match=f"'{name}' holds nan at \\[0\\]; gptj_ref stores only finite weights"):
        open_native(path)


def test_non_finite_checkpoint_biases_are_refused_at_load(tmp_path, checkpoint_dir):
    import shutil

    shutil.copytree(checkpoint_dir, tmp_path / "ck")
    patch_float(tmp_path / "ck" / "model.safetensors", "transformer.h.0.ln_1.bias", float("inf"))
    with open_checkpoint(tmp_path / "ck") as ckpt:
        with pytest.raises(CheckpointError, match="'transformer.h.0.ln_1.bias' holds inf"):
            ckpt.load_weights()
    for backend in ("cpp", "reference"):  # and the path gptj_ref.load takes for a checkpoint directory
        with pytest.raises(CheckpointError, match="'transformer.h.0.ln_1.bias' holds inf"):
            gptj_ref.load(tmp_path / "ck", backend=backend)


# ---------------------------------------------------------------------------------------------------
# Files in a model directory (defect 13): regular files only, never blocking
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "fifo"])
@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_only_regular_files_are_opened(tmp_path, checkpoint_dir, kind, name):
    import shutil

    from gptj_ref import load

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint_dir, ck)
    (ck / name).unlink(missing_ok=True)
    os.mkdir(ck / name) if kind == "directory" else os.mkfifo(ck / name)
    expected = ConfigError if name == "config.json" else CheckpointError
    with pytest.raises(expected, match=f"{name}: is a {'directory' if kind == 'directory' else 'FIFO'}"):
        load(ck, backend="reference")


# ---------------------------------------------------------------------------------------------------
# Fuzzing: every parser a user's file reaches, on random and mutated inputs
# ---------------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def only_gptj_errors(fn, *args):
    """Run a parser; a GPTJError is a clean refusal, anything else fails the test."""
    try:
        fn(*args)
    except GPTJError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
tensor_specs = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "BOOL", "X", 1]) | json_values,
        "shape": st.lists(st.integers(-1, 2**64), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-1, 2**64), min_size=0, max_size=3) | json_values,
    }
)


@FUZZ
@given(
    header=st.dictionaries(st.text(max_size=10), tensor_specs | json_values, max_size=4), data=st.binary(max_size=64)
)
def test_fuzz_safetensors_headers(tmp_path_factory, header, data):
    path = tmp_path_factory.mktemp("fz") / "t.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    only_gptj_errors(SafetensorsFile, path)


def mutations(seed: bytes):
    """Byte strings derived from a valid file: bytes flipped, spans cut, duplicated or overwritten."""
    return st.lists(
        st.tuples(st.integers(0, max(len(seed) - 1, 0)), st.integers(0, 255), st.sampled_from("xdcl")),
        min_size=1,
        max_size=6,
    ).map(lambda edits: _apply(seed, edits))


def _apply(seed: bytes, edits) -> bytes:
    out = bytearray(seed)
    for pos, value, kind in edits:
        pos = min(pos, max(len(out) - 1, 0))
        if kind == "x" and out:
            out[pos] = value
        elif kind == "d":
            del out[pos : pos + value]
        elif kind == "c":
            out[pos:pos] = out[pos : pos + value]
        else:
            out = out[:pos]
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_fuzz_native_files(tmp_path_factory, q8_file, data):
    raw = q8_file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    # Mutate the header region (where parsing happens) far more often than the data.
    blob = data.draw(mutations(raw[: 8 + n + 64])) + raw[8 + n + 64 :]
    path = tmp_path_factory.mktemp("fz") / "m.gptj"
    path.write_bytes(blob)
    only_gptj_errors(open_native, path)


@pytest.fixture(scope="module")
def real_pickle():
    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in random_weights(CONFIG, seed=2).items()}, buffer)
    return buffer.getvalue()


@FUZZ
@given(data=st.data())
def test_fuzz_torch_zip_and_pickle(tmp_path_factory, real_pickle, data):
    with zipfile.ZipFile(io.BytesIO(real_pickle)) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pkl = z.read(name)
    target = data.draw(st.sampled_from(["pickle", "archive"]))
    d = tmp_path_factory.mktemp("fz")
    CONFIG.to_json_file(d / "config.json")
    if target == "pickle":
        mutated = data.draw(mutations(pkl))
        with zipfile.ZipFile(io.BytesIO(real_pickle)) as src, zipfile.ZipFile(d / "pytorch_model.bin", "w") as dst:
            for info in src.infolist():
                dst.writestr(info, mutated if info.filename == name else src.read(info))
    else:
        (d / "pytorch_model.bin").write_bytes(data.draw(mutations(real_pickle)))

    def load():
        with open_checkpoint(d) as ckpt:
            ckpt.load_weights()

    only_gptj_errors(load)


@FUZZ
@given(
    config=st.dictionaries(
        st.sampled_from(
            [
                "vocab_size",
                "n_positions",
                "n_embd",
                "n_layer",
                "n_head",
                "rotary_dim",
                "n_inner",
                "layer_norm_epsilon",
                "bos_token_id",
                "eos_token_id",
                "model_type",
                "activation_function",
            ]
        ),
        json_values | st.integers(-5, 2**20),
        max_size=8,
    )
)
def test_fuzz_config_json(tmp_path_factory, config):
    path = tmp_path_factory.mktemp("fz") / "config.json"
    path.write_text(json.dumps(config))
    only_gptj_errors(GPTJConfig.from_json_file, path)


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_fuzz_bounded_json(text):
    try:
        loads_bounded(text)
    except ValueError:
        pass


@FUZZ
@given(
    vocab=st.dictionaries(st.text(max_size=4), st.integers(-1, 2**25) | json_values, max_size=6),
    merges=st.text(max_size=60),
)
def test_fuzz_tokenizer_files(tmp_path_factory, vocab, merges):
    d = tmp_path_factory.mktemp("fz")
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text(merges)
    only_gptj_errors(Tokenizer.from_vocab_and_merges, str(d / "vocab.json"), str(d / "merges.txt"))
    only_gptj_errors(Tokenizer.from_json, json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}}))


def test_load_of_a_valid_fixture_still_works(q8_file, checkpoint_dir):
    """The bounds refuse nothing a real file holds."""
    with open_native(q8_file) as native:
        assert native.config == CONFIG
    with open_checkpoint(checkpoint_dir) as ckpt:
        assert np.isfinite(ckpt.load_weights()["lm_head.weight"]).all()


def test_found_by_fuzzing_an_empty_eos_list(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**CONFIG.to_hf(), "eos_token_id": []}))
    with pytest.raises(ConfigError, match="eos_token_id is an empty list"):
        GPTJConfig.from_json_file(tmp_path / "config.json")


def test_found_by_fuzzing_a_merge_of_tokens_missing_from_the_vocabulary(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"!": 0, "a": 1, "b": 4}))
    (tmp_path / "merges.txt").write_text("a b\n")
    with pytest.raises(CheckpointError, match="the merge 'a' \\+ 'b' uses or makes a token that is not in"):
        Tokenizer.from_vocab_and_merges(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))


def test_found_by_fuzzing_an_unknown_zip_version(tmp_path, real_pickle):
    data = bytearray(real_pickle)
    end = data.rindex(b"PK\x05\x06")  # the central directory's first entry precedes it
    first = data.index(b"PK\x01\x02")
    data[first + 6] = 173  # "version needed to extract" 17.3
    CONFIG.to_json_file(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(bytes(data))
    assert end > first
    with pytest.raises(CheckpointError, match="corrupted zip archive"):
        open_checkpoint(tmp_path)
