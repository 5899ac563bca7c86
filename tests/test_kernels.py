"""Every C++ fp32 kernel at every level (the levels above AVX2 run the AVX2 ones) against NumPy on drawn
shapes (odd sizes hit the tail loops).

Oracles are computed in float64 from the same fp32 inputs, and each tolerance is a rounding-error bound
for the kernel's fp32 arithmetic, stated beside the test. u = 2^-24 is the fp32 unit roundoff.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import report_diff, use_isa

_core = pytest.importorskip("gptj_ref._core")

U = 2.0**-24
ISAS = _core.available_isas()
FAST = settings(max_examples=30, deadline=None)


def normal(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def assert_within(actual, expected, tol):
    """|actual - expected| <= tol elementwise (tol broadcasts), with the worst element in the message."""
    err = np.abs(np.asarray(actual, np.float64) - expected)
    assert np.all(err <= tol), (
        report_diff(actual, expected)
        + f"; tolerance there {np.broadcast_to(tol, err.shape).flat[np.argmax(err - tol)]:.3e}"
    )


# --------------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(
    M=st.integers(1, 40), N=st.integers(1, 40), K=st.integers(1, 1100), bias=st.booleans(), seed=st.integers(0, 2**31)
)
def test_linear_matches_numpy(isa, M, N, K, bias, seed):
    # K up to 1100 crosses the kLinearBlockK = 512 boundary twice with a ragged last block; M up to 40
    # and N up to 40 cover every partial register tile (4 x 3), the decode loop (M <= 16) and the
    # prompt loop with a partial W block (60 rows).
    x, w, b = normal(seed, (M, K)), normal(seed + 1, (N, K)), normal(seed + 2, N)
    with use_isa(isa):
        y = _core.linear(x, w, b if bias else None)
    expected = x.astype(np.float64) @ w.T.astype(np.float64) + (b if bias else 0.0)
    # Tolerance: any order of fp32 summation of K products then one bias add errs by at most
    # gamma_(K+1) = (K+1) u / (1 - (K+1) u) times the sum of the magnitudes (Higham, Thm 3.1 / eq. 3.5).
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).T + (np.abs(b) if bias else 0.0)
    assert y.shape == (M, N) and y.dtype == np.float32
    assert_within(y, expected, 1.01 * (K + 1) * U * magnitude)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M,N,K", [(1, 1000, 700), (3, 37, 1031), (13, 100, 600), (64, 301, 1500)])
def test_linear_is_bitwise_identical_for_any_thread_count(isa, M, N, K):
    x, w, b = normal(0, (M, K)), normal(1, (N, K)), normal(2, N)
    with use_isa(isa):
        one = _core.linear(x, w, b, threads=1)
        two = _core.linear(x, w, b, threads=2)
        three = _core.linear(x, w, b, threads=3)
    assert np.array_equal(one, two) and np.array_equal(one, three), report_diff(two, one)


@pytest.mark.skipif("avx2" not in ISAS, reason="needs AVX2+FMA")
def test_avx2_linear_row_does_not_depend_on_the_batch():
    # The AVX2 kernel's per-element operation sequence depends on K only: decoding a token alone (the
    # M <= 4 path) gives the same bits as the same row inside a prompt (the blocked path).
    x, w = normal(3, (21, 1100)), normal(4, (130, 1100))
    with use_isa("avx2"):
        batch = _core.linear(x, w)
        rows = np.concatenate([_core.linear(x[i : i + 1], w) for i in range(21)])
    assert np.array_equal(batch, rows), report_diff(rows, batch)


# --------------------------------------------------------------------------------------------------
# layer norm, gelu_new, softmax, residual add
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(M=st.integers(1, 6), N=st.integers(1, 300), offset=st.floats(-4, 4), seed=st.integers(0, 2**31))
def test_layer_norm_matches_numpy(isa, M, N, offset, seed):
    x = normal(seed, (M, N), 3.0) + np.float32(offset)
    g, b = 1 + normal(seed + 1, N, 0.1), normal(seed + 2, N, 0.1)
    with use_isa(isa):
        y = _core.layer_norm(x, g, b, 1e-5)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    std = np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    xhat = (x64 - mean) / std
    # Tolerance: the mean is an fp32 sum of N terms (error <= N u (|mean| + std)), so x - mean errs by
    # about N u (|mean| + |x|), i.e. xhat by N u (|xhat| + 2 |mean| / std) in units of std; the variance
    # adds N u |xhat|, then three roundings of the scale-and-shift. The row's own |mean| / std matters,
    # not only the offset: with N = 2 a row like [2.73, 2.58] has |mean| / std = 37 (hypothesis found it).
    tol = 4 * N * U * (np.abs(xhat) + 2 + 2 * np.abs(mean) / std) * np.abs(g) + 4 * U * np.abs(b) + 1e-30
    assert_within(y, xhat * g + b, tol)


def gelu_new64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(n=st.integers(1, 200), scale=st.sampled_from([0.01, 1.0, 5.0, 30.0]), seed=st.integers(0, 2**31))
def test_gelu_new_matches_numpy(isa, n, scale, seed):
    x = normal(seed, n, scale)
    with use_isa(isa):
        y = _core.gelu_new(x)
    # Tolerance: 0.5 x (1 + t) with t = tanh(.) off by at most 3e-7 absolute (the AVX2 tanh is built from
    # exp; libm's is within 1 ulp) gives 0.5 |x| 3e-7; the rounding of the constant sqrt(2/pi) and of
    # x^3 moves the tanh argument by ~4 u relative, i.e. t by ~4 u |arg|; plus 4 ulp of the result.
    arg = np.sqrt(2 / np.pi) * np.abs(x.astype(np.float64) + 0.044715 * x.astype(np.float64) ** 3)
    tol = (
        0.5 * np.abs(x) * (3e-7 + 8 * U * arg / np.cosh(np.minimum(arg, 40)) ** 2)
        + 4 * U * np.abs(gelu_new64(x))
        + 1e-37
    )
    assert_within(y, gelu_new64(x), tol)


@pytest.mark.parametrize("isa", ISAS)
def test_gelu_new_special_values(isa):
    x = np.array([0, -0.0, 1e-30, -1e-30, 10, -10, 88, -88, 1e4, -1e4, 3.4e38**0.3], np.float32)
    with use_isa(isa):
        y = _core.gelu_new(x)
    assert np.all(np.isfinite(y))
    assert y[0] == 0 and y[4] == pytest.approx(10) and abs(y[5]) < 1e-20 and y[8] == np.float32(1e4)


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(M=st.integers(1, 5), N=st.integers(1, 300), scale=st.sampled_from([0.1, 3.0, 20.0]), seed=st.integers(0, 2**31))
def test_softmax_matches_numpy(isa, M, N, scale, seed):
    x = normal(seed, (M, N), scale)
    with use_isa(isa):
        y = _core.softmax(x)
    shifted = x.astype(np.float64) - x.max(-1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)
    # Tolerance, relative to each p: x - max rounds with error u |x - max|, which exp turns into a relative
    # error of u |x - max|; exp itself is within 2 ulp (AVX2) or 1 ulp (libm); the fp32 sum of N terms
    # errs by N u relative; the final product adds 1 ulp. Total (|x - max| + N + 6) u p, plus 1.2e-38
    # absolute: the AVX2 exp returns the smallest normal float for arguments below -87.3.
    tol = 1.1 * (np.abs(shifted) + N + 6) * U * p + 1.2e-38
    assert_within(y, p, tol)
    assert np.allclose(y.sum(-1), 1.0, rtol=0, atol=(N + 8) * U)


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(n=st.integers(1, 100), seed=st.integers(0, 2**31))
def test_residual_add_is_exactly_a_plus_m_plus_x(isa, n, seed):
    x, a, m = normal(seed, n), normal(seed + 1, n), normal(seed + 2, n)
    with use_isa(isa):
        y = _core.residual_add(x, a, m)
    assert np.array_equal(y, (a + m) + x), report_diff(y, (a + m) + x)  # the same two fp32 adds


# --------------------------------------------------------------------------------------------------
# rotary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(T=st.integers(1, 7), n_head=st.integers(1, 4), d_head_pairs=st.integers(1, 20), data=st.data())
def test_rotary_matches_reference(isa, T, n_head, d_head_pairs, data):
    from gptj_ref.reference import rotary, rotary_tables

    d_head = 2 * d_head_pairs
    n_rot = 2 * data.draw(st.integers(0, d_head_pairs), label="n_rot/2")
    pos = np.asarray(data.draw(st.lists(st.integers(0, 99), min_size=T, max_size=T), label="pos"), np.int64)
    sin, cos = rotary_tables(100, max(n_rot, 2))
    sin, cos = np.ascontiguousarray(sin[:, : n_rot // 2]), np.ascontiguousarray(cos[:, : n_rot // 2])
    x = normal(int(pos.sum()), (T, n_head * d_head))
    with use_isa(isa):
        y = _core.rotary(x, sin, cos, pos, n_head=n_head, n_rot=n_rot)
    heads = x.reshape(1, T, n_head, d_head)
    expected = heads.copy()
    if n_rot:
        expected[..., :n_rot] = rotary(heads[..., :n_rot], sin[pos][None], cos[pos][None])
    expected = expected.reshape(T, -1)
    # Tolerance: the reference rounds two products and their sum (3 roundings); the kernel may fuse one
    # product into the add (FMA), so they differ by at most 2 u (|x0 cos| + |x1 sin|) <= 2 u * 2 |x|max-pair.
    pair_mag = np.repeat(np.abs(heads).reshape(T, n_head, -1, 2).sum(-1), 2, axis=-1).reshape(T, -1)
    assert_within(y, expected, 2 * U * pair_mag)
    # The pass-through dims are untouched, and every pair keeps its length.
    keep = np.ones(d_head, bool)
    keep[:n_rot] = False
    assert np.array_equal(y.reshape(T, n_head, d_head)[..., keep], heads[0][..., keep])


# --------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------


def attention64(q, k, v, start):
    """Causal attention in float64, q (T, H, d), k, v (H, S, d) -> (T, H, d): query t sees slots
    [0, start + t]. Also, for each (query, head), the largest |q| . |k_j| / sqrt(d), which the error
    bounds scale with. tests/test_kernel_paths.py uses it too."""
    T, H, d = q.shape
    out = np.zeros((T, H, d))
    bound = np.zeros((T, H))
    for t in range(T):
        n = start + t + 1
        for h in range(H):
            s = k[h, :n].astype(np.float64) @ q[t, h] / np.sqrt(d)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v[h, :n]
            bound[t, h] = (np.abs(k[h, :n]).astype(np.float64) @ np.abs(q[t, h])).max() / np.sqrt(d)
    return out, bound


@pytest.mark.parametrize("isa", ISAS)
@FAST
@given(
    T=st.integers(1, 6),
    start=st.integers(0, 40),
    H=st.integers(1, 3),
    d=st.sampled_from([1, 7, 8, 16, 33, 64]),
    slack=st.integers(0, 5),
    seed=st.integers(0, 2**31),
)
def test_attention_matches_numpy(isa, T, start, H, d, slack, seed):
    S = start + T + slack  # cache slots beyond start + T hold garbage the kernel must not read
    q, k, v = normal(seed, (T, H, d), 2.0), normal(seed + 1, (H, S, d), 2.0), normal(seed + 2, (H, S, d))
    k[:, start + T :] = np.nan
    v[:, start + T :] = np.nan
    with use_isa(isa):
        out = _core.attention(q, k, v, start)
    expected, score_mag = attention64(q, k, v, start)
    # Tolerance: each score (a d-term fp32 dot product, then / sqrt(d)) errs by <= (d + 2) u |q||k| / sqrt(d);
    # a score error e changes the weights by a relative factor <= e^(2e) - 1 ~ 2e, so the output (a convex
    # combination of v rows) moves by <= 2e max|v|; softmax's own rounding (see test_softmax) and the
    # n-term weighted sum of v add (n + d + 10) u max|v|.
    n = start + T
    tol = np.abs(v[:, :n]).max() * (2.2 * (d + 2) * U * score_mag[..., None] + 1.1 * (2 * n + d + 10) * U * 4)
    assert_within(out, expected, tol)


@pytest.mark.parametrize("isa", ISAS)
def test_attention_is_causal_and_thread_count_independent(isa):
    T, H, d, S = 9, 3, 40, 12
    q, k, v = normal(5, (T, H, d)), normal(6, (H, S, d)), normal(7, (H, S, d))
    with use_isa(isa):
        full = _core.attention(q, k, v, 2, threads=1)
        two = _core.attention(q, k, v, 2, threads=2)
        k2, v2 = k.copy(), v.copy()
        k2[:, 6:], v2[:, 6:] = 100.0, -100.0  # change slots 6.. : queries 0..3 (slots 2..5) must not notice
        changed = _core.attention(q, k2, v2, 2, threads=2)
    assert np.array_equal(full, two), report_diff(two, full)
    assert np.array_equal(full[:4], changed[:4])
    assert not np.array_equal(full[4:], changed[4:])


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("d", [40, 67, 256])
def test_attention_of_a_query_does_not_depend_on_its_neighbours(isa, d):
    # The AVX2 kernel reads shared keys once for groups of 4 queries; each query's output must still
    # be bitwise what it is when decoded alone (T = 1), for every position in and across the groups.
    T, start, H = 11, 3, 2
    q, k, v = normal(21, (T, H, d), 2.0), normal(22, (H, start + T, d), 2.0), normal(23, (H, start + T, d))
    with use_isa(isa):
        together = _core.attention(q, k, v, start)
        alone = [_core.attention(q[t : t + 1].copy(), k, v, start + t)[0] for t in range(T)]
        half = _core.attention_f16kv(
            q, k.astype(np.float16).view(np.uint16), v.astype(np.float16).view(np.uint16), start
        )
        half_alone = [
            _core.attention_f16kv(
                q[t : t + 1].copy(),
                k.astype(np.float16).view(np.uint16),
                v.astype(np.float16).view(np.uint16),
                start + t,
            )[0]
            for t in range(T)
        ]
    assert np.array_equal(together, np.stack(alone)), report_diff(together, np.stack(alone))
    assert np.array_equal(half, np.stack(half_alone)), report_diff(half, np.stack(half_alone))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T,start,d", [(1, 0, 8), (5, 7, 40), (9, 0, 67), (3, 30, 256)])
def test_attention_over_float16_cache_equals_attention_over_its_widened_values(isa, T, start, d):
    # The float16 cache's kernel widens each key and value exactly where it reads it, and does nothing
    # else differently, so it must equal the float32 kernel on the widened cache bit for bit.
    H, S = 3, start + T + 2
    q = normal(11, (T, H, d), 2.0)
    k16, v16 = normal(12, (H, S, d), 2.0).astype(np.float16), normal(13, (H, S, d)).astype(np.float16)
    with use_isa(isa):
        half = _core.attention_f16kv(q, k16.view(np.uint16), v16.view(np.uint16), start, threads=2)
        wide = _core.attention(q, k16.astype(np.float32), v16.astype(np.float32), start, threads=1)
    assert np.array_equal(half.view(np.int32), wide.view(np.int32)), report_diff(half, wide)


def float16_rounding_cases():
    """Random magnitudes over the whole half range and beyond, every exact tie between neighbouring halves
    (where round-to-nearest-even decides), the halves themselves, subnormals, overflow and signed zero."""
    rng = np.random.default_rng(3)
    wide = (rng.standard_normal(20000) * 10.0 ** rng.integers(-9, 6, 20000)).astype(np.float32)
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    ties = ((halves[:-1].astype(np.float64) + halves[1:]) / 2).astype(np.float32)  # exact in float32
    special = np.array(
        [
            65504,
            65519.996,
            65520,
            65536,
            1e9,
            6.1035156e-05,
            5.9604645e-08,
            2.9802322e-08,
            2.9802326e-08,
            1e-12,
            0.0,
            -0.0,
            np.inf,
            -np.inf,
        ],
        np.float32,
    )
    return np.concatenate([wide, halves, ties, -ties, special])


@pytest.mark.parametrize("isa", ISAS)
def test_f32_to_f16_rounds_as_numpy(isa):
    x = float16_rounding_cases()
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    with use_isa(isa):
        got = _core.f32_to_f16(x)
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, f"{bad.size} differ, e.g. x={x[bad[:3]]} got {got[bad[:3]]} expected {expected[bad[:3]]}"


# --------------------------------------------------------------------------------------------------
# the Python boundary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda x: x.astype(np.float64), "dtype float64, expected float32"),
        (lambda x: np.asfortranarray(x), "not C-contiguous"),
        (lambda x: x[:, :3], "not C-contiguous"),
        (lambda x: x[None], "shape (1, 4, 5), expected (-1, -1)"),
    ],
)
def test_kernels_reject_arrays_they_would_have_to_copy(make_bad, message):
    x, w = normal(0, (4, 5)), normal(1, (3, 5))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _core.linear(make_bad(x), w)


def test_linear_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"w has shape \(3, 6\), expected \(-1, 5\)"):
        _core.linear(normal(0, (4, 5)), normal(1, (3, 6)))
    with pytest.raises(ValueError, match=r"b has shape \(4,\), expected \(3,\)"):
        _core.linear(normal(0, (4, 5)), normal(1, (3, 5)), normal(2, 4))


def test_isa_switch():
    with use_isa("scalar"):
        assert _core.isa() == "scalar"
    with pytest.raises(ValueError, match="unknown kernel ISA"):
        _core.set_isa("sse9")


def test_stream_read_sums():
    x = np.arange(1000, dtype=np.float32)
    for isa in ISAS:
        with use_isa(isa):
            assert _core.stream_read(x, threads=2) == pytest.approx(999 * 1000 / 2)
