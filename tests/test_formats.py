"""The formats x CPU levels table, and the q4 format end to end.

1. The table is real: every format the C++ table lists (and the Python registry knows) runs at every
   level this CPU and build can run, against its oracle in gptj_ref/formats.py:
   - the scalar kernel equals the registry's exact emulation bitwise (same integer products, the same
     float32 operations in the same order);
   - every SIMD level equals every other bitwise, and lies within the registry's error bound of the
     emulation (the SIMD chain fuses the multiply-add: float32 rounding only, bounded rigorously);
   - 1 and 2 threads agree bitwise, and a token's output does not depend on M.
   The token counts cross every path threshold: q4's unpacking from 16 tokens, AMX from 32, the AVX2
   q8 panels from 64, the row kernels' quad and token-pair tails and the q4 panel kernels' tiles of 2
   and 4 tokens; the row counts end in part quads and part 16-row panels.
2. q4 files: convert, open, run on the C++ kernels and on the reference (dequantized weights); the C++
   logits against the exact emulation and the fp32 reference; bad files rejected on open.
"""

from __future__ import annotations

import numpy as np
import pytest

import gptj_ref
from gptj_ref import formats, quant, reference
from gptj_ref.convert import convert
from gptj_ref.errors import CheckpointError, InputError
from gptj_ref.native import open_native
from gptj_ref.reference import Reference
from helpers import CONFIGS, make_hf_model, report_diff, state_dict_numpy, use_isa

_core = pytest.importorskip("gptj_ref._core")

ISAS = _core.available_isas()
TABLE = [f for f in _core.weight_formats() if f["name"] in formats.FORMATS]
TOKENS = (1, 3, 4, 5, 15, 16, 33, 70)


def test_table_and_registry_agree():
    built = {f["name"]: f for f in _core.weight_formats()}
    for name, fmt in formats.FORMATS.items():
        if name == "f16":
            continue  # a storage format: converted to f32 at load, no kernels of its own
        assert name in built, f"{name} is in formats.py but not in the C++ table"
        assert built[name]["version"] == fmt.version and built[name]["block"] == fmt.block
        assert built[name]["levels"][0] == "scalar"
    assert _core.resolve_level("q8", "scalar", 100) == "scalar"
    if "amx" in ISAS:  # fewer tokens than the AMX cell takes go to the best level below that has a kernel
        assert _core.resolve_level("q8", "amx", 512) == "amx"
        assert _core.resolve_level("q8", "amx", 1) != "amx"
        assert _core.resolve_level("q4", "amx", 1) in ISAS


def weight_for(fmt, rng, N, K):
    """(values, scales or None, float32 weight) of a random weight in `fmt`, with a zero block."""
    w = (rng.standard_normal((N, K)) * rng.uniform(0.001, 0.1, (N, 1))).astype(np.float32)
    w[:, :32] = 0.0
    if fmt.name == "f32":
        return w, None, w
    values, scales = fmt.quantize(w)
    return values, scales, fmt.dequantize(values, scales)


