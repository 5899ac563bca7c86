// q4 linear layer, AVX-512 (F, BW, VL, VNNI): the row kernel of q4_rows_avx2.inl with a 512-bit quad tile
// that reads two blocks of every row per step and multiplies with vpdpbusd. From kQ4UnpackMinTokens
// tokens on, q4_via_q8 runs the q8 kernels on unpacked rows. See q4.h for the contract.
//
// Mostly four blocks a step (below); for the remainder, two blocks b, b+1 of one row are 32 packed
// bytes v; [v & 15 | v >> 4 & 15] as one zmm holds their
// values in the 128-bit lanes [b elements 0..15 | b+1 0..15 | b 16..31 | b+1 16..31]; the activations'
// 64 bytes [b | b+1] are put in the same lane order by one lane shuffle per token. vpdpbusd (u8 x s8)
// gives 16 int32 partial sums; the 4-row fold of q4_rows_avx2.inl, lane by lane, and one add of the two
// 256-bit halves leave d = [b: r0..r3 | b+1: r0..r3], and the chain is the same as every other level's:
//     acc = fma(float(d_b - 8 sum(qx_b)), dw_b * dx_b, acc), then b+1,   so all levels agree bitwise.
// An odd last block takes the 256-bit step of q4_rows_avx2.inl (maddubs: AVX2 only, no AVX-VNNI needed).
#if defined(GPTJ_HAVE_AVX512)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx512 {

namespace {

using avx2::add_halves_i32x8;
using avx2::f32x8;
using avx2::fold_halves_i32x8x4;
using avx2::load_i8x32;
using avx2::quad_scales;

#include "kernels/q4_rows_avx2.inl"

// Per 128-bit lane, the sums of the 4 lanes of p0..p3: lane L of the result = [p0, p1, p2, p3 sums]. Exact.
inline __m512i fold_quarters_i32x16x4(__m512i p0, __m512i p1, __m512i p2, __m512i p3) {
    const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p0, p1), _mm512_unpackhi_epi32(p0, p1));
    const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p2, p3), _mm512_unpackhi_epi32(p2, p3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
}

