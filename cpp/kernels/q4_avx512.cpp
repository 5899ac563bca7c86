// q4 linear layer, AVX-512 (F, BW, VL, VNNI), on the 16-row panels of q4.h: one int32 lane of a 512-bit
// vector belongs to one row of a panel all the way through.
//
// Decode (and fewer than kQ4UnpackMinTokens tokens): per panel, per block, per token t,
//     pl = sum_c vpdpbusd(lo_c, bcast(qx[4c..4c+3]))            lo_c = chunk & 0x0F  (u of 4 elements, per row)
//     ph = sum_c vpdpbusd(hi_c, bcast(qx[16+4c..16+4c+3]))      hi_c = chunk & 0xF0  (16 u)
//     d  = pl + (ph >> 4) - 8 sum(qx_b)                          exact in int32; ph is a multiple of 16
//     acc = fma(float(d), float(ws_b) * dx_b, acc)               one lane per row: no horizontal sums
// the chain of every other level, so all levels agree bitwise. Prompts: q4_via_q8 with
// avx2::q4_unpack_panels (docs/kernels.md: a 512-bit copy of it was not faster at 128 tokens).
#if defined(GPTJ_HAVE_AVX512)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"

namespace gptj::kernels::avx512 {

namespace {

inline int32_t load_i32(const void* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// TM tokens x one panel. qx (TM, stride K), dx and offset (TM, stride nb): offset = 8 sum(qx_b) per block;
// pw, ps: the panel's values and scales; y (TM rows, stride ldy), of which the first `rows` columns are
// written (the rest are padding rows).
template <int TM>
void panel_tile(float* y, int64_t ldy, int64_t rows, const int8_t* qx, const float* dx, const int32_t* offset,
                const uint8_t* pw, const uint16_t* ps, const float* bias, int64_t K) {
    const int64_t nb = K / kQ8Block;
    const __m512i low4 = _mm512_set1_epi8(0x0F), high4 = _mm512_set1_epi8(char(0xF0));
    __m512 acc[TM];
    for (int t = 0; t < TM; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* wb = pw + b * kQ4PanelBlockBytes;
        // Each thread's panels are one stream; fetching it kQ4PanelPrefetchBytes ahead into L2 keeps enough
        // misses in flight (the hardware prefetcher alone reaches ~75% of the streaming read).
        for (int c = 0; c < 4; ++c)
            _mm_prefetch(reinterpret_cast<const char*>(wb + kQ4PanelPrefetchBytes + 64 * c), _MM_HINT_T1);
        if (b % 2 == 0)  // 64 bytes of scales serve two blocks
            _mm_prefetch(reinterpret_cast<const char*>(ps + b * kQ4PanelRows + kQ4PanelPrefetchBytes / 8), _MM_HINT_T1);
        __m512i lo[4], hi[4];
        for (int c = 0; c < 4; ++c) {
            const __m512i v = _mm512_load_si512(wb + 64 * c);
            lo[c] = _mm512_and_si512(v, low4);
            hi[c] = _mm512_and_si512(v, high4);
        }
        const __m512 sw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(ps + b * kQ4PanelRows)));
        for (int t = 0; t < TM; ++t) {
            const int8_t* xb = qx + t * K + b * kQ8Block;
            __m512i pl = _mm512_setzero_si512(), ph = _mm512_setzero_si512();
            for (int c = 0; c < 4; ++c) {
                pl = _mm512_dpbusd_epi32(pl, lo[c], _mm512_set1_epi32(load_i32(xb + 4 * c)));
                ph = _mm512_dpbusd_epi32(ph, hi[c], _mm512_set1_epi32(load_i32(xb + 16 + 4 * c)));
            }
            const __m512i d =
                _mm512_sub_epi32(_mm512_add_epi32(pl, _mm512_srai_epi32(ph, 4)), _mm512_set1_epi32(offset[t * nb + b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sw, _mm512_set1_ps(dx[t * nb + b])), acc[t]);
        }
    }
    const __mmask16 valid = __mmask16((1u << rows) - 1);
    const __m512 b16 = bias ? _mm512_maskz_loadu_ps(valid, bias) : _mm512_setzero_ps();
    for (int t = 0; t < TM; ++t) _mm512_mask_storeu_ps(y + t * ldy, valid, bias ? _mm512_add_ps(acc[t], b16) : acc[t]);
}

}  // namespace

void q4_linear(float* y, const LinearInputs& x, const WeightData& panels, const float* b, int64_t N) {
    const int64_t M = x.M, K = x.K, nb = K / kQ8Block;
    if (M >= kQ4UnpackMinTokens) return q4_via_q8(y, x, panels, b, N, avx2::q4_unpack_panels);
    std::vector<int32_t> offset(size_t(M * nb));
    q4_offset_sums(offset.data(), x.qx, M, K);
    const int64_t count = (N + kQ4PanelRows - 1) / kQ4PanelRows;
    const uint8_t* pw = static_cast<const uint8_t*>(panels.values);
    SharedRanges panels_left(count, num_threads());
#pragma omp parallel
    {
        for (int64_t p = panels_left.next(); p >= 0; p = panels_left.next()) {
            const int64_t n = p * kQ4PanelRows, rows = std::min(kQ4PanelRows, N - n);
            const uint8_t* wp = pw + p * nb * kQ4PanelBlockBytes;
            const uint16_t* sp = panels.scales + p * nb * kQ4PanelRows;
            const float* bp = b ? b + n : nullptr;
            for (int64_t t = 0; t < M; t += 4) {
                const int8_t* xt = x.qx + t * K;
                const float* dt = x.dx + t * nb;
                const int32_t* ot = offset.data() + t * nb;
                float* yt = y + t * N + n;
                switch (std::min<int64_t>(4, M - t)) {
                    case 4:
                        panel_tile<4>(yt, N, rows, xt, dt, ot, wp, sp, bp, K);
                        break;
                    case 3:
                        panel_tile<3>(yt, N, rows, xt, dt, ot, wp, sp, bp, K);
                        break;
                    case 2:
                        panel_tile<2>(yt, N, rows, xt, dt, ot, wp, sp, bp, K);
                        break;
                    default:
                        panel_tile<1>(yt, N, rows, xt, dt, ot, wp, sp, bp, K);
                        break;
                }
            }
        }
    }
}

}  // namespace gptj::kernels::avx512

#endif  // GPTJ_HAVE_AVX512
