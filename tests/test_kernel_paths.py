"""Every code path of the fp32 kernels, on both sides of each threshold that chooses it.

The kernels pick loops by size (cpp/kernels/*_avx2.cpp): a mistake in a path that no test reaches
passes the suite. These shapes are chosen from the kernels' own constants, stated beside each case,
so that every path runs with full and partial tiles, and the oracle is the same float64 NumPy with the
same rounding-error bounds as tests/test_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers import report_diff, use_isa
from test_kernels import attention64  # the float64 oracle of causal attention, owned by test_kernels.py

_core = pytest.importorskip("gptj_ref._core")

U = 2.0**-24
ISAS = _core.available_isas()


def normal(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def run(isa, fn, *args, **kwargs):
    with use_isa(isa):
        return fn(*args, **kwargs)


def assert_within(actual, expected, tol):
    err = np.abs(np.asarray(actual, np.float64) - expected)
    assert np.all(err <= tol), report_diff(actual, expected)


# linear_avx2.cpp: register tiles of kRm = 4 rows of x by kRn = 3 rows of W; x is packed when M > 4;
# M <= kMidM = 64 streams W in chunks of kChunk = 48 rows, M > 64 (prompts) packs W blocks of kNb = 60
# rows; K runs in blocks of kLinearBlockK = 512 and within a block 8 lanes at a time, then a scalar tail.
LINEAR_SHAPES = [
    (4, 47, 8),  # the largest unpacked x; N one short of a W chunk; K one lane group, no tail
    (5, 49, 9),  # x packed; N one past a chunk (a partial second chunk); a one-element K tail
    (64, 50, 513),  # the last M that streams W; K one past a block
    (65, 61, 520),  # the first M of the prompt path; N one past a W block of 60; K = 512 + 8
    (67, 121, 1031),  # prompt path with a partial row tile (67 = 16 * 4 + 3) and a partial W block of 1
    (130, 2, 7),  # prompt path with N below one register tile and K below one lane group
    (70, 180, 1100),  # N = 3 full W blocks; K crosses two block boundaries with a ragged last block
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("M,N,K", LINEAR_SHAPES)
def test_linear_every_path(isa, M, N, K):
    x, w, b = normal(M, (M, K)), normal(N, (N, K)), normal(K, N)
    y = run(isa, _core.linear, x, w, b, threads=2)
    expected = x.astype(np.float64) @ w.T.astype(np.float64) + b
    # Tolerance: any fp32 summation order of K products plus the bias add, gamma_(K+1) times the sum of
    # magnitudes (Higham, Thm 3.1), as in test_kernels.py.
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).T + np.abs(b)
    assert_within(y, expected, 1.01 * (K + 1) * U * magnitude)


def softmax64(x):
    shifted = x.astype(np.float64) - x.max(-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True), shifted


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("N", [1, 7, 8, 9, 16, 23])  # the 8-lane loop, its masked tail, and both
@pytest.mark.parametrize("offset", [0.0, 95.0, 300.0, -300.0])
def test_softmax_of_scores_beyond_exps_range(isa, N, offset):
    # exp overflows float32 above 88.7 and the AVX2 exp clamps its argument at 88: only subtracting the
    # row maximum first keeps scores like these (attention scores can reach them) exact.
    x = normal(N, (3, N), 4.0) + np.float32(offset)
    y = run(isa, _core.softmax, x)
    p, shifted = softmax64(x)
    # Tolerance as in test_kernels.py: (|x - max| + N + 6) u relative to each p, 1.2e-38 absolute.
    assert_within(y, p, 1.1 * (np.abs(shifted) + N + 6) * U * p + 1.2e-38)


# attention_avx2.cpp: queries in groups of kQueryGroup = 4 (shared keys read once per group); dot
# products in 16- and 8-lane steps and a scalar tail; the weighted sum of values 64 columns at a time,
# then 8, then single columns.
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("T,start,d", [(1, 0, 7), (4, 3, 8), (5, 0, 16), (9, 2, 75), (6, 5, 200)])
@pytest.mark.parametrize("score_scale", [1.0, 100.0])
def test_attention_every_path(isa, T, start, d, score_scale):
    # score_scale 100 puts the scores far beyond exp's range (hundreds): a softmax without the row
    # maximum subtracted returns garbage there.
    H = 2
    q = normal(d, (T, H, d), score_scale)
    k, v = normal(d + 1, (H, start + T, d)), normal(d + 2, (H, start + T, d))
    out = run(isa, _core.attention, q, k, v, start)
    expected, magnitude = attention64(q, k, v, start)
    # Tolerance as in test_kernels.py: a score errs by <= (d + 2) u |q|.|k| / sqrt(d), which moves the
    # output (a convex combination of v rows) by at most twice that times max|v|; softmax's own rounding
    # and the weighted sum add (2n + d + 10) u max|v|.
    n = start + T
    tol = np.abs(v).max() * (2.2 * (d + 2) * U * magnitude[..., None] + 1.1 * (2 * n + d + 10) * U * 4)
    assert_within(out, expected, tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 31])  # the 8-lane loop and its masked tail
def test_gelu_new_at_the_constant_it_depends_on(isa, n):
    # Around |x| = 1.5 .. 3 the cubic term 0.044715 x^3 moves gelu_new the most relative to the tolerance;
    # a constant off in its fourth digit (0.0447) moves these outputs by ~1e-5, 30 times the bound.
    x = np.linspace(-3.0, 3.0, n).astype(np.float32) if n > 1 else np.array([2.0], np.float32)
    y = run(isa, _core.gelu_new, x)
    x64 = x.astype(np.float64)
    arg = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
    expected = 0.5 * x64 * (1 + np.tanh(arg))
    # Tolerance as in test_kernels.py: the AVX2 tanh is within 3e-7 absolute, and a few roundings.
    assert_within(y, expected, 0.5 * np.abs(x64) * (3e-7 + 8 * U * np.abs(arg)) + 4 * U * np.abs(expected) + 1e-37)
