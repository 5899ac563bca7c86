"""gptj_ref.checkpoint: Hugging Face GPT-J checkpoints read without torch, checked against torch itself.

Every checkpoint here is written by transformers (`save_pretrained`) or by `torch.save`, the way the
published files were made, and every tensor read back must equal what torch holds, bit for bit.
"""

from __future__ import annotations

import copy
import json
import mmap
import os
import pickle
import re
import shutil
import struct
import zipfile

import numpy as np
import pytest
import torch

from gptj_ref.checkpoint import open_checkpoint
from gptj_ref.config import GPTJConfig
from gptj_ref.errors import CheckpointError, ConfigError
from gptj_ref.layout import weight_shapes
from gptj_ref.safetensors_file import SafetensorsFile
from helpers import CONFIGS, make_hf_model

GEOMETRY = CONFIGS["rot-lt-head"]
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


# ---------------------------------------------------------------------------------------------------
# Writing checkpoints the way the published ones were written
# ---------------------------------------------------------------------------------------------------


def with_legacy_buffers(state_dict, n_layer, n_positions, dtype):
    """The state dict plus the causal-mask buffers old GPT-J files carry (bool tril and -1e9)."""
    state = dict(state_dict)
    for i in range(n_layer):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n_positions, n_positions, dtype=torch.bool)).view(
            1, 1, n_positions, n_positions
        )
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e9, dtype=dtype)
    return state


def save_bin(directory, state_dict, hf_config, n_shards=1):
    """torch.save the state dict as pytorch_model.bin, or over n_shards files plus pytorch_model.bin.index.json."""
    os.makedirs(directory, exist_ok=True)
    hf_config.to_json_file(os.path.join(directory, "config.json"))
    if n_shards == 1:
        torch.save(state_dict, os.path.join(directory, "pytorch_model.bin"))
        return
    names = list(state_dict)
    weight_map = {}
    for k, part in enumerate(np.array_split(np.arange(len(names)), n_shards)):
        shard = f"pytorch_model-{k + 1:05d}-of-{n_shards:05d}.bin"
        torch.save({names[j]: state_dict[names[j]] for j in part}, os.path.join(directory, shard))
        weight_map.update({names[j]: shard for j in part})
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


def save_bin_dir(directory, state_dict, hf_config):
    """A directory whose pytorch_model.bin holds an arbitrary state dict (for format-level tests)."""
    save_bin(directory, state_dict, hf_config)
    return directory


def expected_arrays(model):
    """What torch holds, as float32 NumPy arrays."""
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def model():
    return make_hf_model(seed=11, **GEOMETRY)


