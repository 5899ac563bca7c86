// q8 linear layer, AVX-512 (F, BW, VL, VNNI): the row kernel of q8_rows_avx2.inl (decode and short
// inputs) with a 512-bit quad tile; from kRowsMaxTokens tokens on, the level below's kernels (AVX-VNNI
// panels where the CPU has them). See q8.h for the contract.
//
// Four blocks b..b+3 a step. Row r's 128 bytes are two zmm [b | b+1], [b+2 | b+3], whose 128-bit lanes
// hold block halves; one lane permutation makes lo = [b..b+3 elements 0..15], hi = [b..b+3 16..31]
// (and the same for the activations, once per token), so two vpdpbusd leave each 128-bit lane with the
// partial sums of one block. The sign trick of q8_rows_avx2.inl, with a mask for _mm256_sign_epi8:
// |w| (u8) times qx negated where w < 0 is exact, even for w = -128. The 4-row fold per lane gives
// d = [b: r0..r3 | b+1 | b+2 | b+3], and each block continues the chain in order,
//     acc = fma(float(d_b), dw_b * dx_b, acc),    as at every other level, so they agree bitwise.
// Blocks left over (nb % 4) take q8_rows_avx2.inl's 256-bit step (maddubs: no AVX-VNNI needed).
#if defined(GPTJ_HAVE_AVX512)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/formats.h"
#include "kernels/parallel.h"
#include "kernels/q8.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx512 {

namespace {

using avx2::add_halves_i32x8;
using avx2::f32x8;
using avx2::fold_halves_i32x8x4;
using avx2::load_i8x32;
using avx2::quad_scales;
using i8x32 = __m256i;
using i32x8 = __m256i;

#include "kernels/q8_rows_avx2.inl"

constexpr int64_t kRowsMaxTokens = 16;  // from here on the AVX-VNNI panels win (as in q8_avxvnni.cpp)

// Per 128-bit lane, the sums of the 4 lanes of p0..p3: lane L of the result = [p0, p1, p2, p3 sums]. Exact.
inline __m512i fold_quarters_i32x16x4(__m512i p0, __m512i p1, __m512i p2, __m512i p3) {
    const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
    const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
}

// a negated where w < 0 (the sign trick's signed side).
inline __m512i negate_where_negative(__m512i a, __mmask64 w_negative) {
    return _mm512_mask_sub_epi8(a, w_negative, _mm512_setzero_si512(), a);
}

struct QuadZmm {
    template <int TM>
    static void tile(float* y, int64_t ldy, const int8_t* qx, const float* dx, const int8_t* w, const float* dq,
                     const float* bias, int64_t K) {
        const int64_t nb = K / kQ8Block;
        const __m512i lo_lanes = _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0);    // 128-bit lanes 0, 2, 4, 6 of (a, b)
        const __m512i hi_lanes = _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2);  // lanes 1, 3, 5, 7
        const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        __m128 acc[TM];
        for (int t = 0; t < TM; ++t) acc[t] = _mm_setzero_ps();
        int64_t b = 0;
        for (; b + 4 <= nb; b += 4) {
            const int64_t o = b * kQ8Block;
            const char* pf = reinterpret_cast<const char*>(w + 4 * K + o);  // the next quad's rows, 2 lines each
            for (int r = 0; r < 4; ++r) {
                _mm_prefetch(pf + r * K, _MM_HINT_T0);
                _mm_prefetch(pf + r * K + 64, _MM_HINT_T0);
            }
            __m512i alo[4], ahi[4];
            __mmask64 nlo[4], nhi[4];
            for (int r = 0; r < 4; ++r) {
                const __m512i w0 = _mm512_loadu_si512(w + r * K + o), w1 = _mm512_loadu_si512(w + r * K + o + 64);
                const __m512i lo = _mm512_permutex2var_epi64(w0, lo_lanes, w1),
                              hi = _mm512_permutex2var_epi64(w0, hi_lanes, w1);
                alo[r] = _mm512_abs_epi8(lo);
                ahi[r] = _mm512_abs_epi8(hi);
                nlo[r] = _mm512_movepi8_mask(lo);
                nhi[r] = _mm512_movepi8_mask(hi);
            }
            const __m512 sw = _mm512_loadu_ps(dq + 4 * b);  // [dw_b r0..r3 | b+1 | b+2 | b+3]
            for (int t = 0; t < TM; ++t) {
                const __m512i x0 = _mm512_loadu_si512(qx + t * K + o), x1 = _mm512_loadu_si512(qx + t * K + o + 64);
                const __m512i xl = _mm512_permutex2var_epi64(x0, lo_lanes, x1),
                              xh = _mm512_permutex2var_epi64(x0, hi_lanes, x1);
                __m512i p[4];
                for (int r = 0; r < 4; ++r)
                    p[r] = _mm512_dpbusd_epi32(
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), alo[r], negate_where_negative(xl, nlo[r])), ahi[r],
                        negate_where_negative(xh, nhi[r]));
                const __m512i d = fold_quarters_i32x16x4(p[0], p[1], p[2], p[3]);  // [b: r0..r3 | b+1 | b+2 | b+3]
                const __m512 sx = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(dx + t * nb + b)));
                const __m512 s = _mm512_mul_ps(sw, sx);
                const __m512 df = _mm512_cvtepi32_ps(d);
                acc[t] = _mm_fmadd_ps(_mm512_castps512_ps128(df), _mm512_castps512_ps128(s), acc[t]);
                acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(df, 1), _mm512_extractf32x4_ps(s, 1), acc[t]);
                acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(df, 2), _mm512_extractf32x4_ps(s, 2), acc[t]);
                acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(df, 3), _mm512_extractf32x4_ps(s, 3), acc[t]);
            }
        }
        for (; b < nb; ++b) {  // the blocks left over, 256 bits at a time
            const int64_t o = b * kQ8Block;
            const i8x32 wr[4] = {load_i8x32(w + o), load_i8x32(w + K + o), load_i8x32(w + 2 * K + o),
                                 load_i8x32(w + 3 * K + o)};
            const i8x32 awr[4] = {_mm256_abs_epi8(wr[0]), _mm256_abs_epi8(wr[1]), _mm256_abs_epi8(wr[2]),
                                  _mm256_abs_epi8(wr[3])};
            const __m128 sw = _mm_loadu_ps(dq + 4 * b);
            for (int t = 0; t < TM; ++t) {
                const __m128i d = add_halves_i32x8(quad_dots(qx + t * K + o, wr, awr));
                acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(d), _mm_mul_ps(sw, _mm_broadcast_ss(dx + t * nb + b)), acc[t]);
            }
        }
        const __m128 b4 = bias ? _mm_loadu_ps(bias) : _mm_setzero_ps();
        for (int t = 0; t < TM; ++t) _mm_storeu_ps(y + t * ldy, bias ? _mm_add_ps(acc[t], b4) : acc[t]);
    }
};

}  // namespace

void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    if (M < kRowsMaxTokens) return q8_linear_rows<QuadZmm>(y, qx, dx, w, ws, b, M, N, K);
    static const WeightFormat& q8 = weight_format("q8");
    LinearInputs x;
    x.qx = qx, x.dx = dx, x.M = M, x.K = K;
    resolve(q8, Isa::AvxVnni, M)(y, x, WeightData{w, ws}, b, N);
}

}  // namespace gptj::kernels::avx512

#endif  // GPTJ_HAVE_AVX512
