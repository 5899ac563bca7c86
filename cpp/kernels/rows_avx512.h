// The AVX-512 row kernel of q8 (q8_avx512.cpp): decode and short inputs, the weights read straight from
// the file in their stored layout, four rows (a quad) at a time. It is written over a format policy
// (Q8Bytes: how a step of four blocks unpacks, the offset c, the bytes of a block) for any format of
// 32-value blocks with one float16 scale that unpacks to unsigned bytes. As in simd_avx2.h, everything
// here has internal linkage. (q4's AVX-512 kernel reads a packed layout instead: q4_avx512.cpp.)
//
// The kernel multiplies unsigned bytes u = q + c with the int8 activations (q8: c = 128, the stored byte
// with its sign bit flipped), because vpdpbusd multiplies u8 by s8 and sums four products into each int32
// lane, exactly. The offset comes back out once per block with the activations' block sum:
//     d = sum_j qx_j q_j = sum_j qx_j u_j - c sum_j qx_j       exact in int32: |sum_j qx_j u_j| <= 32 * 127 * 255
// and then each output (t, n) is one float32 chain over the blocks in order,
//     acc = fma(float(d_b), dw_b * dx_b, acc),   y = acc + bias,
// the chain of every other level, so all levels agree bitwise.
//
// One step covers four blocks b..b+3 (128 elements of K). The format unpacks each row of the quad into
//     lo = [b elements 0..15 | b+1 0..15 | b+2 0..15 | b+3 0..15],   hi = the same for elements 16..31,
// one block per 128-bit lane. The activations are prepared once per call in the same lane order, with
// each block's offset c * sum(qx_b) and scale dx_b repeated over its lane (PreparedStep). Then
//     p_r = vpdpbusd(vpdpbusd(0, lo_r, x_lo), hi_r, x_hi)       4 partial sums of block b+L in lane L
//     d   = fold(p_r0 .. p_r3) - offset                          [b: r0..r3 | b+1: r0..r3 | ..]
// and four fmas continue each row's chain block by block. Blocks left after the last whole step
// (nb % 4) take the same arithmetic on 256-bit vectors, one block at a time. Each step's scales are read as
// float16 and converted in registers; the next quad's weights and scales are fetched into L2 at the offset
// being read.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/q8.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx512 {
namespace {

static_assert(kQ8Block == 32, "a step is four 32-value blocks, one per 128-bit lane");

// 64-bit element indices for vpermt2q over (a, b): the 128-bit lanes 0, 2 of a and of b, and lanes 1, 3.
inline __m512i even_lanes() { return _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0); }
inline __m512i odd_lanes() { return _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2); }

// Per 128-bit lane, the sums of the 4 int32 of p0..p3: lane L of the result = [p0, p1, p2, p3 sums]. Exact.
inline __m512i fold_quarters_i32x16x4(__m512i p0, __m512i p1, __m512i p2, __m512i p3) {
    const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
    const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
}

// q8: the stored int8 q, read as u = q + 128 (its sign bit flipped). 32 bytes a block.
struct Q8Bytes {
    using Stored = int8_t;
    static constexpr int32_t kOffset = 128;
    static constexpr int64_t kBlockBytes = 32;
    // One row's four blocks at w: [b | b+1] and [b+2 | b+3] in two loads, their lanes regrouped.
    static void unpack_step(const Stored* w, __m512i* lo, __m512i* hi) {
        const __m512i flip = _mm512_set1_epi8(char(0x80));
        const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);
        *lo = _mm512_xor_si512(_mm512_permutex2var_epi64(w0, even_lanes(), w1), flip);
        *hi = _mm512_xor_si512(_mm512_permutex2var_epi64(w0, odd_lanes(), w1), flip);
    }
    // One block at w, elements 0..31 in order.
    static __m256i unpack_block(const Stored* w) {
        return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)), _mm256_set1_epi8(char(0x80)));
    }
};

