"""The native model file: round trips for q8 / f16 / f32, and every kind of bad file rejected on open."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from gptj_ref.config import GPTJ_6B, GPTJConfig
from gptj_ref.errors import CheckpointError, ConfigError, GPTJError
from gptj_ref.layout import random_weights, weight_shapes
from gptj_ref.native import (
    EMBEDDING,
    FORMAT_VERSION,
    NativeFile,
    is_native_file,
    native_size,
    native_specs,
    open_native,
    scale_name,
    write_native,
)
from gptj_ref.quant import QK, dequantize_blocks, is_quantized, quantize_blocks
from gptj_ref.safetensors_file import DTYPES, save_tensors, write_safetensors

CONFIG = GPTJConfig(
    vocab_size=101, n_positions=32, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, bos_token_id=100, eos_token_id=100
)
TOKENIZER = '{"model": "a stand-in tokenizer JSON string"}'


@pytest.fixture(scope="module")
def weights():
    return random_weights(CONFIG, seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    """dtype -> path of a native file of CONFIG."""
    directory = tmp_path_factory.mktemp("native")
    paths = {}
    for dtype in ("q8", "f16", "f32"):
        paths[dtype] = directory / f"model-{dtype}.gptj"
        write_native(paths[dtype], CONFIG, weights.__getitem__, dtype, TOKENIZER)
    return paths


# -------------------------------------------------------------------------------------------------
# Round trips
# -------------------------------------------------------------------------------------------------


def test_f32_round_trip_is_bit_identical(files, weights):
    with open_native(files["f32"]) as native:
        assert native.config == CONFIG and native.dtype == "f32" and native.tokenizer_json == TOKENIZER
        assert native.format_version == FORMAT_VERSION
        restored = native.dequantized_weights()
        assert list(restored) == list(weight_shapes(CONFIG))
        for name, w in weights.items():
            assert restored[name].dtype == np.float32
            np.testing.assert_array_equal(restored[name], w, err_msg=name)


def test_f16_round_trip_rounds_matrices_and_keeps_vectors(files, weights):
    with open_native(files["f16"]) as native:
        restored = native.dequantized_weights()
        for name, w in weights.items():
            stored = native.tensor(name)
            if w.ndim == 1:
                assert stored.dtype == np.float32
                np.testing.assert_array_equal(restored[name], w, err_msg=name)
            else:
                assert stored.dtype == np.float16
                np.testing.assert_array_equal(restored[name], w.astype(np.float16).astype(np.float32), err_msg=name)


def test_q8_round_trip_is_the_quantizer(files, weights):
    with open_native(files["q8"]) as native:
        restored = native.dequantized_weights()
        for name, w in weights.items():
            if is_quantized(name) or name == EMBEDDING:
                q, scales = quantize_blocks(w)
                np.testing.assert_array_equal(native.tensor(name), q, err_msg=name)
                np.testing.assert_array_equal(native.tensor(scale_name(name)), scales, err_msg=name)
                np.testing.assert_array_equal(restored[name], dequantize_blocks(q, scales), err_msg=name)
            else:
                np.testing.assert_array_equal(restored[name], w, err_msg=name)
        runtime = native.weights_for_runtime()
        assert runtime["lm_head.weight"].dtype == np.int8
        assert runtime["lm_head.weight_scale"].dtype == np.float16
        assert runtime["lm_head.weight_scale"].shape == (CONFIG.vocab_size, CONFIG.n_embd // QK)
        assert runtime["transformer.wte.weight"].dtype == np.int8  # q8 rows from format version 2 on
        assert runtime["transformer.wte.weight_scale"].shape == (CONFIG.vocab_size, CONFIG.n_embd // QK)
        assert runtime["transformer.h.1.ln_1.bias"].dtype == np.float32
        native.check()


@pytest.mark.parametrize("dtype", ["q8", "f16", "f32"])
def test_arrays_are_memory_mapped_read_only_and_aligned(files, dtype):
    with open_native(files[dtype]) as native:
        for name, array in native.weights_for_runtime().items():
            assert not array.flags.owndata and not array.flags.writeable, name
            assert array.ctypes.data % array.dtype.itemsize == 0, f"{name} is not naturally aligned"
        assert native.names() == [n for n, _, _ in native_specs(CONFIG, dtype)]


@pytest.mark.parametrize("dtype", ["q8", "f16", "f32"])
def test_any_safetensors_reader_reads_the_file(files, dtype):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    tensors = safetensors_numpy.load_file(str(files[dtype]))
    with open_native(files[dtype]) as native:
        assert set(tensors) == set(native.names())
        for name, array in tensors.items():
            np.testing.assert_array_equal(array, native.tensor(name))
    with safe_open(str(files[dtype]), framework="numpy") as f:
        metadata = f.metadata()
    assert metadata["format"] == "gptj_ref" and metadata["dtype"] == dtype and metadata["qk"] == "32"
    assert GPTJConfig.from_hf(json.loads(metadata["config"])) == CONFIG


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        GPTJ_6B,
        GPTJConfig(vocab_size=50257, n_embd=32, n_layer=1, n_head=1, rotary_dim=8, bos_token_id=0, eos_token_id=0),
    ],
)
@pytest.mark.parametrize("dtype", ["q8", "f16", "f32"])
def test_the_layout_aligns_every_tensor(config, dtype):
    offset = 0
    for name, st, shape in native_specs(config, dtype):
        assert offset % DTYPES[st].itemsize == 0, f"{name} ({st}) at offset {offset}"
        if config is GPTJ_6B:
            assert offset % 64 == 0, f"{name} at offset {offset} is not 64-byte aligned in the 6B file"
        offset += int(np.prod(shape)) * DTYPES[st].itemsize
    assert offset == native_size(config, dtype)


def test_6b_file_sizes():
    assert abs(native_size(GPTJ_6B, "q8") / 1e9 - 6.43) < 0.01  # int8 blocks, embedding included
    # format version 1 kept the embedding F32: 50400 x 4096 x (4 - 1 - 2/32) bytes = 0.61 GB more
    v1 = sum(int(np.prod(shape)) * DTYPES[st].itemsize for _, st, shape in native_specs(GPTJ_6B, "q8", version=1))
    assert abs(v1 / 1e9 - 7.03) < 0.01
    assert abs(native_size(GPTJ_6B, "f32") / 1e9 - 24.2) < 0.05
    assert abs(native_size(GPTJ_6B, "f16") / 1e9 - 12.1) < 0.05


def test_is_native_file(tmp_path, files, weights):
    assert all(is_native_file(p) for p in files.values())
    plain = tmp_path / "plain.safetensors"
    save_tensors(plain, {"a": np.zeros(3, np.float32)}, {"format": "pt"})
    (tmp_path / "junk.bin").write_bytes(b"\xff" * 100)
    (tmp_path / "empty").write_bytes(b"")
    for path in (plain, tmp_path / "junk.bin", tmp_path / "empty", tmp_path, tmp_path / "missing"):
        assert not is_native_file(path), path


def test_empty_tokenizer_is_allowed(tmp_path, weights):
    path = tmp_path / "m.gptj"
    write_native(path, CONFIG, weights.__getitem__, "f32", None)
    with open_native(path) as native:
        assert native.tokenizer_json == ""


# -------------------------------------------------------------------------------------------------
# Bad files: each is rejected on open with a CheckpointError that says what is wrong
# -------------------------------------------------------------------------------------------------


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def write_raw(path, header, data):
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % 64)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def rewritten(src, dst, mutate):
    header, data = read_header(src)
    data = mutate(header, data) or data
    write_raw(dst, header, data)
    return dst


def set_meta(key, value):
    def mutate(header, data):
        header["__metadata__"][key] = value

    return mutate


def set_config(**changes):
    def mutate(header, data):
        hf = json.loads(header["__metadata__"]["config"])
        hf.update(changes)
        header["__metadata__"]["config"] = json.dumps(hf)

    return mutate


def remove(name):
    def mutate(header, data):
        del header[name]

    return mutate


def set_entry(name, **changes):
    def mutate(header, data):
        header[name].update(changes)

    return mutate


def add_empty_tensor(header, data):
    header["transformer.h.0.attn.bias"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}


def truncate(header, data):
    return data[:-100]


def drop_metadata(header, data):
    del header["__metadata__"]


BAD_FILES = {
    "newer version": (
        set_meta("format_version", "3"),
        r"file format version 3 is newer than this gptj_ref supports \(2\); upgrade gptj_ref",
    ),
    "version zero": (set_meta("format_version", "0"), "version 0 does not exist"),
    "version not a number": (set_meta("format_version", "1.5"), "not a version number"),
    "wrong format marker": (set_meta("format", "ggml"), "not a gptj_ref native model file.*'ggml'"),
    "no metadata": (drop_metadata, "not a gptj_ref native model file"),
    "unknown dtype": (set_meta("dtype", "q3"), "dtype 'q3' is unknown"),  # q4 exists now: an unknown one
    "other block size": (set_meta("qk", "64"), "block size qk = '64'"),
    "config not json": (set_meta("config", "{n_embd: 64"), "config in the file is not valid"),
    "config inconsistent": (set_config(n_head=5), "config in the file is not valid.*divisible"),
    "config disagrees with shapes": (set_config(n_embd=96, n_head=4), "is F32 \\[64\\] but .* needs F32 \\[96\\]"),
    "more layers than tensors": (set_config(n_layer=3), "missing, e.g. 'transformer.h.2"),
    "missing tensor": (remove("transformer.h.1.mlp.fc_out.bias"), "missing, e.g. 'transformer.h.1.mlp.fc_out.bias'"),
    "missing scales": (remove("lm_head.weight_scale"), "missing, e.g. 'lm_head.weight_scale'"),
    "unexpected tensor": (add_empty_tensor, "unexpected tensor 'transformer.h.0.attn.bias'"),
    "wrong dtype": (set_entry("transformer.ln_f.weight", dtype="I32"), "'transformer.ln_f.weight' is I32 \\[64\\] but"),
    "wrong scale dtype": (set_entry("lm_head.weight_scale", dtype="BF16"), "'lm_head.weight_scale' is BF16"),
    "wrong shape": (
        set_entry("transformer.wte.weight", shape=[64, 101]),
        "'transformer.wte.weight' is I8 \\[64, 101\\]",
    ),
    "truncated data": (truncate, "truncated"),
    "offsets outside the file": (set_entry("lm_head.weight", data_offsets=[10**9, 10**9 + 101 * 64]), "truncated"),
    "offsets that disagree with the shape": (
        set_entry("transformer.ln_f.bias", data_offsets=[0, 4]),
        "needs 256 bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_rejected_on_open(tmp_path, files, case):
    mutate, message = BAD_FILES[case]
    path = rewritten(files["q8"], tmp_path / "bad.gptj", mutate)
    with pytest.raises(CheckpointError, match=message):
        open_native(path)


def patch_tensor(path, name, values):
    """Overwrite a stored tensor's first elements in place."""
    header, _ = read_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    values = np.asarray(values, DTYPES[header[name]["dtype"]])
    with open(path, "r+b") as f:
        f.seek(8 + n + header[name]["data_offsets"][0])
        f.write(values.tobytes())