@pytest.mark.parametrize("name", [f["name"] for f in TABLE])
@pytest.mark.parametrize("N,K", [(37, 96), (70, 288), (33, 448)])  # 3, 9 and 14 blocks: every step tail
def test_every_available_level_against_the_oracle(name, N, K):
    fmt = formats.FORMATS[name]
    rng = np.random.default_rng(N * K)
    values, scales, w = weight_for(fmt, rng, N, K)
    x = (rng.standard_normal((max(TOKENS), K)) * np.exp(rng.uniform(-4, 4, (max(TOKENS), 1)))).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    s16 = None if scales is None else scales.view(np.uint16)
    before = _core.isa()
    try:
        results = {}
        for isa in ISAS:
            _core.set_isa(isa)
            for M in TOKENS:
                y = _core.format_linear(name, x[:M], values, s16, bias, threads=2)
                y1 = _core.format_linear(name, x[:M], values, s16, bias, threads=1)
                assert np.array_equal(y.view(np.int32), y1.view(np.int32)), f"{name}/{isa}, M={M}: threads differ"
                # a token's output does not depend on the other tokens of the call
                assert np.array_equal(y[:1].view(np.int32), results.get((isa, 1), y[:1]).view(np.int32))
                results[(isa, M)] = y
    finally:
        _core.set_isa(before)
    for M in TOKENS:
        if fmt.is_block:
            expected = fmt.emulate(x[:M], values, scales, bias)
            bound = fmt.error_bound(x[:M], values, scales, bias, lanes=1)
        else:
            expected = x[:M].astype(np.float64) @ w.T.astype(np.float64) + bias
            bound = 1e-5 * (np.abs(x[:M]).astype(np.float64) @ np.abs(w.T).astype(np.float64) + np.abs(bias))
        for isa in ISAS:
            y = results[(isa, M)]
            if isa == "scalar" and fmt.is_block:
                assert np.array_equal(y.view(np.int32), expected.view(np.int32)), report_diff(y, expected)
            else:
                assert (np.abs(y - expected) <= bound).all(), f"{name}/{isa}, M={M}: {report_diff(y, expected)}"
        simd = [results[(isa, M)] for isa in ISAS if isa != "scalar"]
        for y in simd[1:]:
            assert np.array_equal(y.view(np.int32), simd[0].view(np.int32)), f"{name}, M={M}: SIMD levels differ"


@pytest.mark.parametrize("name", [f["name"] for f in TABLE])
def test_a_linear_packed_once_equals_the_stored_weight(name):
    # _core.Linear holds a weight as a built model does: packed once, when made, for the level in use if
    # its kernel reads a layout of its own (q4 on AVX-512: rows in panels of 16). N = 37: a part panel.
    fmt = formats.FORMATS[name]
    entry = next(f for f in TABLE if f["name"] == name)
    rng = np.random.default_rng(5)
    N, K = 37, 160
    values, scales, _ = weight_for(fmt, rng, N, K)
    s16 = None if scales is None else scales.view(np.uint16)
    x = rng.standard_normal((max(TOKENS), K)).astype(np.float32)
    for isa in ISAS:
        with use_isa(isa):
            linear = _core.Linear(name, values, s16)
            packs = _core.resolve_level(name, isa, 1) in entry["packing_levels"]
            assert linear.packed_level == (_core.resolve_level(name, isa, 1) if packs else None)
            for M in TOKENS:
                expected = _core.format_linear(name, x[:M], values, s16, None, threads=2)
                got = linear(x[:M], threads=2)
                assert np.array_equal(got.view(np.int32), expected.view(np.int32)), f"{isa}, M={M}"
        # run at every other level, the weight packed for this one: the stored layout serves them
        for other in ISAS:
            with use_isa(other):
                expected = _core.format_linear(name, x[:5], values, s16, None, threads=2)
                assert np.array_equal(linear(x[:5], threads=2).view(np.int32), expected.view(np.int32))


def test_a_linear_rejects_what_it_cannot_hold():
    values = np.zeros((16, 64), np.uint8)  # q4: 16 rows of K = 128
    scales = np.zeros((16, 4), np.uint16)
    with pytest.raises(ValueError, match="unknown weight format 'q5'"):
        _core.Linear("q5", values, scales)
    with pytest.raises(ValueError, match="block scales"):
        _core.Linear("q4", values)
    with pytest.raises(ValueError, match="2-D"):
        _core.Linear("q4", values.reshape(-1), scales)
    with pytest.raises(ValueError, match="scales"):
        _core.Linear("q4", values, scales[:, :3])
    linear = _core.Linear("q4", values, scales)
    with pytest.raises(ValueError):
        linear(np.zeros((1, 96), np.float32))  # K = 128 expected