struct Q4QuadZmm {
    // TM tokens x 4 rows; arguments as q4_quad_tile's. One xmm chain [r0..r3] per token.
    template <int TM>
    static void tile(float* y, int64_t ldy, const int8_t* qx, const float* dx, const int32_t* ox, const uint8_t* w,
                     const float* dq, const float* bias, int64_t K) {
        const int64_t nb = K / kQ8Block, rb = K / 2;
        const __m512i low4 = _mm512_set1_epi8(0x0F);
        __m128 acc[TM];
        for (int t = 0; t < TM; ++t) acc[t] = _mm_setzero_ps();
        int64_t b = 0;
        // Four blocks a step: row r's 64 bytes v give lo = v & 15 = [b..b+3 elements 0..15] and
        // hi = v >> 4 & 15 = [b..b+3 elements 16..31], one block per 128-bit lane; the activations' halves are
        // gathered into the same lanes, and two vpdpbusd leave each lane with its block's partial sums.
        const __m512i lo_lanes = _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0);    // 128-bit lanes 0, 2, 4, 6 of (x0, x1)
        const __m512i hi_lanes = _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2);  // lanes 1, 3, 5, 7
        const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        for (; b + 4 <= nb; b += 4) {
            const int64_t o = b * kQ8Block, ob = b * (kQ8Block / 2);
            const char* pf = reinterpret_cast<const char*>(w + 4 * rb + ob);  // the next quad's rows
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + rb, _MM_HINT_T0);
            _mm_prefetch(pf + 2 * rb, _MM_HINT_T0);
            _mm_prefetch(pf + 3 * rb, _MM_HINT_T0);
            __m512i lo[4], hi[4];
            for (int r = 0; r < 4; ++r) {
                const __m512i v = _mm512_loadu_si512(w + r * rb + ob);
                lo[r] = _mm512_and_si512(v, low4);
                hi[r] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
            }
            const __m512 sw = _mm512_loadu_ps(dq + 4 * b);  // [dw_b r0..r3 | b+1 | b+2 | b+3]
            for (int t = 0; t < TM; ++t) {
                const __m512i x0 = _mm512_loadu_si512(qx + t * K + o), x1 = _mm512_loadu_si512(qx + t * K + o + 64);
                const __m512i xl = _mm512_permutex2var_epi64(x0, lo_lanes, x1),
                              xh = _mm512_permutex2var_epi64(x0, hi_lanes, x1);
                __m512i p[4];
                for (int r = 0; r < 4; ++r)
                    p[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], xl), hi[r], xh);
                const __m512i off = _mm512_permutexvar_epi32(
                    spread, _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ox + t * nb + b))));
                const __m512i d =
                    _mm512_sub_epi32(fold_quarters_i32x16x4(p[0], p[1], p[2], p[3]), off);  // [b: r0..r3 | ..]
                const __m512 sx = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_loadu_ps(dx + t * nb + b)));
                const __m512 s = _mm512_mul_ps(sw, sx);
                const __m512 df = _mm512_cvtepi32_ps(d);
                acc[t] = _mm_fmadd_ps(_mm512_castps512_ps128(df), _mm512_castps512_ps128(s), acc[t]);
                acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(df, 1), _mm512_extractf32x4_ps(s, 1), acc[t]);
                acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(df, 2), _mm512_extractf32x4_ps(s, 2), acc[t]);
                acc[t] = _mm_fmadd_ps(_mm512_extractf32x4_ps(df, 3), _mm512_extractf32x4_ps(s, 3), acc[t]);
            }
        }
        for (; b + 2 <= nb; b += 2) {
            const int64_t o = b * kQ8Block, ob = b * (kQ8Block / 2);
            __m512i u[4];
            for (int r = 0; r < 4; ++r) {
                const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * rb + ob));
                u[r] =
                    _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1), low4);
            }
            const f32x8 sw = _mm256_loadu_ps(dq + 4 * b);  // [dw_b r0..r3 | dw_b+1 r0..r3]
            for (int t = 0; t < TM; ++t) {
                const __m512i x = _mm512_loadu_si512(qx + t * K + o);
                const __m512i xa =
                    _mm512_shuffle_i64x2(x, x, _MM_SHUFFLE(3, 1, 2, 0));  // [b lo | b+1 lo | b hi | b+1 hi]
                const __m512i zero = _mm512_setzero_si512();
                const __m512i h =
                    fold_quarters_i32x16x4(_mm512_dpbusd_epi32(zero, u[0], xa), _mm512_dpbusd_epi32(zero, u[1], xa),
                                           _mm512_dpbusd_epi32(zero, u[2], xa), _mm512_dpbusd_epi32(zero, u[3], xa));
                const __m256i off =
                    _mm256_set_m128i(_mm_set1_epi32(ox[t * nb + b + 1]), _mm_set1_epi32(ox[t * nb + b]));
                const __m256i d =
                    _mm256_sub_epi32(_mm256_add_epi32(_mm512_castsi512_si256(h), _mm512_extracti64x4_epi64(h, 1)), off);
                const f32x8 sx =
                    _mm256_set_m128(_mm_broadcast_ss(dx + t * nb + b + 1), _mm_broadcast_ss(dx + t * nb + b));
                const f32x8 s = _mm256_mul_ps(sw, sx);
                const f32x8 df = _mm256_cvtepi32_ps(d);
                acc[t] = _mm_fmadd_ps(_mm256_castps256_ps128(df), _mm256_castps256_ps128(s), acc[t]);
                acc[t] = _mm_fmadd_ps(_mm256_extractf128_ps(df, 1), _mm256_extractf128_ps(s, 1), acc[t]);
            }
        }
        if (b < nb) {  // the odd last block, 256 bits at a time
            const int64_t o = b * kQ8Block, ob = b * (kQ8Block / 2);
            const __m256i u[4] = {unpack_u4x32(w + ob), unpack_u4x32(w + rb + ob), unpack_u4x32(w + 2 * rb + ob),
                                  unpack_u4x32(w + 3 * rb + ob)};
            const __m128 sw = _mm_loadu_ps(dq + 4 * b);
            for (int t = 0; t < TM; ++t) {
                const __m128i d =
                    _mm_sub_epi32(add_halves_i32x8(q4_quad_dots(qx + t * K + o, u)), _mm_set1_epi32(ox[t * nb + b]));
                acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(d), _mm_mul_ps(sw, _mm_broadcast_ss(dx + t * nb + b)), acc[t]);
            }
        }
        const __m128 b4 = bias ? _mm_loadu_ps(bias) : _mm_setzero_ps();
        for (int t = 0; t < TM; ++t) _mm_storeu_ps(y + t * ldy, bias ? _mm_add_ps(acc[t], b4) : acc[t]);
    }
};

}  // namespace

void q4_linear(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    if (M >= kQ4UnpackMinTokens) {
        LinearInputs x;
        x.qx = qx, x.dx = dx, x.M = M, x.K = K;
        q4_via_q8(y, x, WeightData{w, ws}, b, N, avx2::q4_unpack);
    } else {
        q4_linear_rows<Q4QuadZmm>(y, qx, dx, w, ws, b, M, N, K);
    }
}

}  // namespace gptj::kernels::avx512

#endif  // GPTJ_HAVE_AVX512