@pytest.mark.parametrize("value, message", [(np.nan, "holds nan"), (np.inf, "holds inf"), (-1.0, "holds -1.0")])
def test_bad_scales_are_rejected_on_open(tmp_path, files, value, message):
    path = rewritten(files["q8"], tmp_path / "bad.gptj", lambda h, d: None)
    patch_tensor(path, "transformer.h.1.mlp.fc_in.weight_scale", [0.5, value])
    with pytest.raises(CheckpointError, match=f"'transformer.h.1.mlp.fc_in.weight_scale' {message} at \\[0, 1\\]"):
        open_native(path)


def test_full_check_finds_minus_128_and_nan(tmp_path, files):
    path = rewritten(files["q8"], tmp_path / "bad.gptj", lambda h, d: None)
    patch_tensor(path, "transformer.h.0.attn.k_proj.weight", [5, -128])
    with open_native(path) as native:  # open reads only the header and the scales
        with pytest.raises(CheckpointError, match="holds -128"):
            native.check()
    path = rewritten(files["f32"], tmp_path / "bad-f32.gptj", lambda h, d: None)
    patch_tensor(path, "transformer.h.0.mlp.fc_in.weight", [np.nan])  # matrices: only check() reads them all
    with open_native(path) as native:
        with pytest.raises(CheckpointError, match="'transformer.h.0.mlp.fc_in.weight' holds NaN"):
            native.check()


