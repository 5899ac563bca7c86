"""The int8 block format: quantize / dequantize properties and the exact integer matmul emulation.

Round-trip bound (weights): q = rint(fl32(w / d16)) and fl32 division is within 2^-24 relative, so
|w/d16 - q| <= 1/2 + 127 * 2^-24, i.e. |w - q*d16| <= d16 * (1/2 + 2^-17); q*d16 itself is exact in float32.
The same holds for activations with their float32 scale, as long as that scale is a normal float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gptj_ref.errors import GPTJError, InputError
from gptj_ref.quant import (
    QK,
    block_dots,
    dequantize_blocks,
    is_quantized,
    q8_linear,
    q8_linear_error_bound,
    quantize_activations,
    quantize_blocks,
    weight_scales,
)
from helpers import report_diff

HALF_SCALE_SLOP = 0.5 + 2.0**-17
F16_TINY = float(np.finfo(np.float16).smallest_subnormal)

# Matrices [rows, K] with K a multiple of 32, and values from every regime: ordinary, huge (up to what
# a float16 scale can hold), tiny and float32 denormal, exact zeros.
shapes = st.tuples(st.integers(1, 4), st.integers(1, 4).map(lambda nb: nb * QK))
magnitudes = st.sampled_from([1.0, 1e-2, 1e3, 1e6, 8e6, 1e-5, 1e-8, 1e-30, 1e-40])


@st.composite
def weight_matrices(draw):
    shape = draw(shapes)
    scale = draw(magnitudes)
    w = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
    w = (w * np.float32(scale)).astype(np.float32)
    if draw(st.booleans()):  # zero some blocks
        blocks = w.reshape(shape[0], -1, QK)
        blocks[draw(st.integers(0, shape[0] - 1)), draw(st.integers(0, blocks.shape[1] - 1))] = 0
    if draw(st.booleans()):  # one large outlier per block
        blocks = w.reshape(shape[0], -1, QK)
        j = draw(st.integers(0, QK - 1))
        blocks[:, :, j] = np.float32(draw(st.sampled_from([-1, 1])) * min(scale * 100, 8e6))
    return w


def blockwise(a):
    return a.reshape(a.shape[0], -1, QK)


def assert_within_half_scale(w, q, scales):
    deq = dequantize_blocks(q, scales).astype(np.float64)
    err = np.abs(blockwise(w.astype(np.float64)) - blockwise(deq))  # [N, nb, QK]
    limit = scales.astype(np.float64)[..., None] * HALF_SCALE_SLOP
    worst = np.unravel_index(int(np.argmax(err - limit)), err.shape)
    assert (err <= limit).all(), (
        f"|w - deq| = {err[worst]:.6g} > {limit[worst[:2]][0]:.6g} at block {worst[:2]}, "
        f"element {worst[2]} (w = {blockwise(w)[worst]!r})"
    )


@settings(max_examples=300, deadline=None)
@given(weight_matrices())
def test_weight_round_trip_within_half_a_scale(w):
    q, scales = quantize_blocks(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scales.dtype == np.float16 and scales.shape == (w.shape[0], w.shape[1] // QK)
    assert q.min(initial=0) >= -127 and q.max(initial=0) <= 127
    assert np.isfinite(scales).all() and (scales >= 0).all()
    assert_within_half_scale(w, q, scales)


@settings(max_examples=200, deadline=None)
@given(weight_matrices())
def test_scale_is_the_smallest_float16_above_max_over_127(w):
    amax = np.abs(blockwise(w)).max(axis=-1).astype(np.float64)
    scales = quantize_blocks(w)[1]
    d = scales.astype(np.float64)
    assert (d * 127 >= amax).all(), "a scale is too small: some |w| / scale would exceed 127"
    below = np.nextafter(scales, np.float16(0)).astype(np.float64)
    nonzero = amax > 0
    assert (below[nonzero] * 127 < amax[nonzero]).all(), "a scale is not the smallest float16 that fits"
    assert (scales[~nonzero] == 0).all()


@settings(max_examples=100, deadline=None)
@given(weight_matrices())
def test_quantization_is_symmetric(w):
    q, scales = quantize_blocks(w)
    q_neg, scales_neg = quantize_blocks(-w)
    np.testing.assert_array_equal(q_neg, -q)
    np.testing.assert_array_equal(scales_neg, scales)


def test_zero_blocks_give_zero_scale_and_zero_values():
    w = np.zeros((3, 2 * QK), np.float32)
    w[1, QK:] = 0.5
    with np.errstate(all="raise"):  # no division by zero, no invalid operation
        q, scales = quantize_blocks(w)
    assert scales[0, 0] == 0 and scales[0, 1] == 0 and scales[1, 0] == 0 and scales[2, 1] == 0
    assert (q[0] == 0).all() and (q[1, :QK] == 0).all()
    assert scales[1, 1] > 0 and (q[1, QK:] == 127).all()
    np.testing.assert_array_equal(dequantize_blocks(q, scales)[0], 0)


def test_extreme_values():
    w = np.zeros((4, QK), np.float32)
    w[0, 0] = 127 * 65504  # the largest block maximum a float16 scale can hold
    w[0, 1] = -1.0
    w[1] = np.float32(1e-45)  # float32 denormals: scale = smallest float16 subnormal
    w[2, ::2], w[2, 1::2] = 3e-3, -3e-3  # mixed signs, float16-subnormal scale
    w[3, 5] = -1e6  # one outlier, the rest rounds to zero
    w[3, 6] = 1.0
    q, scales = quantize_blocks(w)
    assert scales[0, 0] == np.float16(65504) and q[0, 0] == 127
    assert scales[1, 0] == np.float16(F16_TINY) and (q[1] == 0).all()
    assert (q[2, ::2] == 127).all() and (q[2, 1::2] == -127).all()
    assert q[3, 5] == -127 and q[3, 6] == 0
    assert_within_half_scale(w, q, scales)


def test_minus_128_never_appears_even_when_a_block_is_all_at_its_negative_maximum():
    w = -np.abs(np.random.default_rng(0).standard_normal((64, QK), dtype=np.float32))
    w[:, 3] = w.min(axis=1) * 1.0001
    q, _ = quantize_blocks(w)
    assert q.min() == -127


def test_weight_scales_round_up():
    amax = np.array([0.0, 1e-45, 127 * F16_TINY * 1.5, 1.0, 127.0, 127 * 65504], np.float32)
    d = weight_scales(amax)
    assert d.tolist()[0] == 0.0
    assert d[1] == np.float16(F16_TINY)
    assert d[2] == np.float16(2 * F16_TINY)  # round-to-nearest would give 2 * tiny too; 1.5 -> 2 (even)
    assert d[4] == np.float16(1.0)  # exact: no bump
    assert d[5] == np.float16(65504)
    assert float(d[3]) * 127 >= 1.0


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 48), np.float32), "not a multiple of the block size 32"),
        (np.zeros((2, 3, 32), np.float32), "must be 2-D"),
        (np.full((1, 32), np.nan, np.float32), "only finite weights"),
        (np.full((1, 32), np.inf, np.float32), "only finite weights"),
        (np.full((1, 32), 1e7, np.float32), "does not fit in float16"),
    ],
)
def test_bad_weights_raise_clear_errors(bad, message):
    with pytest.raises(InputError, match=message) as info:
        quantize_blocks(bad)
    assert isinstance(info.value, GPTJError)


def test_is_quantized_names_the_linear_weights_and_lm_head_only():
    quantized = [
        f"transformer.h.{i}.attn.{p}.weight" for i in (0, 27) for p in ("q_proj", "k_proj", "v_proj", "out_proj")
    ]
    quantized += ["transformer.h.3.mlp.fc_in.weight", "transformer.h.3.mlp.fc_out.weight", "lm_head.weight"]
    float_kept = [
        "transformer.wte.weight",
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.ln_1.bias",
        "transformer.h.0.mlp.fc_in.bias",
        "transformer.h.0.mlp.fc_out.bias",
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "lm_head.bias",
        "transformer.h.0.attn.q_proj.weight_scale",
        "transformer.h.0.attn.bias",
    ]
    assert all(is_quantized(n) for n in quantized)
    assert not any(is_quantized(n) for n in float_kept)


# -------------------------------------------------------------------------------------------------
# Activations
# -------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    shapes.flatmap(lambda shape: hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32))),
    st.sampled_from([1.0, 1e-3, 1e4, 1e30, 1e-30, 1e-36]),
)
def test_activation_round_trip_within_half_a_scale(x, magnitude):
    x = (x * np.float32(magnitude)).astype(np.float32)
    qx, dx = quantize_activations(x)
    assert qx.dtype == np.int8 and dx.dtype == np.float32 and dx.shape == (x.shape[0], x.shape[1] // QK)
    assert qx.min() >= -127
    normal = dx >= np.finfo(np.float32).tiny  # [T, nb]
    err = np.abs(blockwise(x.astype(np.float64)) - blockwise(qx.astype(np.float64)) * dx[..., None])
    limit = dx.astype(np.float64)[..., None] * HALF_SCALE_SLOP
    assert (err[normal] <= limit[normal]).all(), f"max excess {(err - limit)[normal].max()}"
    zero = np.abs(blockwise(x)).max(axis=-1) == 0
    assert (dx[zero] == 0).all() and (blockwise(qx)[zero] == 0).all()


def test_activations_tiny_blocks_stay_in_range():
    x = np.zeros((2, QK), np.float32)
    x[0, :3] = [1e-45, -2e-45, 3e-44]  # float32 denormals: the scale underflows or is denormal
    x[1, 0] = -1e-38
    qx, dx = quantize_activations(x)
    assert qx.min() >= -127 and qx.max() <= 127
    assert np.isfinite(dx).all()


def test_activations_reject_nan():
    with pytest.raises(InputError, match="NaN or inf"):
        quantize_activations(np.full((1, QK), np.nan, np.float32))


# -------------------------------------------------------------------------------------------------
# The integer matmul
# -------------------------------------------------------------------------------------------------


def stated_order(x, q, scales, bias=None):
    """The summation order the module docstring states, one scalar at a time, every step float32."""
    f32 = np.float32
    qx, dx = quantize_activations(x)
    T, K = x.shape
    N = q.shape[0]
    y = np.zeros((T, N), np.float32)
    for t in range(T):
        for n in range(N):
            acc = f32(0)
            for b in range(K // QK):
                dot = int(
                    np.dot(qx[t, b * QK : (b + 1) * QK].astype(np.int64), q[n, b * QK : (b + 1) * QK].astype(np.int64))
                )
                acc = f32(acc + f32(f32(dot) * f32(f32(scales[n, b]) * dx[t, b])))
            y[t, n] = acc if bias is None else f32(acc + f32(bias[n]))
    return y


def random_case(seed, T, N, K, outliers=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, K), dtype=np.float32)
    if outliers:
        x[:, rng.integers(0, K, 3)] *= 50
    w = (0.05 * rng.standard_normal((N, K))).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    return x, w, bias


@pytest.mark.parametrize("T, N, K", [(1, 5, 32), (3, 7, 96), (4, 16, 256)])
def test_q8_linear_follows_the_stated_order_bit_for_bit(T, N, K):
    x, w, bias = random_case(T * N + K, T, N, K, outliers=True)
    q, scales = quantize_blocks(w)
    np.testing.assert_array_equal(q8_linear(x, q, scales, bias), stated_order(x, q, scales, bias))
    np.testing.assert_array_equal(q8_linear(x, q, scales), stated_order(x, q, scales))


def test_block_dots_are_exact():
    rng = np.random.default_rng(3)
    qx = rng.integers(-127, 128, (3, 128)).astype(np.int8)
    q = rng.integers(-127, 128, (5, 128)).astype(np.int8)
    q[0] = qx[0] = 127  # the largest magnitudes: 32 * 127^2 per block
    q[1] = -127
    dots = block_dots(qx, q)
    expected = np.einsum("tbj,nbj->tnb", qx.reshape(3, 4, 32).astype(np.int64), q.reshape(5, 4, 32).astype(np.int64))
    np.testing.assert_array_equal(dots, expected)
    assert dots[0, 0, 0] == 32 * 127 * 127


@pytest.mark.parametrize("T, N, K", [(2, 9, 64), (5, 33, 512), (3, 64, 4096)])
def test_q8_linear_matches_exact_arithmetic_within_the_reordering_bound(T, N, K):
    x, w, bias = random_case(K + N, T, N, K)
    q, scales = quantize_blocks(w)
    y = q8_linear(x, q, scales, bias)
    qx, dx = quantize_activations(x)
    dots = block_dots(qx, q).astype(np.float64)  # exact integers
    exact = np.einsum("tnb,nb,tb->tn", dots, scales.astype(np.float64), dx.astype(np.float64)) + bias
    bound = q8_linear_error_bound(x, q, scales, bias, lanes=1) / 2  # one side's error
    assert (np.abs(y - exact) <= bound).all(), report_diff(y, exact)


def avx2_like_kernel(x, q, scales, bias):
    """Another order, as an AVX2 kernel sums: each block's dot product split into 8 int32 lanes of 4
    consecutive products (maddubs + madd), one float32 accumulator per lane, lanes added at the end."""
    qx, dx = quantize_activations(x)
    T, K = qx.shape
    N, nb = scales.shape
    products = qx.astype(np.int32)[:, None, :] * q.astype(np.int32)[None, :, :]  # [T, N, K]
    partial = products.reshape(T, N, nb, 8, 4).sum(-1).astype(np.float32)  # [T, N, nb, 8]
    acc = np.zeros((T, N, 8), np.float32)
    for b in range(nb):
        acc += partial[:, :, b] * (scales[None, :, b, None].astype(np.float32) * dx[:, None, b, None])
    while acc.shape[-1] > 1:  # horizontal sum
        acc = acc[..., 0::2] + acc[..., 1::2]
    return acc[..., 0] + bias


@pytest.mark.parametrize("K", [64, 1024])
def test_another_summation_order_stays_within_the_bound(K):
    x, w, bias = random_case(K, 3, 40, K, outliers=True)
    q, scales = quantize_blocks(w)
    y, kernel = q8_linear(x, q, scales, bias), avx2_like_kernel(x, q, scales, bias)
    bound = q8_linear_error_bound(x, q, scales, bias, lanes=8)
    assert (np.abs(kernel - y) <= bound).all(), report_diff(kernel, y)
    assert (bound <= q8_linear_error_bound(x, q, scales, bias)).all()


@pytest.mark.parametrize("outliers", [False, True])
def test_q8_linear_is_close_to_float32_matmul(outliers):
    """|x.w - x'.w'| <= sum |x| |w - w'| + |w'| |x - x'|, each error at most half its block's scale, plus the
    float32 rounding of both sides: a rigorous tolerance for the int8 layer against x @ W.T."""
    T, N, K = 4, 48, 1024
    x, w, bias = random_case(int(outliers), T, N, K, outliers)
    q, scales = quantize_blocks(w)
    y = q8_linear(x, q, scales, bias)
    expected = x @ w.T + bias
    qx, dx = quantize_activations(x)
    w_err = np.repeat(scales.astype(np.float64), QK, axis=1) * HALF_SCALE_SLOP  # [N, K]
    x_err = np.repeat(dx.astype(np.float64), QK, axis=1) * HALF_SCALE_SLOP  # [T, K]
    w_deq = np.abs(dequantize_blocks(q, scales).astype(np.float64))
    gamma = (K + 2) * 2.0**-24 / (1 - (K + 2) * 2.0**-24)
    rounding = gamma * (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + np.abs(bias))
    bound = (
        np.abs(x.astype(np.float64)) @ w_err.T + x_err @ w_deq.T + rounding + q8_linear_error_bound(x, q, scales, bias)
    )
    assert (np.abs(y - expected) <= bound).all(), report_diff(y, expected)
    # and in practice far inside it: the relative error of an int8 layer on Gaussian data is ~1%
    relative = np.linalg.norm(y - expected) / np.linalg.norm(expected - bias)
    assert relative < (0.03 if outliers else 0.01), f"relative error {relative:.4f}"


def test_q8_linear_accepts_leading_axes_and_checks_shapes():
    x, w, bias = random_case(5, 6, 8, 64)
    q, scales = quantize_blocks(w)
    y = q8_linear(x.reshape(2, 3, 64), q, scales, bias)
    np.testing.assert_array_equal(y.reshape(6, 8), q8_linear(x, q, scales, bias))
    with pytest.raises(InputError, match="last axis must be K = 64"):
        q8_linear(x[:, :32], q, scales)
    with pytest.raises(InputError, match="do not fit"):
        q8_linear(x, q, scales[:, :1].repeat(3, axis=1))
    with pytest.raises(InputError, match="bias"):
        q8_linear(x, q, scales, bias[:3])
