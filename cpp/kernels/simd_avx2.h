// Tiny named AVX2/FMA helpers shared by the *_avx2.cpp kernels (and the AVX-VNNI and AMX files, which are
// compiled with more -m flags). Include only from files compiled with -mavx2 -mfma. Vectors are named by
// element type and lane count (f32x8 = __m256). The helpers have internal linkage (an unnamed namespace):
// each file keeps its own copy, so the linker can never hand an AVX2 caller a copy compiled for AVX-512.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/half.h"

namespace gptj::kernels::avx2 {
namespace {

using f32x8 = __m256;

// Sum of the 8 lanes, always in the same order: (lo + hi) pairwise, then 4 -> 2 -> 1.
inline float hsum_f32x8(f32x8 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Largest of the 8 lanes.
inline float hmax_f32x8(f32x8 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// In-register transpose of an 8 x 8 matrix of 32-bit elements: r[i] lane j <- r[j] lane i.
inline void transpose_8x8_i32(__m256i r[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);      // [r0_0 r1_0 r0_1 r1_1 | r0_4 r1_4 r0_5 r1_5]
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);  // [r0_2 r1_2 r0_3 r1_3 | r0_6 .. r1_7]
    }
    for (int i = 0; i < 2; ++i) {
        u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);      // column 0 | column 4, four rows
        u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);      // column 1 | column 5
        u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);  // column 2 | column 6
        u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);  // column 3 | column 7
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
    }
}

// Mask of the first n (0..8) lanes, for loads and stores of a tail.
inline __m256i first_lanes_mask(int64_t n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), idx);
}

// ---- Helpers of the int8 row kernels (q8_rows_avx2.inl, rows_avx512.h) ----

inline __m256i load_i8x32(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// 8 float16 scales -> float32 (F16C, exact).
inline f32x8 load_f16x8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Four rows' (or tokens') block dot products folded into one vector of half-block sums:
// lane i = sum of p_i's lanes 0..3 (elements 0..15 of the block), lane 4 + i = lanes 4..7 (16..31). Exact.
inline __m256i fold_halves_i32x8x4(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
    const __m256i s01 = _mm256_add_epi32(_mm256_unpacklo_epi32(p0, p1), _mm256_unpackhi_epi32(p0, p1));
    const __m256i s23 = _mm256_add_epi32(_mm256_unpacklo_epi32(p2, p3), _mm256_unpackhi_epi32(p2, p3));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(s01, s23), _mm256_unpackhi_epi64(s01, s23));
}

// The full block sums of a fold_halves_i32x8x4 result: lanes [0..3] + [4..7].
inline __m128i add_halves_i32x8(__m256i h) {
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// Scales of a quad of rows, transposed: dq[4 b + i] = float(ws[(n + i) nb + b]) for i < 4, b < nb.
// Eight blocks at a time: each row's 8 scales converted by F16C, then the 4 x 8 block transposed.
inline void quad_scales(float* dq, const uint16_t* ws, int64_t nb) {
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        f32x8 r[4];
        for (int i = 0; i < 4; ++i) r[i] = load_f16x8(ws + i * nb + b);  // row i: [b .. b+7]
        const f32x8 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        const f32x8 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        const f32x8 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xee),  // [b | b+4], [b+1 | b+5]
                            _mm256_shuffle_ps(t1, t3, 0x44),
                            _mm256_shuffle_ps(t1, t3, 0xee)};  // [b+2 | b+6], [b+3 | b+7]
        for (int j = 0; j < 4; ++j) {
            _mm_storeu_ps(dq + 4 * (b + j), _mm256_castps256_ps128(u[j]));
            _mm_storeu_ps(dq + 4 * (b + 4 + j), _mm256_extractf128_ps(u[j], 1));
        }
    }
    for (; b < nb; ++b)
        for (int i = 0; i < 4; ++i) dq[4 * b + i] = f16_to_f32(ws[i * nb + b]);
}

// e^x per lane (Cephes expf): x = n ln2 + r with |r| <= ln2/2, e^r by a degree-5 polynomial, times 2^n.
// Relative error about 2 ulp for x in [-87.3, 88]; inputs are clamped to that range (below it the
// result is the smallest normal 1.2e-38, above it 1.65e38).
inline f32x8 exp_f32x8(f32x8 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447505531f));
    const f32x8 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);     // r = x - n ln2, ln2 split in two
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);  // for an exact first product
    const f32x8 z = _mm256_mul_ps(x, x);
    f32x8 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, z, x), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// tanh per lane: sign(x) (1 - 2 / (e^{2|x|} + 1)). Absolute error below 3e-7 everywhere (the relative
// error grows near 0, where tanh(x) ~ x is tiny next to the 1 that gelu adds to it).
inline f32x8 tanh_f32x8(f32x8 x) {
    const f32x8 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0f));
    const f32x8 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    const f32x8 e = exp_f32x8(_mm256_add_ps(ax, ax));
    const f32x8 t = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                                  _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    return _mm256_or_ps(t, sign);
}

// One softmax row: y = exp(x - max) / sum(exp(x - max)), the tail through masked loads and stores.
// x, y (n), n >= 1; y may alias x.
inline void softmax_row(float* y, const float* x, int64_t n) {
    const int64_t n8 = n / 8 * 8;
    const __m256i tail = first_lanes_mask(n - n8);

    f32x8 mx8 = _mm256_set1_ps(x[0]);
    for (int64_t i = 0; i < n8; i += 8) mx8 = _mm256_max_ps(mx8, _mm256_loadu_ps(x + i));
    float mx = hmax_f32x8(mx8);
    for (int64_t i = n8; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    mx8 = _mm256_set1_ps(mx);

    f32x8 sum8 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
        const f32x8 e = exp_f32x8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx8));
        _mm256_storeu_ps(y + i, e);
        sum8 = _mm256_add_ps(sum8, e);
    }
    if (n8 < n) {
        const f32x8 e = exp_f32x8(_mm256_sub_ps(_mm256_maskload_ps(x + n8, tail), mx8));
        _mm256_maskstore_ps(y + n8, tail, e);
        sum8 = _mm256_add_ps(sum8, _mm256_and_ps(e, _mm256_castsi256_ps(tail)));
    }

    const f32x8 inv = _mm256_set1_ps(1.0f / hsum_f32x8(sum8));
    for (int64_t i = 0; i < n8; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), inv));
    if (n8 < n) _mm256_maskstore_ps(y + n8, tail, _mm256_mul_ps(_mm256_maskload_ps(y + n8, tail), inv));
}

}  // namespace
}  // namespace gptj::kernels::avx2
