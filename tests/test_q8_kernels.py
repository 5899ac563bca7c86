"""The C++ int8 kernels against quant.py, their exact NumPy oracle.

Every test runs with each kernel level this CPU can run forced in turn (scalar, AVX2, AVX-VNNI, AVX-512,
AMX):
- activation quantization is bit-exact (qx and dx) with quant.quantize_activations;
- the scalar q8 linear is bitwise equal to quant.q8_linear (same order of the same float32 operations);
- the SIMD q8 linears are within quant.q8_linear_error_bound(..., lanes=1): they reduce each block's
  dot product to one exact int32 and fuse the multiply-add (see cpp/kernels/q8.h), so they differ from
  the emulation by float32 rounding only, and the bound is rigorous for that;
- both are bitwise identical for 1 and 2 threads, and a token's output does not depend on M. For AVX2
  that includes the switch from the row-streaming kernel (M < 64, decode) to the packed int16 kernel
  (prompts): the two must agree bitwise, which the tests check across every tail of the packing
  (rows % 16, k % 256, tokens % 4 and % 256).
- the AVX-VNNI kernel (vpdpbusd; prompts from 16 tokens on activations offset by +128, the offset taken
  back with the weights' block sums) and the AMX kernel (tile products from 32 tokens) compute the same
  chain and must equal the AVX2 one bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptj_ref import quant
from helpers import report_diff, use_isa

_core = pytest.importorskip("gptj_ref._core")

ISAS = _core.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    with use_isa(request.param):
        yield request.param


def random_activations(rng, M, K, zero_blocks=True):
    """Activations with a spread of magnitudes per token and block, some all-zero blocks."""
    x = rng.standard_normal((M, K)).astype(np.float32)
    x *= np.exp(rng.uniform(-6, 6, (M, K // 32, 1))).repeat(32, axis=2).reshape(M, K).astype(np.float32)
    if zero_blocks and K >= 64:
        x[:, 32:64] = 0.0
    return x


def random_weight(rng, N, K):
    w = (rng.standard_normal((N, K)) * rng.uniform(0.001, 0.1, (N, 1))).astype(np.float32)
    q, scales = quant.quantize_blocks(w)
    return q, scales


def random_linear(rng, M, N, K, with_bias=True):
    """A drawn problem for the linear: activations (M, K), a q8 weight (N, K) with its scales, a bias or None."""
    q, scales = random_weight(rng, N, K)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    return random_activations(rng, M, K), q, scales, bias


def c_linear(qx, dx, q, scales, bias=None, threads=None):
    return _core.q8_linear(qx, dx, q, scales.view(np.uint16), bias, threads=threads)


def check_linear(x, q, scales, bias, isa, threads=None):
    qx, dx = _core.q8_quantize_activations(x)
    y = c_linear(qx, dx, q, scales, bias, threads)
    expected = quant.q8_linear(x, q, scales, bias)
    if isa == "scalar":
        assert np.array_equal(y.view(np.int32), expected.view(np.int32)), report_diff(y, expected)
    else:
        bound = quant.q8_linear_error_bound(x, q, scales, bias, lanes=1)  # one exact int32 per block
        err = np.abs(y.astype(np.float64) - expected)
        assert (err <= bound).all(), f"{report_diff(y, expected)}; worst excess {(err - bound).max():.3e}"
    return y


# Activation quantization -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(M=st.integers(1, 9), nb=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_quantize_activations_bit_exact(isa, M, nb, seed):
    x = random_activations(np.random.default_rng(seed), M, 32 * nb)
    qx, dx = _core.q8_quantize_activations(x)
    rq, rd = quant.quantize_activations(x)
    assert np.array_equal(qx, rq), f"{np.count_nonzero(qx != rq)} int8 values differ"
    assert np.array_equal(dx.view(np.int32), rd.view(np.int32)), report_diff(dx, rd)


def test_quantize_activations_ties_round_to_even(isa):
    # amax = 127 gives dx = 1 exactly, so x / dx lands on exact halves: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2.
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = 127.0
    x[0, 1:9] = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5]
    qx, dx = _core.q8_quantize_activations(x)
    assert dx[0, 0] == 1.0
    assert qx[0, :9].tolist() == [127, 0, 2, 2, 0, -2, -2, 126, -126]
    assert np.array_equal(qx, quant.quantize_activations(x)[0])


def test_quantize_activations_never_minus_128(isa):
    x = np.full((2, 64), -3.0e38, np.float32)
    x[1, :32] = np.float32(-1e-38)  # a subnormal-scale block
    x[1, 32:] = 0.0  # an all-zero block: dx = 0, qx = 0
    qx, dx = _core.q8_quantize_activations(x)
    assert qx.min() >= -127
    assert np.array_equal(qx, quant.quantize_activations(x)[0])
    assert dx[1, 1] == 0.0 and not qx[1, 32:].any()


# The linear layer ------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    M=st.integers(1, 7),
    N=st.integers(1, 37),
    nb=st.sampled_from([1, 3, 5, 8, 9]),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_q8_linear_matches_emulation(isa, M, N, nb, with_bias, seed):
    check_linear(*random_linear(np.random.default_rng(seed), M, N, 32 * nb, with_bias), isa)


@pytest.mark.parametrize("M,N,K", [(1, 4100, 288), (8, 100, 1024), (33, 67, 160), (70, 45, 96)])
def test_q8_linear_larger_shapes(isa, M, N, K):
    check_linear(*random_linear(np.random.default_rng(M * N + K), M, N, K), isa)


# Sizes that exercise the packed (prompt) path: M >= 64, with tails of every tiling of it.
PACKED_CASES = [(64, 16, 256), (67, 45, 544), (101, 100, 96), (263, 35, 288), (70, 203, 1024)]


@pytest.mark.parametrize("M,N,K", PACKED_CASES)
def test_q8_linear_prompt_path_equals_decode_path_bitwise(isa, M, N, K):
    # Splitting the tokens into batches below the packed threshold runs the decode kernel on each; every
    # output element must come out bitwise the same as in one call on all M tokens.
    x, q, scales, bias = random_linear(np.random.default_rng(M + N + K), M, N, K)
    y = check_linear(x, q, scales, bias, isa)
    qx, dx = _core.q8_quantize_activations(x)
    pieces = [c_linear(qx[t : t + 7].copy(), dx[t : t + 7].copy(), q, scales, bias) for t in range(0, M, 7)]
    small = np.concatenate(pieces)
    assert np.array_equal(small.view(np.int32), y.view(np.int32)), report_diff(small, y)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    M=st.integers(16, 90),
    N=st.integers(1, 50),
    nb=st.sampled_from([1, 7, 8, 9, 17]),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_q8_linear_prompt_path_matches_emulation(isa, M, N, nb, with_bias, seed):
    x, q, scales, bias = random_linear(np.random.default_rng(seed), M, N, 32 * nb, with_bias)
    y1 = check_linear(x, q, scales, bias, isa, threads=1)
    y2 = check_linear(x, q, scales, bias, isa, threads=2)
    assert np.array_equal(y1.view(np.int32), y2.view(np.int32)), report_diff(y2, y1)


def test_q8_linear_extreme_values_do_not_saturate(isa):
    # Every product is +-127 * 127 with the same sign: maddubs pair sums reach 32258, the most they can.
    K = 256
    q = np.full((5, K), 127, np.int8)
    q[1] = -127
    q[2, ::2] = -127
    scales = np.full((5, K // 32), 0.5, np.float16)
    x = np.full((3, K), -1.0, np.float32)
    x[1] = 1.0
    x[2, 1::2] = 1.0
    check_linear(x, q, scales, None, isa)
    check_linear(np.tile(x, (22, 1)), q, scales, None, isa)  # 66 tokens: the packed int16 path


def test_q8_linear_threads_bitwise_and_rows_independent_of_batch(isa):
    x, q, scales, bias = random_linear(np.random.default_rng(5), M=11, N=203, K=320)
    qx, dx = _core.q8_quantize_activations(x)
    y1 = c_linear(qx, dx, q, scales, bias, threads=1)
    y2 = c_linear(qx, dx, q, scales, bias, threads=2)
    assert np.array_equal(y1.view(np.int32), y2.view(np.int32)), report_diff(y2, y1)
    for t in (0, 5, 10):  # one token alone (the decode path) equals its row inside the batch
        alone = c_linear(qx[t : t + 1].copy(), dx[t : t + 1].copy(), q, scales, bias)
        assert np.array_equal(alone[0].view(np.int32), y1[t].view(np.int32)), report_diff(alone[0], y1[t])


FAST_ISAS = [name for name in ISAS if name not in ("scalar", "avx2")]


@pytest.mark.skipif(not FAST_ISAS or "avx2" not in ISAS, reason="this CPU (or build) has no AVX-VNNI/AMX kernel")
@pytest.mark.parametrize("fast", FAST_ISAS)
@pytest.mark.parametrize("M", [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 258, 515])
def test_vnni_and_amx_equal_avx2_bitwise(fast, M):
    # Both sides of each kernel's thresholds (16 tokens for AVX-VNNI, 32 for AMX) and of every tail of
    # their tiles; for AVX-VNNI the +128 offset and its correction must cancel exactly, extreme values
    # included (rows 0-2 and token 0 below). N = 37 leaves a partial second panel of 16 rows.
    rng = np.random.default_rng(M)
    N, K = 37, 288
    q, scales = random_weight(rng, N, K)
    q[0], q[1, ::2], q[2] = 127, -127, -127
    bias = rng.standard_normal(N).astype(np.float32)
    x = random_activations(rng, M, K)
    x[0, :] = -1.0  # every activation -127: the offset operand at its smallest, 1
    qx, dx = _core.q8_quantize_activations(x)
    out, before = {}, _core.isa()
    try:
        for name in ("avx2", fast):
            _core.set_isa(name)
            out[name] = [c_linear(qx, dx, q, scales, bias, threads=t) for t in (1, 2)]
    finally:
        _core.set_isa(before)
    for y in out["avx2"] + out[fast][1:]:
        assert np.array_equal(out[fast][0].view(np.int32), y.view(np.int32)), report_diff(y, out[fast][0])


@pytest.mark.parametrize("M", [1, 5, 20, 40, 70])
def test_q8_linear_is_exact_for_weights_of_minus_128(isa, M):
    # The converter never writes -128, but a file made elsewhere may hold it; every path (rows, int16
    # panels, AVX-VNNI, AMX by M) must still compute the exact block products, with negative
    # activations against it (the case a sign trick on the weights would get wrong).
    rng = np.random.default_rng(M)
    N, K = 21, 96
    q, scales = random_weight(rng, N, K)
    q[0] = -128
    q[3, ::3] = -128
    q[5, 32:64] = -128
    x = random_activations(rng, M, K, zero_blocks=False)
    x[: (M + 1) // 2] = -np.abs(x[: (M + 1) // 2])
    check_linear(x, q, scales, rng.standard_normal(N).astype(np.float32), isa)


def test_q8_bindings_reject_wrong_inputs():
    rng = np.random.default_rng(0)
    q, scales = random_weight(rng, 8, 64)
    qx, dx = _core.q8_quantize_activations(rng.standard_normal((2, 64)).astype(np.float32))
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.q8_quantize_activations(np.zeros((2, 40), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        _core.q8_quantize_activations(np.zeros((2, 64), np.float64))
    with pytest.raises(ValueError, match="dtype"):
        _core.q8_linear(qx, dx, q, scales, None)  # float16 scales must come as a uint16 view
    with pytest.raises(ValueError, match=r"expected \(8, 2\)"):
        _core.q8_linear(qx, dx, q, np.zeros((8, 3), np.uint16), None)
    with pytest.raises(ValueError, match=r"expected \(8, 64\)|expected \(-?\d+, 64\)"):
        _core.q8_linear(qx, dx, q[:, :32].copy(), scales.view(np.uint16)[:, :1].copy(), None)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.q8_linear(qx, dx, np.asfortranarray(q), scales.view(np.uint16), None)
