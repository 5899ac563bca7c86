// q4 linear layer, AVX2 (maddubs + madd) on the 16-row panels of q4.h: q4_panels_avx2.inl. Also the
// unpack from panels that the prompt path of every SIMD level uses (q4_unpack_panels).
#if defined(GPTJ_HAVE_AVX2)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"

namespace gptj::kernels::avx2 {

namespace {

#include "kernels/q4_panels_avx2.inl"

// The 16 rows of one panel block as int8 q = u - 8: row r's 32 values in out[r]. Per half h, a 4 x 4
// transpose of int32 within each 128-bit lane puts row 8h + 4L + i's stored 16 bytes in lane L of vector i;
// they unpack as stored (q4.h).
inline void unpack_panel_block(const uint8_t* wb, __m256i out[kQ4PanelRows]) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(kQ4Offset);
    for (int h = 0; h < 2; ++h) {
        __m256i c[4];
        for (int k = 0; k < 4; ++k) c[k] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + 64 * k + 32 * h));
        const __m256i t01lo = _mm256_unpacklo_epi32(c[0], c[1]), t01hi = _mm256_unpackhi_epi32(c[0], c[1]);
        const __m256i t23lo = _mm256_unpacklo_epi32(c[2], c[3]), t23hi = _mm256_unpackhi_epi32(c[2], c[3]);
        const __m256i row[4] = {_mm256_unpacklo_epi64(t01lo, t23lo), _mm256_unpackhi_epi64(t01lo, t23lo),
                                _mm256_unpacklo_epi64(t01hi, t23hi), _mm256_unpackhi_epi64(t01hi, t23hi)};
        for (int i = 0; i < 4; ++i) {
            // lane L: row 8h + 4L + i's elements 0..15 (lo) and 16..31 (hi)
            const __m256i lo = _mm256_sub_epi8(_mm256_and_si256(row[i], low4), eight);
            const __m256i hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(row[i], 4), low4), eight);
            out[8 * h + i] = _mm256_permute2x128_si256(lo, hi, 0x20);
            out[8 * h + 4 + i] = _mm256_permute2x128_si256(lo, hi, 0x31);
        }
    }
}

}  // namespace

// Rows [n0, n0 + rows) of the panels in q8's layout (Q4Unpack). Two blocks at a time, so that each row
// gets whole 64-byte lines: the panel's rows are K bytes apart, and half-written lines of rows a multiple
// of 4 KB apart would evict each other from L1.
void q4_unpack_panels(int8_t* q, uint16_t* scales, const WeightData& panels, int64_t n0, int64_t rows, int64_t K) {
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
            for (int64_t r = 0; r < in_panel; ++r) {
                __m256i* dst = reinterpret_cast<__m256i*>(qp + r * K + b * kQ8Block);
                _mm256_storeu_si256(dst, first[r]);
                _mm256_storeu_si256(dst + 1, second[r]);
            }
        }
        if (b < nb) {  // an odd block count
            unpack_panel_block(wp + b * kQ4PanelBlockBytes, first);
            for (int64_t r = 0; r < in_panel; ++r)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(qp + r * K + b * kQ8Block), first[r]);
        }
        const uint16_t* ps = panels.scales + p * nb * kQ4PanelRows;
        for (int64_t r = 0; r < in_panel; ++r) {  // each row's scales, from the panel's block-major ones
            uint16_t* row = scales + ((p - p0) * kQ4PanelRows + r) * nb;
            for (int64_t c = 0; c < nb; ++c) row[c] = ps[c * kQ4PanelRows + r];
        }
    }
}

void q4_linear(float* y, const LinearInputs& x, const WeightData& panels, const float* b, int64_t N) {
    q4_panels_linear(y, x, panels, b, N);
}

}  // namespace gptj::kernels::avx2

#endif  // GPTJ_HAVE_AVX2
