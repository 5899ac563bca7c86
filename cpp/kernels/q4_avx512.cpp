// q4 linear layer, AVX-512 (F, BW, VL, VNNI), on the 16-row panels of q4.h: one int32 lane of a 512-bit
// vector belongs to one row of a panel all the way through.
//
// Decode (and fewer than kQ4UnpackMinTokens tokens): per panel, per block, per token t,
//     pl = sum_c vpdpbusd(lo_c, bcast(qx[4c..4c+3]))            lo_c = chunk & 0x0F  (u of 4 elements, per row)
//     ph = sum_c vpdpbusd(hi_c, bcast(qx[16+4c..16+4c+3]))      hi_c = chunk & 0xF0  (16 u)
//     d  = pl + (ph >> 4) - 8 sum(qx_b)                          exact in int32; ph is a multiple of 16
//     acc = fma(float(d), float(ws_b) * dx_b, acc)               one lane per row: no horizontal sums
// the chain of every other level, so all levels agree bitwise. Prompts: q4_via_q8 with an unpack from the
// panels.
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

// The 16 rows of one panel block as int8 q = u - 8: row r's 32 values in out[r]. A 4 x 4 transpose of
// int32 within each 128-bit lane puts row 4L + i's stored 16 bytes in lane L of vector i; they unpack as
// stored (q4.h).
inline void unpack_panel_block(const uint8_t* wb, __m256i out[kQ4PanelRows]) {
    const __m512i c0 = _mm512_load_si512(wb), c1 = _mm512_load_si512(wb + 64);
    const __m512i c2 = _mm512_load_si512(wb + 128), c3 = _mm512_load_si512(wb + 192);
    const __m512i t01lo = _mm512_unpacklo_epi32(c0, c1), t01hi = _mm512_unpackhi_epi32(c0, c1);
    const __m512i t23lo = _mm512_unpacklo_epi32(c2, c3), t23hi = _mm512_unpackhi_epi32(c2, c3);
    const __m512i row[4] = {_mm512_unpacklo_epi64(t01lo, t23lo), _mm512_unpackhi_epi64(t01lo, t23lo),
                            _mm512_unpacklo_epi64(t01hi, t23hi), _mm512_unpackhi_epi64(t01hi, t23hi)};
    const __m512i low4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(kQ4Offset);
    const __m512i lanes01 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);  // [lo.0 hi.0 | lo.1 hi.1]
    const __m512i lanes23 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (int i = 0; i < 4; ++i) {
        // lane L: row 4L + i's elements 0..15 (lo) and 16..31 (hi)
        const __m512i lo = _mm512_sub_epi8(_mm512_and_si512(row[i], low4), eight);
        const __m512i hi = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(row[i], 4), low4), eight);
        const __m512i rows01 = _mm512_permutex2var_epi64(lo, lanes01, hi);  // rows i, 4 + i
        const __m512i rows23 = _mm512_permutex2var_epi64(lo, lanes23, hi);  // rows 8 + i, 12 + i
        out[i] = _mm512_castsi512_si256(rows01);
        out[4 + i] = _mm512_extracti64x4_epi64(rows01, 1);
        out[8 + i] = _mm512_castsi512_si256(rows23);
        out[12 + i] = _mm512_extracti64x4_epi64(rows23, 1);
    }
}

// Rows [n0, n0 + rows) of the panels in q8's layout (Q4Unpack). Two blocks at a time, so that each row
// gets whole 64-byte lines: the panel's 16 rows are K bytes apart, and half-written lines of rows at a
// 4 KB multiple apart would evict each other from L1.
const uint16_t* unpack_panels(int8_t* q, uint16_t* scales, const WeightData& panels, int64_t n0, int64_t rows,
                              int64_t K) {
    const int64_t nb = K / kQ8Block, p0 = n0 / kQ4PanelRows, count = (rows + kQ4PanelRows - 1) / kQ4PanelRows;
    const uint8_t* pw = static_cast<const uint8_t*>(panels.values);
#pragma omp parallel for schedule(static)
    for (int64_t p = p0; p < p0 + count; ++p) {
        const int64_t in_panel = std::min(kQ4PanelRows, n0 + rows - p * kQ4PanelRows);
        int8_t* qp = q + (p - p0) * kQ4PanelRows * K;
        const uint8_t* wp = pw + p * nb * kQ4PanelBlockBytes;
        __m256i first[kQ4PanelRows], second[kQ4PanelRows];
        int64_t b = 0;
        for (; b + 1 < nb; b += 2) {
            unpack_panel_block(wp + b * kQ4PanelBlockBytes, first);
            unpack_panel_block(wp + (b + 1) * kQ4PanelBlockBytes, second);
            for (int64_t r = 0; r < in_panel; ++r)
                _mm512_storeu_si512(qp + r * K + b * kQ8Block,
                                    _mm512_inserti64x4(_mm512_castsi256_si512(first[r]), second[r], 1));
        }
        if (b < nb) {  // an odd block count
            unpack_panel_block(wp + b * kQ4PanelBlockBytes, first);
            for (int64_t r = 0; r < in_panel; ++r)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(qp + r * K + b * kQ8Block), first[r]);
        }
        const uint16_t* ps = panels.scales + p * nb * kQ4PanelRows;
        for (int64_t r = 0; r < in_panel; ++r) {  // each row's scales, from the panel's block-major ones
            uint16_t* row = scales + ((p - p0) * kQ4PanelRows + r) * nb;
            for (int64_t b = 0; b < nb; ++b) row[b] = ps[b * kQ4PanelRows + r];
        }
    }
    return scales;
}

}  // namespace

void q4_linear(float* y, const LinearInputs& x, const WeightData& panels, const float* b, int64_t N) {
    const int64_t M = x.M, K = x.K, nb = K / kQ8Block;
    if (M >= kQ4UnpackMinTokens) return q4_via_q8(y, x, panels, b, N, unpack_panels);
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