def test_misaligned_tensors_are_rejected(tmp_path):
    """A file whose order puts an F32 tensor at an offset that is not a multiple of 4 (a 101-element F16
    scale tensor in front of it) is valid safetensors but cannot be used in place by the runtime."""
    config = CONFIG.replace(n_embd=32, n_head=4)
    weights = random_weights(config, seed=1)
    good = tmp_path / "good.gptj"
    write_native(good, config, weights.__getitem__, "q8", "")
    specs = native_specs(config, "q8")
    first = [s for s in specs if s[0] == "lm_head.weight_scale"]
    assert first[0][2] == (101, 1)  # 202 bytes: shifts what follows by 2
    reordered = first + [s for s in specs if s[0] != "lm_head.weight_scale"]
    bad = tmp_path / "bad.gptj"
    with open_native(good) as native:
        write_safetensors(bad, reordered, native.tensor, read_header(good)[0]["__metadata__"])
    with pytest.raises(CheckpointError, match="not a multiple of its element size 4"):
        open_native(bad)


def test_version_1_q8_files_with_a_float32_embedding_still_load(tmp_path, weights):
    """Format version 1 stored the embedding of a q8 file as F32; such files open and run unchanged."""
    from gptj_ref.native import native_metadata

    specs = native_specs(CONFIG, "q8", version=1)
    assert ("transformer.wte.weight", "F32", (CONFIG.vocab_size, CONFIG.n_embd)) in specs
    quantized = {}
    for name in weight_shapes(CONFIG):
        if is_quantized(name):
            quantized[name], quantized[scale_name(name)] = quantize_blocks(weights[name])
    meta = dict(native_metadata(CONFIG, "q8", ""), format_version="1")
    path = tmp_path / "v1.gptj"
    write_safetensors(path, specs, lambda n: quantized[n] if n in quantized else weights[n], meta)
    with open_native(path) as native:
        assert native.format_version == 1
        assert native.tensor("transformer.wte.weight").dtype == np.float32
        np.testing.assert_array_equal(native.weight("transformer.wte.weight"), weights["transformer.wte.weight"])