@pytest.fixture(scope="module")
def checkpoints(model, tmp_path_factory):
    """format label -> (directory, expected format, stored dtype, {name: float32 array as torch holds it})."""
    root = tmp_path_factory.mktemp("checkpoints")
    made = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        m = copy.deepcopy(model).to(dtype)
        expected = expected_arrays(m)
        suffix = "" if dtype == torch.float32 else "-" + DTYPE_NAMES[dtype].lower()

        path = root / f"safetensors{suffix}"
        m.save_pretrained(path)
        made[path.name] = (path, "safetensors", dtype, expected)

        path = root / f"bin{suffix}"
        save_bin(path, with_legacy_buffers(m.state_dict(), m.config.n_layer, m.config.n_positions, dtype), m.config)
        made[path.name] = (path, "bin", dtype, expected)

    path = root / "safetensors-sharded"
    model.save_pretrained(path, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").exists() and not (path / "model.safetensors").exists()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    made[path.name] = (path, "safetensors-sharded", torch.float32, expected_arrays(model))

    path = root / "bin-sharded"
    state = with_legacy_buffers(model.state_dict(), model.config.n_layer, model.config.n_positions, torch.float32)
    save_bin(path, state, model.config, n_shards=3)
    made[path.name] = (path, "bin-sharded", torch.float32, expected_arrays(model))
    return made


def copy_checkpoint(checkpoints, label, tmp_path):
    """A private copy of one fixture checkpoint, safe to damage."""
    return shutil.copytree(checkpoints[label][0], tmp_path / label)


def data_ranges(path, names):
    """(offset, nbytes) of each named tensor of a safetensors file, from the header."""
    with SafetensorsFile(path) as f:
        return {n: (f.entries[n].offset, f.entries[n].nbytes) for n in names}


# ---------------------------------------------------------------------------------------------------
# Every format reads like torch
# ---------------------------------------------------------------------------------------------------

LABELS = [
    "safetensors",
    "safetensors-f16",
    "safetensors-bf16",
    "safetensors-sharded",
    "bin",
    "bin-f16",
    "bin-bf16",
    "bin-sharded",
]


@pytest.mark.parametrize("label", LABELS)
def test_every_format_reads_the_tensors_torch_holds(checkpoints, label):
    path, fmt, dtype, expected = checkpoints[label]
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == fmt and ckpt.path == str(path)
        assert ckpt.config == GPTJConfig.from_json_file(path / "config.json")
        assert sorted(ckpt.names()) == sorted(expected)  # legacy buffers are not listed
        weights = ckpt.load_weights()
        assert list(weights) == list(weight_shapes(ckpt.config))  # in model order
        for name, want in expected.items():
            got = weights[name]
            assert got.dtype == np.float32 and got.shape == want.shape, name
            assert np.array_equal(got, want), name
            assert ckpt.dtype(name) == DTYPE_NAMES[dtype]
            assert ckpt.shape(name) == want.shape
            assert ckpt.nbytes(name) == want.size * torch.tensor([], dtype=dtype).element_size()


def test_legacy_buffers_are_skipped_and_not_readable(checkpoints):
    with open_checkpoint(checkpoints["bin"][0]) as ckpt:
        assert not [n for n in ckpt.names() if n.endswith((".attn.bias", ".attn.masked_bias"))]
        with pytest.raises(CheckpointError, match=r"no tensor named 'transformer\.h\.0\.attn\.bias'"):
            ckpt.read("transformer.h.0.attn.bias")


def test_safetensors_is_preferred_when_both_formats_exist(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "safetensors", tmp_path)
    shutil.copy(checkpoints["bin"][0] / "pytorch_model.bin", path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.format == "safetensors"


# ---------------------------------------------------------------------------------------------------
# Laziness: tensors are memory-mapped views, read one at a time
# ---------------------------------------------------------------------------------------------------


def mapped_file_of(array):
    """The mmap an array's memory comes from, or None if it owns (or copied) its data."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


@pytest.mark.parametrize("label", ["safetensors", "bin"])
def test_fp32_tensors_are_read_only_views_of_the_mapped_file(checkpoints, label):
    with open_checkpoint(checkpoints[label][0]) as ckpt:
        w = ckpt.read("transformer.h.1.mlp.fc_in.weight")
    assert not w.flags.owndata and not w.flags.writeable
    assert isinstance(mapped_file_of(w), mmap.mmap)
    assert np.array_equal(w, checkpoints[label][3]["transformer.h.1.mlp.fc_in.weight"])  # valid after close()


def test_fp16_and_bf16_tensors_are_converted_to_fp32(checkpoints):
    for label in ("safetensors-f16", "bin-bf16"):
        with open_checkpoint(checkpoints[label][0]) as ckpt:
            w = ckpt.read("lm_head.weight")
        assert w.dtype == np.float32 and w.flags.writeable and mapped_file_of(w) is None  # a private copy


TARGET, OTHER = "transformer.h.0.attn.q_proj.weight", "transformer.h.1.attn.v_proj.weight"


def test_safetensors_reading_one_tensor_ignores_the_bytes_of_the_others(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "safetensors", tmp_path)
    weights = path / "model.safetensors"
    expected = checkpoints["safetensors"][3]
    ranges = data_ranges(weights, [n for n in expected if n != TARGET])
    with open(weights, "r+b") as f:  # every other tensor becomes NaN (0xFF bytes)
        for offset, nbytes in ranges.values():
            f.seek(offset)
            f.write(b"\xff" * nbytes)
    with open_checkpoint(path) as ckpt:
        assert np.array_equal(ckpt.read(TARGET), expected[TARGET])
        assert np.isnan(ckpt.read(OTHER)).all()  # the damage is real


def test_bin_reading_one_tensor_ignores_the_bytes_of_the_others(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "bin", tmp_path)
    weights = path / "pytorch_model.bin"
    expected = checkpoints["bin"][3]
    target_bytes = expected[TARGET].tobytes()
    blob = weights.read_bytes()
    with zipfile.ZipFile(weights) as z:  # locate each storage's bytes independently of the reader
        members = [z.read(n) for n in z.namelist() if "/data/" in n]
    assert target_bytes in members
    with open(weights, "r+b") as f:
        for data in members:
            if data != target_bytes and len(data) > 8:  # the legacy scalar / bool buffers may repeat; skip tiny ones
                f.seek(blob.index(data))
                f.write(b"\xff" * len(data))
    with open_checkpoint(path) as ckpt:
        assert np.array_equal(ckpt.read(TARGET), expected[TARGET])
        assert np.isnan(ckpt.read(OTHER)).all()


# ---------------------------------------------------------------------------------------------------
# torch.save details: views, shared storages, parameters, strides
# ---------------------------------------------------------------------------------------------------


def test_views_into_shared_storages_read_with_their_offsets(model, tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "whole": base,
        "row": base[2],
        "tail": base.view(-1)[7:19].view(3, 4),
        "param": torch.nn.Parameter(torch.full((5,), 2.5)),
        "empty": torch.zeros(0, 3),
    }
    with open_checkpoint(save_bin_dir(tmp_path, state, model.config)) as ckpt:
        assert ckpt.names() == list(state)
        for name, t in state.items():
            assert ckpt.shape(name) == tuple(t.shape)
            assert np.array_equal(ckpt.read(name), t.detach().numpy()), name
        assert mapped_file_of(ckpt.read("row")) is mapped_file_of(ckpt.read("whole"))


def test_non_contiguous_tensors_are_refused(model, tmp_path):
    state = {"t": torch.arange(12, dtype=torch.float32).reshape(3, 4).t()}
    with open_checkpoint(save_bin_dir(tmp_path, state, model.config)) as ckpt:
        with pytest.raises(CheckpointError, match=r"'t' has shape \(4, 3\) and strides \(1, 4\); only C-contiguous"):
            ckpt.read("t")


def test_non_float_tensors_are_listed_but_not_read(model, tmp_path):
    state = {"ids": torch.arange(4)}
    with open_checkpoint(save_bin_dir(tmp_path, state, model.config)) as ckpt:
        assert ckpt.dtype("ids") == "I64"
        with pytest.raises(CheckpointError, match=r"'ids' is stored as I64; expected a float tensor"):
            ckpt.read("ids")


# ---------------------------------------------------------------------------------------------------
# Checkpoints that disagree with config.json
# ---------------------------------------------------------------------------------------------------


def test_shapes_that_disagree_with_config_json_are_listed(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "safetensors", tmp_path)
    hf = json.loads((path / "config.json").read_text())
    hf["vocab_size"] = 100
    (path / "config.json").write_text(json.dumps(hf))
    with open_checkpoint(path) as ckpt:
        with pytest.raises(CheckpointError) as e:
            ckpt.load_weights()
    message = str(e.value)
    assert "transformer.wte.weight: checkpoint has shape (99, 32), config.json implies (100, 32)" in message
    assert "lm_head.bias: checkpoint has shape (99,), config.json implies (100,)" in message
    assert "missing" not in message


def test_missing_unexpected_and_non_float_tensors_are_reported_together(model, tmp_path):
    state = dict(model.state_dict())
    del state["lm_head.bias"], state["transformer.h.1.ln_1.weight"]
    state["transformer.h.0.attn.qkv_proj.weight"] = torch.zeros(96, 32)
    state["transformer.ln_f.bias"] = torch.zeros(32, dtype=torch.int32)
    with open_checkpoint(save_bin_dir(tmp_path, state, model.config)) as ckpt:
        with pytest.raises(CheckpointError, match=r"does not match its config\.json") as e:
            ckpt.check()
    message = str(e.value)
    assert re.search(r"missing tensors \(2\):\n  transformer\.h\.1\.ln_1\.weight\n  lm_head\.bias", message)
    assert "unexpected tensors (1):\n  transformer.h.0.attn.qkv_proj.weight" in message
    assert "transformer.ln_f.bias: checkpoint has dtype I32, expected one of F32, F16, BF16" in message


# ---------------------------------------------------------------------------------------------------
# Directories and shard indexes
# ---------------------------------------------------------------------------------------------------


def test_a_directory_without_weights_says_what_it_found_and_expects(model, tmp_path):
    model.config.to_json_file(tmp_path / "config.json")
    (tmp_path / "tf_model.h5").write_bytes(b"")
    with pytest.raises(
        CheckpointError,
        match=r"no weights found\. Expected one of model\.safetensors, "
        r"model\.safetensors\.index\.json, pytorch_model\.bin, pytorch_model\.bin\.index\.json; "
        r"the directory holds config\.json, tf_model\.h5",
    ):
        open_checkpoint(tmp_path)


def test_a_file_or_missing_path_is_not_a_checkpoint(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        open_checkpoint(checkpoints["bin"][0] / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="is not a directory"):
        open_checkpoint(tmp_path / "nothing-here")


def test_missing_or_bad_config_json_is_a_config_error(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "safetensors", tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json"):
        open_checkpoint(path)
    (path / "config.json").write_text('{"model_type": "gptj", "n_embd": 30, "n_head": 4}')
    with pytest.raises(ConfigError, match="must be divisible by n_head"):
        open_checkpoint(path)


@pytest.mark.parametrize("label", ["safetensors-sharded", "bin-sharded"])
def test_a_shard_index_naming_a_missing_file_is_refused(checkpoints, tmp_path, label):
    path = copy_checkpoint(checkpoints, label, tmp_path)
    shard = sorted(path.glob("*-00002-of-*"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"shard files that do not exist: {re.escape(shard.name)}"):
        open_checkpoint(path)


def test_a_shard_index_must_name_files_in_the_directory(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "safetensors-sharded", tmp_path)
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["lm_head.bias"] = "../elsewhere.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"shard '\.\./elsewhere\.safetensors' is not a plain file name"):
        open_checkpoint(path)
    index_path.write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match=r'expected a JSON object with "weight_map"'):
        open_checkpoint(path)


def test_a_shard_that_lacks_a_tensor_its_index_promises(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "bin-sharded", tmp_path)
    index_path = path / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["lm_head.bias"] = first
    index_path.write_text(json.dumps(index))
    with open_checkpoint(path) as ckpt:
        with pytest.raises(
            CheckpointError,
            match=rf"{re.escape(first)}: no tensor named 'lm_head\.bias' "
            r"\(the shard index says it is here\)",
        ):
            ckpt.load_weights()


# ---------------------------------------------------------------------------------------------------
# Damaged safetensors files
# ---------------------------------------------------------------------------------------------------


def write_raw_safetensors(path, header, data=b""):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


@pytest.fixture()
def safetensors_copy(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "safetensors", tmp_path)
    return path, path / "model.safetensors"


def test_truncated_safetensors(safetensors_copy):
    path, weights = safetensors_copy
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(
        CheckpointError,
        match=r"data ends at byte \d+ but the file holds only \d+ bytes of data; "
        "the file is truncated",
    ):
        open_checkpoint(path)
    weights.write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="too short for a safetensors file"):
        open_checkpoint(path)


def test_safetensors_with_corrupted_header_json(safetensors_copy):
    path, weights = safetensors_copy
    blob = bytearray(weights.read_bytes())
    blob[8:12] = b"\x00}{]"
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="the safetensors header is not valid JSON"):
        open_checkpoint(path)


def test_safetensors_header_length_beyond_the_file(safetensors_copy):
    path, weights = safetensors_copy
    blob = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", len(blob)) + blob[8:])
    with pytest.raises(
        CheckpointError, match=rf"header length {len(blob)} does not fit in the file of {len(blob)} bytes"
    ):
        open_checkpoint(path)


@pytest.mark.parametrize(
    "entry, data_bytes, message",
    [
        pytest.param(
            {"dtype": "F32", "shape": [99], "data_offsets": [400, 796]},
            400,
            r"'lm_head\.bias': data ends at byte 796 but the file holds only 400",
            id="offsets outside the file",
        ),
        pytest.param(
            {"dtype": "F8_E4M3", "shape": [99], "data_offsets": [0, 99]},
            99,
            r"'lm_head\.bias': unknown dtype 'F8_E4M3'; supported: F64, F32",
            id="unknown dtype",
        ),
    ],
)
def test_a_damaged_safetensors_entry_is_refused(safetensors_copy, entry, data_bytes, message):
    path, weights = safetensors_copy
    write_raw_safetensors(weights, {"lm_head.bias": entry}, b"\0" * data_bytes)
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(path)


# ---------------------------------------------------------------------------------------------------
# Damaged, legacy and unsupported .bin files
# ---------------------------------------------------------------------------------------------------


@pytest.fixture()
def bin_copy(checkpoints, tmp_path):
    path = copy_checkpoint(checkpoints, "bin", tmp_path)
    return path, path / "pytorch_model.bin"


def test_truncated_bin(bin_copy):
    path, weights = bin_copy
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        CheckpointError,
        match="starts like a zip archive but has no valid zip directory at its end "
        r"\(\d+ bytes\); the file is truncated or corrupted",
    ):
        open_checkpoint(path)


def test_bin_with_a_corrupted_pickle(bin_copy):
    path, weights = bin_copy
    blob = bytearray(weights.read_bytes())
    start = blob.index(b"collections\nOrderedDict")  # inside data.pkl; its CRC no longer matches
    blob[start : start + 11] = b"xollections"
    weights.write_bytes(bytes(blob))
    with pytest.raises(
        CheckpointError,
        match=r"data\.pkl: cannot read the pickle \(Bad CRC-32.*\); "
        "the file is truncated or corrupted",
    ):
        open_checkpoint(path)


def test_bin_with_a_local_header_out_of_place(bin_copy):
    path, weights = bin_copy
    blob = bytearray(weights.read_bytes())
    with zipfile.ZipFile(weights) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    blob[info.header_offset : info.header_offset + 4] = b"XXXX"
    weights.write_bytes(bytes(blob))
    with open_checkpoint(path) as ckpt:  # the index is intact; the damage shows on access
        with pytest.raises(CheckpointError, match=r"no valid local zip header for '.*/data/\w+' at byte \d+"):
            ckpt.load_weights()


def test_bin_with_compressed_tensor_data(bin_copy):
    path, weights = bin_copy
    with zipfile.ZipFile(weights) as src:
        members = [(i.filename, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(weights, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name, data in members:
            dst.writestr(name, data)
    # Refused at open, before the (compressed) pickle is inflated: a compressed record could be a zip bomb.
    with pytest.raises(
        CheckpointError,
        match=r"member '.*' is compressed \(method 8\); "
        "torch.save stores every record uncompressed",
    ):
        open_checkpoint(path)


def test_legacy_pre_1_6_bin_asks_to_resave(model, tmp_path):
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"legacy \(pre-1\.6\) torch\.save format.*re-save it with a newer torch"):
        open_checkpoint(tmp_path)


def test_a_bin_that_is_not_torch_at_all(model, tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"<html>not a model</html>")
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"neither a torch\.save zip archive nor a legacy torch file"):
        open_checkpoint(tmp_path)


def test_a_complex_storage_is_an_unknown_dtype(model, tmp_path):
    state = {"lm_head.bias": torch.zeros(99, dtype=torch.complex64)}
    with pytest.raises(
        CheckpointError,
        match=r"tensors stored as torch\.ComplexFloatStorage are not supported; "
        "expected float tensors",
    ):
        open_checkpoint(save_bin_dir(tmp_path, state, model.config))


# The restricted unpickler ---------------------------------------------------------------------------


def write_torch_zip(path, pickle_bytes):
    """A zip laid out like torch.save's, around an arbitrary data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def protocol0_call(module, name, argument):
    """A pickle that calls module.name(argument) when loaded: GLOBAL, MARK, STRING, TUPLE, REDUCE."""
    return f"c{module}\n{name}\n(S{argument!r}\ntR.".encode()


class _RunsOnLoad:
    """Pickles (protocol 4, STACK_GLOBAL) to a call of builtins.exec, nested inside an OrderedDict."""

    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


def malicious_pickles(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": protocol0_call("os", "system", f"touch {marker}"),
        "posix.system": protocol0_call("posix", "system", f"touch {marker}"),
        "builtins.eval": protocol0_call("builtins", "eval", touch),
        "builtins.exec": pickle.dumps(__import__("collections").OrderedDict(w=_RunsOnLoad(touch)), protocol=4),
        "torch.load": protocol0_call("torch", "load", str(marker)),
    }


@pytest.mark.parametrize("refused", ["os.system", "posix.system", "builtins.eval", "builtins.exec", "torch.load"])
def test_a_pickle_naming_any_other_global_is_refused_without_running_it(model, tmp_path, refused):
    marker = tmp_path / "pwned"
    write_torch_zip(tmp_path / "pytorch_model.bin", malicious_pickles(marker)[refused])
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(
        CheckpointError,
        match=rf"the pickle refers to {re.escape(refused)}, which a state dict "
        "does not need; refused without running it",
    ):
        open_checkpoint(tmp_path)
    assert not marker.exists()


def test_the_malicious_pickle_would_have_run_under_plain_pickle(tmp_path):
    """Control for the test above: the same bytes do create the marker when unpickled naively."""
    marker = tmp_path / "pwned"
    pickle.loads(malicious_pickles(marker)["builtins.exec"])
    assert marker.exists()


def test_a_pickle_cannot_rewrite_a_validated_tensor(model, tmp_path):
    # _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 4), 0, (4,), (1,), False, None), then
    # BUILD {'offset': -100}, which would bypass the argument checks if it were allowed
    tensor = (
        b"ctorch._utils\n_rebuild_tensor_v2\n((S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI4\ntQ"
        b"I0\n(I4\nt(I1\ntI00\nNtR"
    )
    write_torch_zip(tmp_path / "pytorch_model.bin", tensor + b"(dS'offset'\nI-100\nsb.")
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(
        CheckpointError,
        match=r"not a valid state-dict pickle \(UnpicklingError: the pickle tries "
        r"to set the state of a TensorRef\)",
    ):
        open_checkpoint(tmp_path)


def test_a_pickle_that_is_not_a_state_dict(model, tmp_path):
    write_torch_zip(tmp_path / "pytorch_model.bin", pickle.dumps([1, 2, 3], protocol=2))
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"holds a list; expected a state dict \{name: tensor\}"):
        open_checkpoint(tmp_path)


def test_a_persistent_id_that_is_not_a_storage(model, tmp_path):
    # MARK, STRING 'file', STRING '/etc/passwd', TUPLE, BINPERSID, STOP
    write_torch_zip(tmp_path / "pytorch_model.bin", b"(S'file'\nS'/etc/passwd'\ntQ.")
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(
        CheckpointError,
        match=r"unexpected persistent id \('file', '/etc/passwd'\); "
        r"expected \('storage', torch\.<Type>Storage",
    ):
        open_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Through the package API and the CLI
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory):
    """A safetensors checkpoint whose vocabulary covers the GPT-2 ids of "The dog" (464, 3290)."""
    model = make_hf_model(seed=5, vocab_size=4000, n_positions=64, n_embd=32, n_layer=1, n_head=4, rotary_dim=4)
    path = tmp_path_factory.mktemp("cli-ckpt")
    model.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def test_load_generates_from_a_safetensors_checkpoint(cli_checkpoint):
    import gptj_ref

    path, _ = cli_checkpoint
    text = gptj_ref.load(path, backend="reference").generate("The dog", max_new_tokens=4)
    assert isinstance(text, str)


def test_cli_info_reports_the_parameter_count(cli_checkpoint, capsys):
    from gptj_ref import cli

    path, n_params = cli_checkpoint
    assert cli.main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {n_params:,}" in out
    assert "Hugging Face checkpoint, safetensors" in out


def test_a_pickle_cannot_modify_the_stand_in_functions(model, tmp_path):
    """GLOBAL _rebuild_tensor_v2, then BUILD with slot state {'__defaults__': ...}: with a plain function as
    stand-in this would rewrite its defaults in the running process without any error."""
    import gptj_ref.checkpoint as checkpoint_module

    payload = b"ctorch._utils\n_rebuild_tensor_v2\n(N(dS'__defaults__'\n(I01\nS'pwned'\nNtstb."
    write_torch_zip(tmp_path / "pytorch_model.bin", payload)
    model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="tries to set the state"):
        open_checkpoint(tmp_path)
    assert checkpoint_module._rebuild_tensor_v2.__defaults__ == (False, None, None)
