"""The int8 block format in NumPy: quantize, dequantize, and an exact emulation of the integer matmul.

This file is the oracle for the C++ int8 kernels and the definition of what a q8 native file means.

Blocks
    A linear weight W [N, K] (nn.Linear layout, `y = x @ W.T`) is cut along its input dimension K into
    blocks of QK = 32 consecutive elements: block b of row n is W[n, 32*b : 32*b + 32]. K must be a
    multiple of QK. Each block has one scale; nothing is shared between rows.

Weights (done once, by `gptj convert`)
    amax = max |w| over the block
    d16  = the smallest float16 >= amax / 127            (the scale, stored as F16 in the file)
    q    = round_half_to_even(float32(w) / float32(d16))  clipped to [-127, 127]   (stored as I8)
    A block of zeros gets d16 = 0 and q = 0: nothing is divided by zero and no NaN appears.
    The file means  w ~= q * float32(d16)  (exact in float32: 7 bits times 11 bits), and that is what
    `dequantize_blocks` returns and what the reference backend runs on a q8 file.

    Why round the scale *up* to float16 rather than to nearest: then |w| / d16 <= 127 for every element,
    so no value is ever clipped and every element is within half a scale of its original,
    |w - q*d16| <= d16/2 (up to the one float32 rounding of the division), for every block, including
    blocks so small that d16 is a float16 subnormal, where round-to-nearest can lose up to half the
    scale's value and clip. The cost is a scale at most one float16 ulp (2^-10 relative) too large.
    q is never -128: the AVX2 `maddubs` sign trick negates int8 values and -(-128) does not fit.
    Weights that are NaN or inf, or so large that amax / 127 exceeds float16's 65504, are rejected.

Activations (done per token, on the fly, by the int8 runtime)
    The same blocks of 32 along K, per row (token), with a float32 scale instead of float16:
    dx = float32(amax) / 127 in float32;  qx = round_half_to_even(x / dx) in float32, clipped to
    [-127, 127]; a block of zeros gets dx = 0 and qx = 0. The division is IEEE float32 (not a multiply
    by the reciprocal), so a C++ quantizer using `_mm256_div_ps` and round-to-nearest-even conversion
    reproduces qx and dx bit for bit.

The integer matmul, for x [T, K] and a q8 weight (q [N, K], d16 [N, K/32]):
    dot[t, n, b] = sum_j qx[t, b, j] * q[n, b, j]                    exact in int32 (|dot| <= 32*127^2)
    y[t, n]      = 0.0f
    for b = 0, 1, ..., K/32 - 1, in this order, every operation rounded to float32 (no fused multiply-add):
        y[t, n] = y[t, n] + float32(dot[t, n, b]) * (float32(d16[n, b]) * dx[t, b])
    y[t, n]      = y[t, n] + bias[n]                                   (when there is a bias)

    The integer parts (qx, dx and every block's dot product) are exact and a C++ kernel must reproduce
    them bit for bit. The float32 sum over blocks is written in one order here; a SIMD kernel that keeps
    several accumulators, splits a block's dot product across lanes or uses FMA adds the same terms in
    another order and differs by float32 rounding only. `q8_linear_error_bound` gives a rigorous bound
    on that difference for any order, any lane split and any use of FMA: it is the tolerance to test a
    kernel with.

Which tensors are quantized: see `is_quantized` (the six linear layers of every block and lm_head).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from .errors import InputError
from .layout import is_linear_weight

QK = 32  # elements per block along the input dimension; one scale per block
QMAX = 127  # int8 range used: [-127, 127], never -128
F16_MAX = float(np.finfo(np.float16).max)  # 65504: the largest finite float16 scale

# Rows are quantized a slice at a time so a huge tensor (lm_head: 50400 x 4096 float32 = 825 MB) is not
# copied several times over by the temporaries of abs, divide and round: at most this many elements per
# temporary.
CHUNK_ELEMENTS = 1 << 20


def is_quantized(name: str) -> bool:
    """True for the tensors a q8 file stores as int8 blocks: the six linear weights of every block
    (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, mlp.fc_in, mlp.fc_out) and lm_head.weight.

    Everything else stays float: LayerNorm weights and biases, linear biases, and the embedding table
    transformer.wte.weight (it is a row lookup, never a matmul, so int8 would save no bandwidth per token).
    """
    return is_linear_weight(name)


# -------------------------------------------------------------------------------------------------
# Weights
# -------------------------------------------------------------------------------------------------


def _check_blocks(shape: Tuple[int, ...], qk: int, what: str) -> int:
    """Number of blocks along the last axis; clear errors for shapes that cannot be blocked."""
    if not isinstance(qk, int) or qk <= 0:
        raise InputError(f"block size must be a positive integer, got {qk!r}")
    if len(shape) != 2:
        raise InputError(f"{what} must be 2-D [rows, K], got shape {shape}")
    K = shape[1]
    if K % qk != 0:
        raise InputError(
            f"{what} has K = {K} input elements per row, which is not a multiple of the block "
            f"size {qk}; int8 blocks need K % {qk} == 0 (store this tensor as f16 or f32 instead)"
        )
    return K // qk


def _row_chunk(K: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(K, 1))


def _weight_row_blocks(w: np.ndarray, qk: int, divisor: float, scale: str, dtype: str):
    """The weight w [N, K] (K a multiple of qk) in slices of rows, so the temporaries stay small whatever N
    is (w may be a memory-mapped array; it is only read): (start, stop, blocks [n, nb, qk] float32,
    amax [n, nb]) for each slice. InputError at a NaN or an infinity, and at a block whose `scale`,
    amax / divisor, would overflow float16."""
    N, K = w.shape
    step = _row_chunk(K)
    for start in range(0, N, step):
        stop = min(start + step, N)
        blocks = np.asarray(w[start:stop], dtype=np.float32).reshape(stop - start, K // qk, qk)
        if not np.isfinite(blocks).all():
            bad = np.argwhere(~np.isfinite(blocks))[0]
            raise InputError(
                f"the weight holds {blocks[tuple(bad)]} at row {start + bad[0]}, column "
                f"{bad[1] * qk + bad[2]}; only finite weights can be quantized"
            )
        amax = np.abs(blocks).max(axis=-1)
        if amax.max(initial=0.0) > divisor * F16_MAX:
            raise InputError(
                f"a weight block has max |w| = {amax.max():.4g}; {scale} does not fit in float16 "
                f"(max {F16_MAX}); such weights cannot be stored as {dtype}"
            )
        yield start, stop, blocks, amax


def weight_scales(amax: np.ndarray) -> np.ndarray:
    """float16 block scales from block maxima: the smallest float16 >= amax / 127, elementwise.

    amax >= 0 (float32). Round to nearest first, then step up one float16 ulp where that fell below:
    the comparison 127 * d16 < amax is exact in float64 (11 bits times 7 bits).
    """
    amax64 = np.asarray(amax, dtype=np.float64)
    d16 = (amax64 / QMAX).astype(np.float16)
    low = d16.astype(np.float64) * QMAX < amax64
    d16[low] = np.nextafter(d16[low], np.float16(np.inf))
    return d16


def quantize_blocks(w: np.ndarray, qk: int = QK) -> Tuple[np.ndarray, np.ndarray]:
    """Quantize a weight matrix: w [N, K] float -> (q int8 [N, K], scales float16 [N, K/qk]).

    See the module docstring for the exact rule. Rows are processed in slices, so the temporaries stay
    small whatever N is (w itself may be a memory-mapped array; it is only read).
    """
    w = np.asarray(w)
    n_blocks = _check_blocks(w.shape, qk, "the weight")
    N, K = w.shape
    q = np.empty((N, K), dtype=np.int8)
    scales = np.empty((N, n_blocks), dtype=np.float16)
    for start, stop, blocks, amax in _weight_row_blocks(w, qk, QMAX, "its scale max|w|/127", "q8"):
        d16 = weight_scales(amax)  # [n, nb]
        scales[start:stop] = d16
        q[start:stop] = _round_to_int8(blocks, d16.astype(np.float32)).reshape(stop - start, K)
    return q, scales


def _round_to_int8(blocks: np.ndarray, d: np.ndarray) -> np.ndarray:
    """round_half_to_even(blocks / d) clipped to [-127, 127] as int8; blocks with d == 0 give 0.

    blocks [..., nb, qk] float32, d [..., nb] float32 >= 0.
    """
    divisor = np.where(d > 0, d, np.float32(1.0))[..., None]  # [..., nb, 1]; zero blocks hold zeros
    v = np.rint(blocks / divisor)  # float32 division, then ties to even
    return np.clip(v, -QMAX, QMAX).astype(np.int8)


def dequantize_blocks(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """What a q8 tensor means: q [N, K] int8, scales [N, K/qk] float16 -> q * float32(scale), float32 [N, K].

    Every product is exact in float32.
    """
    q, scales = np.asarray(q), np.asarray(scales)
    qk = _block_size_of(q.shape, scales.shape)
    N, K = q.shape
    out = np.empty((N, K), dtype=np.float32)
    step = _row_chunk(K)
    for start in range(0, N, step):
        stop = min(start + step, N)
        blocks = q[start:stop].reshape(stop - start, K // qk, qk).astype(np.float32)  # [n, nb, qk]
        out[start:stop] = (blocks * scales[start:stop].astype(np.float32)[..., None]).reshape(stop - start, K)
    return out


def _block_size_of(q_shape, scales_shape) -> int:
    """The block size implied by a weight and its scales, with clear errors when they disagree."""
    if len(q_shape) != 2 or len(scales_shape) != 2:
        raise InputError(f"int8 weights and scales must both be 2-D, got {q_shape} and {scales_shape}")
    N, K = q_shape
    if scales_shape[0] != N or scales_shape[1] == 0 or K % scales_shape[1] != 0:
        raise InputError(
            f"scales of shape {scales_shape} do not fit an int8 weight of shape {q_shape}: "
            f"expected [{N}, K/block] with K = {K}"
        )
    return K // scales_shape[1]


# -------------------------------------------------------------------------------------------------
# Activations and the integer matmul
# -------------------------------------------------------------------------------------------------


def quantize_activations(x: np.ndarray, qk: int = QK) -> Tuple[np.ndarray, np.ndarray]:
    """Quantize activations per token: x [T, K] float32 -> (qx int8 [T, K], dx float32 [T, K/qk]).

    dx = max|x| / 127 in float32 per block (not rounded to float16); qx = round_half_to_even(x / dx),
    clipped to [-127, 127]; zero blocks give dx = 0, qx = 0.
    """
    x = np.asarray(x)
    n_blocks = _check_blocks(x.shape, qk, "the activations")
    T, K = x.shape
    blocks = np.asarray(x, dtype=np.float32).reshape(T, n_blocks, qk)  # [T, nb, qk]
    if not np.isfinite(blocks).all():
        raise InputError("the activations hold NaN or inf; only finite activations can be quantized")
    dx = np.abs(blocks).max(axis=-1) / np.float32(QMAX)  # [T, nb], float32 division
    return _round_to_int8(blocks, dx).reshape(T, K), dx


def block_dots(qx: np.ndarray, q: np.ndarray, qk: int = QK) -> np.ndarray:
    """Every block's integer dot product: qx [T, K], q [N, K] int8 (or wider) -> dot [T, N, K/qk] int32, exact."""
    T, K = qx.shape
    N = q.shape[0]
    n_blocks = K // qk
    a = qx.reshape(T, n_blocks, qk).astype(np.int32)  # [T, nb, qk]
    b = q.reshape(N, n_blocks, qk).astype(np.int32)  # [N, nb, qk]
    return np.einsum("tbj,nbj->tnb", a, b)  # [T, N, nb]; |dot| <= 32 * 127 * 127 < 2^31