def test_missing_file():
    with pytest.raises(CheckpointError, match="no such file"):
        NativeFile("/nonexistent/model.gptj")


# -------------------------------------------------------------------------------------------------
# Writing: bad sources, and nothing half-written
# -------------------------------------------------------------------------------------------------


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_a_source_that_fails_midway_leaves_nothing(tmp_path, weights):
    calls = []

    def source(name):
        calls.append(name)
        if len(calls) == 7:
            raise RuntimeError("disk read failed")
        return weights[name]

    with pytest.raises(RuntimeError, match="disk read failed"):
        write_native(tmp_path / "m.gptj", CONFIG, source, "q8", "")
    assert leftovers(tmp_path) == []


def test_a_source_with_a_wrong_shape_is_a_checkpoint_error(tmp_path, weights):
    def source(name):
        return weights[name].T if name == "transformer.h.1.mlp.fc_in.weight" else weights[name]

    with pytest.raises(
        CheckpointError,
        match=r"'transformer.h.1.mlp.fc_in.weight' has shape \[64, 256\] but the "
        r"config implies \[256, 64\]",
    ):
        write_native(tmp_path / "m.gptj", CONFIG, source, "q8", "")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "dtype, value, message", [("q8", np.nan, "only finite weights"), ("f16", 1e6, "beyond float16's range")]
)
def test_unstorable_values_are_checkpoint_errors(tmp_path, weights, dtype, value, message):
    def source(name):
        w = weights[name]
        if name == "transformer.h.0.attn.v_proj.weight":
            w = w.copy()
            w[3, 4] = value
        return w

    with pytest.raises(CheckpointError, match=f"'transformer.h.0.attn.v_proj.weight'.*{message}"):
        write_native(tmp_path / "m.gptj", CONFIG, source, dtype, "")
    assert leftovers(tmp_path) == []


def test_q8_needs_widths_that_are_multiples_of_32(tmp_path):
    config = CONFIG.replace(n_embd=48, n_head=4)
    with pytest.raises(ConfigError, match="multiple of the int8 block size 32"):
        write_native(tmp_path / "m.gptj", config, random_weights(config).__getitem__, "q8", "")
    write_native(tmp_path / "m.gptj", config, random_weights(config).__getitem__, "f16", "")
    with open_native(tmp_path / "m.gptj") as native:
        assert native.dtype == "f16"


def test_unknown_dtype(tmp_path, weights):
    with pytest.raises(GPTJError, match="unknown native dtype 'int8'"):
        write_native(tmp_path / "m.gptj", CONFIG, weights.__getitem__, "int8", "")


def test_progress_is_reported_per_tensor(tmp_path, weights):
    seen = []
    write_native(tmp_path / "m.gptj", CONFIG, weights.__getitem__, "q8", "", progress=lambda n, b: seen.append((n, b)))
    assert [n for n, _ in seen] == [n for n, _, _ in native_specs(CONFIG, "q8")]
    assert sum(b for _, b in seen) == native_size(CONFIG, "q8")
    header_and_data = os.path.getsize(tmp_path / "m.gptj")
    assert header_and_data > native_size(CONFIG, "q8")