@pytest.mark.parametrize("byte", [0x00, 0xFF, 0x0F, 0x80])
def test_q4_extreme_values_are_exact_at_every_level(byte):
    # Every stored nibble at an end of [0, 15] (q = -8 or +7) against activations of +-127, alone and with
    # mixed signs: the block sums at their largest, where an int16 step or the -8 offset would show.
    # 160 = one whole four-block step and a tail block; N = 9 = two quads and a single row.
    fmt = formats.FORMATS["q4"]
    N, K = 9, 160
    values = np.full((N, K // 2), byte, np.uint8)
    scales = np.full((N, K // 32), 0.25, np.float16)
    x = np.ones((4, K), np.float32)
    x[1], x[2, ::2], x[3, 16:] = -1.0, -1.0, -1.0
    bias = np.linspace(-1, 1, N).astype(np.float32)
    expected = fmt.emulate(x, values, scales, bias)
    bound = fmt.error_bound(x, values, scales, bias, lanes=1)
    outputs = {}
    for isa in ISAS:
        with use_isa(isa):
            outputs[isa] = _core.format_linear("q4", x, values, scales.view(np.uint16), bias, threads=2)
    simd = [outputs[isa] for isa in ISAS if isa != "scalar"]
    for y in simd[1:]:
        assert np.array_equal(y.view(np.int32), simd[0].view(np.int32)), report_diff(y, simd[0])
    for isa in ISAS:
        assert (np.abs(outputs[isa] - expected) <= bound).all(), f"{isa}: {report_diff(outputs[isa], expected)}"
    assert np.array_equal(outputs["scalar"].view(np.int32), expected.view(np.int32))


def test_q4_prompt_path_over_several_slices_equals_decode_rows():
    # From 16 tokens q4 unpacks its rows into int8 slices of at most 8 MB and runs the q8 kernels on them;
    # 2100 rows of K = 4096 make two slices (2048 + 52 rows). Every SIMD level's prompt path must equal its
    # own one-token path bitwise, row by row, across the slice boundary.
    rng = np.random.default_rng(7)
    N, K, M = 2100, 4096, 17
    values = rng.integers(0, 256, (N, K // 2), dtype=np.uint8)
    scales = (rng.uniform(0.5, 1.5, (N, K // 32)) * 1e-2).astype(np.float16).view(np.uint16)
    bias = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    for isa in [i for i in ISAS if i != "scalar"]:
        with use_isa(isa):
            prompt = _core.format_linear("q4", x, values, scales, bias, threads=2)
            for t in (0, 8, 16):
                one = _core.format_linear("q4", x[t : t + 1], values, scales, bias, threads=2)
                assert np.array_equal(one[0].view(np.int32), prompt[t].view(np.int32)), (
                    f"{isa}, token {t}: " + report_diff(one[0], prompt[t])
                )


def test_q4_packing_round_trip_and_layout():
    rng = np.random.default_rng(1)
    q = rng.integers(-8, 8, (5, 64)).astype(np.int8)
    packed = quant.q4_pack(q)
    assert packed.shape == (5, 32) and packed.dtype == np.uint8
    assert np.array_equal(quant.q4_unpack(packed), q)
    # byte j of a block: element j in the low nibble, element 16 + j in the high nibble, stored as q + 8
    assert int(packed[0, 0]) == (int(q[0, 0]) + 8) | ((int(q[0, 16]) + 8) << 4)
    assert int(packed[0, 16]) == (int(q[0, 32]) + 8) | ((int(q[0, 48]) + 8) << 4)


def test_q4_quantizer_picks_the_smallest_error():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    values, scales = quant.q4_quantize_blocks(w)
    err = ((quant.q4_dequantize_blocks(values, scales) - w) ** 2).reshape(64, 8, 32).sum(-1)
    # the max|w|/7 rule alone, stored the same way: never better, block by block
    blocks = w.reshape(64, 8, 32)
    d = quant.weight_scales(np.abs(blocks).max(-1) * (127 / 7)).astype(np.float32)
    q = np.clip(np.rint(blocks / d[..., None]), -8, 7)
    naive = ((q * d[..., None] - blocks) ** 2).sum(-1)
    assert (err <= naive * (1 + 1e-3)).all() and err.sum() < 0.8 * naive.sum()
    with pytest.raises(InputError, match="finite"):
        quant.q4_quantize_blocks(np.full((1, 32), np.nan, np.float32))
    zeros_v, zeros_s = quant.q4_quantize_blocks(np.zeros((2, 64), np.float32))
    assert not quant.q4_dequantize_blocks(zeros_v, zeros_s).any() and not zeros_s.any()


# q4 files ----------------------------------------------------------------------------------------------

EMULATION_MAX = 2e-2  # max |Δ| / max |logits| against the exact emulation (int8 rounding-boundary flips,
EMULATION_MEDIAN = 1e-3  # as in test_int8_runtime.py; median with float16 caches)
DEQUANTIZED_MAX_REL = 0.05  # int8 activations, as test_int8_runtime.py's FP32_MAX_REL for q8
DEQUANTIZED_MIN_AGREE = 0.9  # greedy next token agrees at this fraction of positions (q8's FP32_MIN_AGREE)
FP32_MIN_COSINE = 0.95  # 4 bits: ~8% rms weight error (q8: 0.5%); measured 0.977-0.987 on this random model


@pytest.fixture(scope="module")
def q4_model(tmp_path_factory):
    hf = make_hf_model(seed=7, **CONFIGS["real-heads"])
    directory = tmp_path_factory.mktemp("q4")
    hf.save_pretrained(directory)
    path = directory / "model.gptj"
    convert(directory, path, dtype="q4", progress=False)
    return path, state_dict_numpy(hf)


def test_q4_file_runs_on_its_kernels_and_on_the_reference(q4_model, monkeypatch):
    path, fp32 = q4_model
    native = open_native(path)
    assert native.dtype == "q4" and native._file.metadata["dtype_version"] == "1"
    name = "transformer.h.0.mlp.fc_in.weight"
    assert native.tensor(name).dtype == np.uint8 and native.tensor(name + "_scale").dtype == np.float16
    # the embedding is q8 rows (formats.py: a lookup reads one row per token; 4-bit would save no time)
    wte = "transformer.wte.weight"
    assert native.tensor_format(wte).name == "q8" and native.tensor(wte).dtype == np.int8
    np.testing.assert_array_equal(native.tensor(wte + "_scale"), quant.quantize_blocks(fp32[wte])[1])
    cpp = gptj_ref.load(path, backend="cpp", threads=2).backend
    assert cpp.name == "cpp-q4" and cpp.kv_dtype == "float16"
    assert np.shares_memory(cpp.weight_views()[name], cpp.native.tensor(name))  # used in place
    ids = np.random.default_rng(0).integers(0, native.config.vocab_size, 12)
    got = cpp.forward(ids)

    # the exact emulation: the reference on dequantized weights with each linear run by quant.q4_linear
    weights = native.dequantized_weights()
    table = {id(weights[n]): (native.tensor(n), native.tensor(n + "_scale")) for n in weights if quant.is_quantized(n)}
    float_linear = reference.linear

    def linear(x, weight, bias=None):
        if id(weight) in table:
            return quant.q4_linear(x, *table[id(weight)], bias)
        return float_linear(x, weight, bias)

    with monkeypatch.context() as m:
        m.setattr(reference, "linear", linear)
        expected = Reference(native.config, weights, kv_dtype="float16").forward(ids)
    rel = np.abs(got - expected) / np.abs(expected).max()
    assert np.median(rel) <= EMULATION_MEDIAN and rel.max() <= EMULATION_MAX, report_diff(got, expected)

    # the reference backend runs on the dequantized weights: the C++ model differs from it by the int8
    # activations only (the weights are the same numbers), as the q8 runtime differs from fp32
    ref = gptj_ref.load(path, backend="reference").backend.forward(ids)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(
        f"\nq4 runtime vs reference on the dequantized weights: max |Δ| / max |logits| {rel:.4f}, "
        f"argmax agreement {np.mean(got.argmax(-1) == ref.argmax(-1)):.2f}"
    )
    assert rel <= DEQUANTIZED_MAX_REL
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= DEQUANTIZED_MIN_AGREE
    full = Reference(native.config, fp32).forward(ids)
    for logits in (got, ref):
        a, b = logits.astype(np.float64), full.astype(np.float64)
        cos = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
        assert cos.min() >= FP32_MIN_COSINE, cos.min()


def rewrite(src, dst, meta=None, entry=None, scale_value=None):
    """A copy of the safetensors file src with metadata keys, one header entry or one scale changed."""
    import json
    import struct

    with open(src, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = bytearray(data[8 + n :])
    header["__metadata__"].update(meta or {})
    if entry:
        header[entry[0]].update(entry[1])
    if scale_value is not None:
        start = header["lm_head.weight_scale"]["data_offsets"][0]
        body[start : start + 2] = np.float16(scale_value).tobytes()
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + bytes(body))


def test_q4_model_built_at_each_level_gives_the_same_logits(q4_model):
    # A model built where the q4 kernel packs its weights (AVX-512) keeps the packed copy and hands the
    # file's pages of the stored weights back (release_mapped_pages); run at a level without packing, it
    # reads the stored weights from the file again. Built at every level and run at every level, a prompt
    # (20 tokens: q4_via_q8 on the unpacked panels) and 3 decode steps give bitwise the same logits.
    path, _ = q4_model
    ids = np.random.default_rng(1).integers(0, 1000, 20)
    simd = [isa for isa in ISAS if isa != "scalar"]
    if not simd:
        pytest.skip("no SIMD level on this CPU")
    results = {}
    for built in simd:
        with use_isa(built):
            backend = gptj_ref.load(path, backend="cpp", threads=2).backend
        for run in simd:
            with use_isa(run):
                cache = backend.new_cache(24)
                steps = [backend.forward(ids, cache)] + [backend.forward(ids[i : i + 1], cache) for i in range(3)]
                results[(built, run)] = np.concatenate(steps)
    first = next(iter(results.values()))
    for key, logits in results.items():
        assert np.array_equal(logits.view(np.int32), first.view(np.int32)), f"built at {key[0]}, run at {key[1]}"


@pytest.mark.parametrize(
    "case,change,message",
    [
        ("unknown layout version", {"meta": {"dtype_version": "2"}}, "q4 layout version '2'"),
        # a header claiming one value a byte (512 per row) where q4 packs two: 256 bytes a row
        (
            "wrong nibble count",
            {"entry": ("lm_head.weight", {"shape": [1013, 512]})},
            "'lm_head.weight': shape \\[1013, 512\\] of U8 needs 518656 bytes but data_offsets span 259328",
        ),
        (
            "values of another format",
            {"entry": ("lm_head.weight", {"dtype": "I8"})},
            "'lm_head.weight' is I8 \\[1013, 256\\]",
        ),
        ("NaN scale", {"scale_value": np.nan}, "scale tensor 'lm_head.weight_scale' holds nan"),
        ("infinite scale", {"scale_value": np.inf}, "scale tensor 'lm_head.weight_scale' holds inf"),
    ],
)
def test_bad_q4_files_are_rejected_on_open(q4_model, tmp_path, case, change, message):
    path, _ = q4_model
    bad = tmp_path / "bad.gptj"
    rewrite(path, bad, **change)
    with pytest.raises(CheckpointError, match=message):
        gptj_ref.load(bad, backend="cpp")