// One token's activations for one step, in the lanes the weights are unpacked to.
struct PreparedStep {
    __m512i lo, hi;  // qx of blocks b..b+3, elements 0..15 and 16..31, one block per 128-bit lane
    __m512i offset;  // c * sum(qx_b) in the four int32 of lane 0, the same for b+1 in lane 1, ...
    __m512 scale;    // dx_b in the four floats of lane 0, ...
};

// steps = K / 128 prepared steps of one token.  qx (K), dx (K / 32).
inline void prepare_token(PreparedStep* out, const int8_t* qx, const float* dx, int64_t steps, int32_t c) {
    const __m512i ones = _mm512_set1_epi8(1);
    const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for (int64_t j = 0; j < steps; ++j) {
        const __m512i x0 = _mm512_loadu_si512(qx + 128 * j), x1 = _mm512_loadu_si512(qx + 128 * j + 64);
        PreparedStep& s = out[j];
        s.lo = _mm512_permutex2var_epi64(x0, even_lanes(), x1);
        s.hi = _mm512_permutex2var_epi64(x0, odd_lanes(), x1);
        // Block sums: 1 (u8) x qx (s8) gives 4 partial sums per lane; two swaps within each lane total them.
        __m512i sum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, s.lo), ones, s.hi);
        sum = _mm512_add_epi32(sum, _mm512_shuffle_epi32(sum, _MM_PERM_BADC));
        sum = _mm512_add_epi32(sum, _mm512_shuffle_epi32(sum, _MM_PERM_CDAB));
        s.offset = _mm512_mullo_epi32(sum, _mm512_set1_epi32(c));
        s.scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(dx + 4 * j)));
    }
}

// 8 bytes from p, any alignment.
inline long long load_u64(const void* p) {
    long long v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The float16 scales of four rows (nb apart) for blocks 4j..4j+3, as floats in d's layout:
// [b: r0..r3 | b+1: r0..r3 | b+2 | b+3]. Exact.
inline __m512 step_scales(const uint16_t* ws, int64_t nb, int64_t j) {
    const uint16_t* p = ws + 4 * j;
    const __m256i h = _mm256_set_epi64x(load_u64(p + 3 * nb), load_u64(p + 2 * nb), load_u64(p + nb), load_u64(p));
    // element 4r + L of [r0: b..b+3 | r1 | r2 | r3] goes to 4L + r
    const __m512i to_block_major = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(to_block_major, _mm512_cvtph_ps(h));
}

// Sum of the 8 int32 lanes. Exact.
inline int32_t hsum_i32x8(__m256i v) {
    __m128i s = avx2::add_halves_i32x8(v);
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// c * sum(qx) of one block of 32 activations: what the offset c of the stored bytes adds to its dot products.
template <class Format>
inline int32_t block_offset(__m256i x) {
    return Format::kOffset * hsum_i32x8(_mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), x));
}

// d of one block of one row against 32 activations: sum qx u - c sum qx.
template <class Format>
inline int32_t block_dot(__m256i u, const int8_t* qx) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx));
    return hsum_i32x8(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)) - block_offset<Format>(x);
}