def q8_linear(x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact emulation of the int8 linear layer: x [..., K] float32 -> y [..., N] float32.

    q [N, K] int8 and scales [N, K/qk] float16 as stored in a q8 file; bias [N] float32 or None. x is
    quantized with `quantize_activations`, block dot products are exact int32, and the blocks are summed
    in float32 in order b = 0, 1, ... as the module docstring states.
    """
    x, q, scales = np.asarray(x), np.asarray(q), np.asarray(scales)
    qk = _block_size_of(q.shape, scales.shape)
    N, K = q.shape
    if x.ndim == 0 or x.shape[-1] != K:
        raise InputError(
            f"activations of shape {x.shape} do not fit an int8 weight of shape {q.shape}: "
            f"the last axis must be K = {K}"
        )
    if bias is not None and np.shape(bias) != (N,):
        raise InputError(
            f"bias of shape {np.shape(bias)} does not fit an int8 weight of shape {q.shape}: expected ({N},)"
        )
    lead = x.shape[:-1]
    qx, dx = quantize_activations(x.reshape(-1, K), qk)  # [T, K], [T, nb]
    dw = scales.astype(np.float32)  # [N, nb]
    y = np.zeros((qx.shape[0], N), dtype=np.float32)  # [T, N]
    for start in range(0, N, _row_chunk(K)):  # slices of output rows bound the int32 temporaries
        stop = min(start + _row_chunk(K), N)
        dots = block_dots(qx, q[start:stop], qk).astype(np.float32)  # [T, n, nb], exact in float32 (< 2^24)
        acc = np.zeros((qx.shape[0], stop - start), dtype=np.float32)
        for b in range(K // qk):
            acc += dots[:, :, b] * (dw[None, start:stop, b] * dx[:, b, None])
        y[:, start:stop] = acc
    if bias is not None:
        y += np.asarray(bias, dtype=np.float32)
    return y.reshape(*lead, N)


def q8_linear_error_bound(
    x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: Optional[np.ndarray] = None, lanes: int = QK
) -> np.ndarray:
    """A rigorous bound on |kernel - q8_linear| for any kernel that computes the same exact integer
    products but sums them in float32 in another order: y [..., N] float64.

    `lanes` is how many partial sums a kernel may split each block's dot product into before converting
    to float32: 1 if it reduces every block to one int32 first, 8 for an AVX2 kernel that keeps 8 int32
    lanes per block; the default (the block size) covers any split. With u = 2^-24, n_blocks = K/qk and
    m = n_blocks * lanes + 3 (the partial sums, two scale products and the bias add):
        bound[t, n] = 2 * gamma_m * (sum_b |d16[n,b] * dx[t,b]| * sum_j |qx[t,b,j] * q[n,b,j]| + |bias[n]|),
        gamma_m = m*u / (1 - m*u).
    The sum of absolute products covers any split of a block's dot product into lanes; the factor 2 covers
    both the emulation's error and the kernel's (each is at most gamma_m times that sum). It is a worst
    case: typical differences are a thousand times smaller.
    """
    x, q, scales = np.asarray(x), np.asarray(q), np.asarray(scales)
    qk = _block_size_of(q.shape, scales.shape)
    N, K = q.shape
    lead = x.shape[:-1]
    qx, dx = quantize_activations(np.asarray(x, dtype=np.float32).reshape(-1, K), qk)
    abs_dots = block_dots(np.abs(qx.astype(np.int16)), np.abs(q.astype(np.int16)), qk)  # |-128| = 128 needs int16
    abs_scales = np.abs(scales.astype(np.float64))  # q4 scales may be negative
    total = np.einsum("tnb,nb,tb->tn", abs_dots.astype(np.float64), abs_scales, dx.astype(np.float64))
    if bias is not None:
        total = total + np.abs(np.asarray(bias, dtype=np.float64))
    m = (K // qk) * lanes + 3
    u = 2.0**-24
    gamma = m * u / (1 - m * u)
    return (2 * gamma * total).reshape(*lead, N)


# -------------------------------------------------------------------------------------------------
# q4: 4-bit blocks
# -------------------------------------------------------------------------------------------------
#
# The same blocks of QK = 32 along K with one float16 scale d16 each, and 4-bit values q in [-8, 7]:
#     w ~= q * float32(d16)                      (exact in float32)
# Stored as u = q + 8 in [0, 15], two a byte: byte j (j < 16) of a block holds u[j] in its low nibble
# and u[16 + j] in its high nibble (see cpp/kernels/q4.h), so the packed weight is uint8 [N, K/2].
#
# The scale: per block, with m the signed w of largest |w|, the candidate scales d = m / -c for c in
# Q4_DIVISORS put m on -c (so the grid's extra negative step, -8, serves whichever sign m has: a scale
# may be negative); for each, q = clip(round(w / d), -8, 7) and then the least-squares scale for that q,
# d = sum(w q) / sum(q q), rounded to float16; the block keeps the (q, d16) with the smallest squared
# error sum (w - q d16)^2 (the first on ties; c = 8 first, which is ggml's q4_0 rule before the refit).
# benchmarks/q4_formats.py measures this against the other candidates. A block of zeros gets d16 = 0
# and q = 0.
# The activations and the integer matmul are q8's, on the unpacked q: a q4 linear is q8_linear on
# q4_unpack(values) with the same scales, bit for bit.

Q4_MIN, Q4_MAX = -8, 7
Q4_DIVISORS = (8.0, 7.0, 7.25, 7.5, 7.75, 8.5, 9.0, 9.5, 10.0, 11.0, 12.0)


def q4_quantize_blocks(w: np.ndarray, qk: int = QK) -> Tuple[np.ndarray, np.ndarray]:
    """w [N, K] float -> (values uint8 [N, K/2], scales float16 [N, K/qk]); see the q4 notes above."""
    w = np.asarray(w)
    n_blocks = _check_blocks(w.shape, qk, "the weight")
    N, K = w.shape
    values = np.empty((N, K // 2), dtype=np.uint8)
    scales = np.empty((N, n_blocks), dtype=np.float16)
    for start, stop, blocks, amax in _weight_row_blocks(w, qk, Q4_DIVISORS[0], "its 4-bit scale", "q4"):
        q, d16 = _q4_best_scale(blocks, amax)
        scales[start:stop] = d16
        values[start:stop] = q4_pack(q.reshape(stop - start, K))
    return values, scales


def _q4_best_scale(blocks: np.ndarray, amax: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(q int8 [..., nb, qk] in [-8, 7], d16 float16 [..., nb]) minimising each block's squared error."""
    idx = np.abs(blocks).argmax(axis=-1)[..., None]
    extreme = np.take_along_axis(blocks, idx, axis=-1)[..., 0]  # the signed w of largest |w|
    best_err = np.full(amax.shape, np.inf, dtype=np.float64)
    best_q = np.zeros(blocks.shape, dtype=np.int8)
    best_d = np.zeros(amax.shape, dtype=np.float16)
    for c in Q4_DIVISORS:
        d = extreme / np.float32(-c)  # the extreme lands on -c
        q = np.clip(np.rint(blocks / np.where(d != 0, d, 1)[..., None]), Q4_MIN, Q4_MAX)  # float32
        qq = (q * q).sum(axis=-1, dtype=np.float64)
        ls = np.where(qq > 0, (blocks * q).sum(axis=-1, dtype=np.float64) / np.where(qq > 0, qq, 1), 0.0)
        d16 = np.clip(ls, -F16_MAX, F16_MAX).astype(np.float16)  # least squares for this q
        err = ((blocks - q * d16.astype(np.float32)[..., None]).astype(np.float64) ** 2).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q[better] = q[better].astype(np.int8)
        best_d[better] = d16[better]
    return best_q, best_d


def q4_pack(q: np.ndarray, qk: int = QK) -> np.ndarray:
    """q int [N, K] in [-8, 7] -> packed uint8 [N, K/2] (u = q + 8; byte j of a block: u[j] | u[16+j] << 4)."""
    N, K = q.shape
    u = (np.asarray(q, dtype=np.int16) + 8).astype(np.uint8).reshape(N, K // qk, 2, qk // 2)
    return (u[:, :, 0, :] | (u[:, :, 1, :] << 4)).reshape(N, K // 2)


def q4_unpack(values: np.ndarray, qk: int = QK) -> np.ndarray:
    """packed uint8 [N, K/2] -> q int8 [N, K] in [-8, 7], a slice of rows at a time."""
    values = np.asarray(values)
    if values.ndim != 2 or values.dtype != np.uint8 or values.shape[1] % (qk // 2):
        raise InputError(
            f"q4 values must be uint8 [N, K/2] with K a multiple of {qk}, got {values.dtype} {list(values.shape)}"
        )
    N, half = values.shape
    out = np.empty((N, 2 * half), dtype=np.int8)
    step = _row_chunk(2 * half)
    for start in range(0, N, step):
        v = values[start : start + step].reshape(-1, half // (qk // 2), qk // 2)
        lo = (v & 0x0F).astype(np.int8) - 8
        hi = (v >> 4).astype(np.int8) - 8
        out[start : start + step] = np.concatenate([lo, hi], axis=-1).reshape(-1, 2 * half)
    return out


def q4_dequantize_blocks(values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """What a q4 tensor means: (q4_unpack(values) * float32(scales) blockwise), float32 [N, K]."""
    return dequantize_blocks(q4_unpack(values), scales)


def q4_linear(x: np.ndarray, values: np.ndarray, scales: np.ndarray, bias: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact emulation of the q4 linear layer: q8_linear on the unpacked values (see the q4 notes)."""
    return q8_linear(x, q4_unpack(values), scales, bias)