// The blocks after the last whole step (nb % 4) of one quad, for TM tokens: the same chain on 256-bit
// vectors, one block at a time, continuing acc[t] = [r0..r3]. ws: the quad's float16 scales, rows nb apart.
template <class Format, int TM>
void tail_blocks(__m128* acc, const int8_t* qx, const float* dx, const typename Format::Stored* w, int64_t rb,
                 const uint16_t* ws, int64_t K) {
    const int64_t nb = K / kQ8Block, steps = nb / 4;
    for (int64_t b = 4 * steps; b < nb; ++b) {
        __m256i u[4];
        for (int r = 0; r < 4; ++r) u[r] = Format::unpack_block(w + r * rb + b * Format::kBlockBytes);
        const __m128 sw = _mm_setr_ps(f16_to_f32(ws[b]), f16_to_f32(ws[nb + b]), f16_to_f32(ws[2 * nb + b]),
                                      f16_to_f32(ws[3 * nb + b]));
        for (int t = 0; t < TM; ++t) {
            const int8_t* xb = qx + t * K + b * kQ8Block;
            const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb));
            const __m256i zero = _mm256_setzero_si256();
            const __m128i sums = avx2::add_halves_i32x8(
                avx2::fold_halves_i32x8x4(_mm256_dpbusd_epi32(zero, u[0], x), _mm256_dpbusd_epi32(zero, u[1], x),
                                          _mm256_dpbusd_epi32(zero, u[2], x), _mm256_dpbusd_epi32(zero, u[3], x)));
            const __m128i d = _mm_sub_epi32(sums, _mm_set1_epi32(block_offset<Format>(x)));
            acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(d), _mm_mul_ps(sw, _mm_broadcast_ss(dx + t * nb + b)), acc[t]);
        }
    }
}

// TM tokens x one quad. px: token t's steps at px + t * steps; qx (TM, stride K) and dx (TM, stride nb) for
// the blocks after the last step; w: the quad's first row, rows rb bytes apart; ws: its float16 scales, rows
// nb apart, read and converted step by step; y (TM rows, stride ldy). The next quad's weights and scales
// are fetched into L2 at the offset this one reads.
template <class Format, int TM>
void quad_tile(float* y, int64_t ldy, const PreparedStep* px, const int8_t* qx, const float* dx,
               const typename Format::Stored* w, int64_t rb, const uint16_t* ws, const float* bias, int64_t K) {
    const int64_t nb = K / kQ8Block, steps = nb / 4;
    constexpr int64_t step_bytes = 4 * Format::kBlockBytes;
    __m128 acc[TM];
    for (int t = 0; t < TM; ++t) acc[t] = _mm_setzero_ps();
    for (int64_t j = 0; j < steps; ++j) {
        const typename Format::Stored* wj = w + j * step_bytes;
        // The next quad's rows at this offset, into L2: when it starts, its four rows are already streaming.
        for (int r = 0; r < 4; ++r)
            for (int64_t line = 0; line < step_bytes; line += 64)
                _mm_prefetch(reinterpret_cast<const char*>(wj + (4 + r) * rb + line), _MM_HINT_T1);
        if (j % 8 == 0)  // 8 steps use 64 bytes of a row's scales
            for (int r = 0; r < 4; ++r)
                _mm_prefetch(reinterpret_cast<const char*>(ws + (4 + r) * nb + 4 * j), _MM_HINT_T1);
        __m512i lo[4], hi[4];
        for (int r = 0; r < 4; ++r) Format::unpack_step(wj + r * rb, &lo[r], &hi[r]);
        const __m512 sw = step_scales(ws, nb, j);  // [dw_b r0..r3 | b+1 | b+2 | b+3]
        for (int t = 0; t < TM; ++t) {
            const PreparedStep& a = px[t * steps + j];
            const __m512i zero = _mm512_setzero_si512();
            __m512i p[4];
            for (int r = 0; r < 4; ++r) p[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo[r], a.lo), hi[r], a.hi);
            const __m512 d =
                _mm512_cvtepi32_ps(_mm512_sub_epi32(fold_quarters_i32x16x4(p[0], p[1], p[2], p[3]), a.offset));
            const __m512 s = _mm512_mul_ps(sw, a.scale);
            acc[t] = _mm_fmadd_ps(_mm512_castps512_ps128(d), _mm512_castps512_ps128(s), acc[t]);
            acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(d, 1), _mm512_extractf32x4_ps(s, 1), acc[t]);
            acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(d, 2), _mm512_extractf32x4_ps(s, 2), acc[t]);
            acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(d, 3), _mm512_extractf32x4_ps(s, 3), acc[t]);
        }
    }
    tail_blocks<Format, TM>(acc, qx, dx, w, rb, ws, K);
    const __m128 b4 = bias ? _mm_loadu_ps(bias) : _mm_setzero_ps();
    for (int t = 0; t < TM; ++t) _mm_storeu_ps(y + t * ldy, bias ? _mm_add_ps(acc[t], b4) : acc[t]);
}

// One row against M tokens (the rows left after the quads), the same chain one block at a time.
template <class Format>
void single_row(float* y, int64_t ldy, const int8_t* qx, const float* dx, const typename Format::Stored* w,
                const uint16_t* ws, const float* bias, int64_t M, int64_t K) {
    const int64_t nb = K / kQ8Block;
    for (int64_t t = 0; t < M; ++t) {
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
            const int32_t d =
                block_dot<Format>(Format::unpack_block(w + b * Format::kBlockBytes), qx + t * K + b * kQ8Block);
            acc = std::fma(float(d), f16_to_f32(ws[b]) * dx[t * nb + b], acc);
        }
        y[t * ldy] = bias ? acc + bias[0] : acc;
    }
}

// y = x W^T + b for M (few) tokens.  qx (M, K), dx (M, K/32); w (N rows of nb * kBlockBytes bytes), ws (N, nb).
template <class Format>
void rows_linear(float* y, const int8_t* qx, const float* dx, const typename Format::Stored* w, const uint16_t* ws,
                 const float* b, int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / kQ8Block, steps = nb / 4, rb = nb * Format::kBlockBytes;
    std::vector<PreparedStep> prepared(size_t(M * steps));
    for (int64_t t = 0; t < M; ++t)
        prepare_token(prepared.data() + t * steps, qx + t * K, dx + t * nb, steps, Format::kOffset);
    // Rows per group: a group's rows (192 KB) stay in L2 while every token tile passes over them. The
    // threads share the groups (SharedRanges): each walks its own range and then helps the others.
    const int64_t group = std::max<int64_t>(4, (int64_t(192) << 10) / rb / 4 * 4);
    const int64_t quads_end = N / 4 * 4, groups = (quads_end + group - 1) / group;
    SharedRanges groups_left(groups, num_threads());
#pragma omp parallel
    {
        for (int64_t g = groups_left.next(); g >= 0; g = groups_left.next()) {
            const int64_t g0 = g * group, g1 = std::min(quads_end, g0 + group);
            for (int64_t t = 0; t < M;) {
                const int64_t tm = std::min<int64_t>(4, M - t);
                for (int64_t n = g0; n < g1; n += 4) {
                    float* yt = y + t * N + n;
                    const PreparedStep* pt = prepared.data() + t * steps;
                    const int8_t* xt = qx + t * K;
                    const float* dt = dx + t * nb;
                    const typename Format::Stored* wn = w + n * rb;
                    const uint16_t* wsn = ws + n * nb;
                    const float* bn = b ? b + n : nullptr;
                    switch (tm) {
                        case 4:
                            quad_tile<Format, 4>(yt, N, pt, xt, dt, wn, rb, wsn, bn, K);
                            break;
                        case 3:
                            quad_tile<Format, 3>(yt, N, pt, xt, dt, wn, rb, wsn, bn, K);
                            break;
                        case 2:
                            quad_tile<Format, 2>(yt, N, pt, xt, dt, wn, rb, wsn, bn, K);
                            break;
                        default:
                            quad_tile<Format, 1>(yt, N, pt, xt, dt, wn, rb, wsn, bn, K);
                            break;
                    }
                }
                t += tm;
            }
        }
        if (thread_index() == 0)  // the rows after the last quad (N % 4)
            for (int64_t n = quads_end; n < N; ++n)
                single_row<Format>(y + n, N, qx, dx, w + n * rb, ws + n * nb, b ? b + n : nullptr, M, K);
    }
}

}  // namespace
}  // namespace gptj::kernels::avx512
