// AVX-VNNI int8 linear layer. Prompts: the packed path of q8_avx2.cpp with vpdpbusd, which does 32 int8
// multiply-adds into 8 int32 lanes in one instruction (AVX2 needs vpmaddwd + vpaddd for 16). Decode and
// short inputs: the AVX2 row kernel (q8_rows_avx2.inl) with vpdpbusd in place of maddubs + madd.
// Compiled with -mavxvnni and called only when the CPU reports AVX-VNNI (Alder Lake and later Intel
// cores, Sapphire Rapids, Zen 5); everything else stays on the AVX2 kernels. See q8.h for the contract.
//
// vpdpbusd multiplies unsigned by signed bytes: acc[j] += sum_{i<4} u[4j+i] * s[4j+i]. Activations are
// signed, so they go in offset by 128, u = qx + 128 in [1, 255] (stored as qx ^ 0x80), and the offset
// is taken back with the weights' block sums, which the panel packing computes once:
//     sum_k (qx_k + 128) w_k  -  128 sum_k w_k  =  sum_k qx_k w_k          (exact in int32:
//     |terms| <= 32 * 255 * 127 + 128 * 32 * 127 < 2^21, and vpdpbusd does not saturate).
// Each block's accumulator starts at -128 sum_k w_k, so after the block's 8 vpdpbusd steps it holds the
// exact dot product d, and the float32 chain that follows is the AVX2 kernels' own:
//     c[t][r] = fma(float(d), ws[r, b] * dx[t, b], c[t][r]),   y = c + bias.
// So this path, the AVX2 paths and the scalar emulation's bound all agree; with AVX2 it is bitwise.
//
//   panel   16 weight rows n0..n15 and one chunk of up to 8 blocks (256 k), int8 as in the file but
//           transposed per block: for quad q (k = 4q..4q+3) register h (rows 8h..8h+7) holds in lane j
//           the 4 bytes w[n0 + 8h + j, 32b + 4q .. 32b + 4q + 3]. 4 KB plus the block sums.
//   tokens  qx + 128 chunk by chunk, as the AVX2 path stores its int16 copy: a8[k0 * M + t * len + k].
//   tile    TT tokens x 16 rows: for each quad, acc[t][h] = vpdpbusd(acc[t][h], broadcast(a8[t][4q..]), w[q][h]).
// The loops around the panels are q8_panels.inl's, shared with the AVX2 int16 panels.
#if defined(GPTJ_HAVE_AVXVNNI)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/q8.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avxvnni {

namespace {

using avx2::add_halves_i32x8;
using avx2::f32x8;
using avx2::fold_halves_i32x8x4;
using avx2::load_f16x8;
using avx2::load_i8x32;
using avx2::quad_scales;
using avx2::transpose_8x8_i32;
using i8x32 = __m256i;
using i32x8 = __m256i;

#define GPTJ_Q8_ROWS_VNNI 1
#include "kernels/q8_rows_avx2.inl"
#undef GPTJ_Q8_ROWS_VNNI

#if defined(__GNUC__)
#define GPTJ_NOINLINE __attribute__((noinline))
#else
#define GPTJ_NOINLINE
#endif

#include "kernels/q8_panels.inl"

constexpr int64_t kPackedMinTokens = 16;  // below this the row kernel (weights from the file) wins

// Packs weight rows [0, rows) (rows <= 16; the rest of the panel is zeros) of blocks [b0, b0 + nbc)
// (nbc <= 8): wp[((b * 8 + q) * 2 + h) * 8 + j] = row 8h + j's quad q as one int32; ncorr[(b * 2 + h) * 8 + j]
// = -128 * (sum of that row's block); sp[(b * 2 + h) * 8 + j] = float(ws[8h + j, b0 + b]).
// w (rows, K), ws (rows, nb) start at the panel.
void pack_panel(int32_t* wp, int32_t* ncorr, float* sp, const int8_t* w, const uint16_t* ws, int64_t K, int64_t rows,
                int64_t b0, int64_t nbc) {
    const int64_t nb = K / kQ8Block;
    const __m256i offset = _mm256_set1_epi8(char(0x80));  // 128 as the unsigned operand
    for (int h = 0; h < 2; ++h) {
        for (int64_t b = 0; b < nbc; ++b) {
            __m256i r[8];  // row j's 32 bytes = its 8 quads
            for (int j = 0; j < 8; ++j) {
                const int64_t row = 8 * h + j;
                r[j] = row < rows
                           ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + row * K + (b0 + b) * kQ8Block))
                           : _mm256_setzero_si256();
            }
            transpose_8x8_i32(r);  // r[q] lane j = row j's quad q
            __m256i sum = _mm256_setzero_si256();
            for (int q = 0; q < 8; ++q) {
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(wp + ((b * 8 + q) * 2 + h) * 8), r[q]);
                sum = _mm256_dpbusd_avx_epi32(sum, offset, r[q]);  // lane j += 128 * (row j's quad q sum)
            }
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(ncorr + (b * 2 + h) * 8),
                                _mm256_sub_epi32(_mm256_setzero_si256(), sum));
        }
        for (int64_t b = 0; b < nbc; ++b)
            for (int j = 0; j < 8; ++j) {
                const int64_t row = 8 * h + j;
                sp[(b * 2 + h) * 8 + j] = row < rows ? f16_to_f32(ws[row * nb + b0 + b]) : 0.0f;
            }
    }
}

// TT tokens x 16 rows over one chunk of nbc blocks, continuing the chains in c (TT x 16, contiguous;
// started at zero when `first`). a: the chunk's TT token rows of qx + 128 (stride lda bytes); dx: their
// block scales (stride nb) from the chunk's first block; wp, ncorr, sp: the packed panel. Not inlined,
// so that the accumulators keep their registers (as in the AVX2 path).
template <int TT>
GPTJ_NOINLINE void panel_tile(float* c, const uint8_t* a, int64_t lda, const float* dx, int64_t nb, const int32_t* wp,
                              const int32_t* ncorr, const float* sp, int64_t nbc, bool first) {
    if (first)
        for (int i = 0; i < TT * 2; ++i) _mm256_storeu_ps(c + 8 * i, _mm256_setzero_ps());
    for (int64_t b = 0; b < nbc; ++b) {
        __m256i acc[TT][2];
        for (int h = 0; h < 2; ++h) {
            const __m256i start = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ncorr + (b * 2 + h) * 8));
            for (int t = 0; t < TT; ++t) acc[t][h] = start;
        }
        const int32_t* wb = wp + b * 8 * 16;
        const uint8_t* ab = a + b * kQ8Block;
        for (int q = 0; q < 8; ++q) {
            const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 16 * q));
            const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 16 * q + 8));
            for (int t = 0; t < TT; ++t) {
                int32_t quad;  // a[4q .. 4q + 3] as one 32-bit lane
                std::memcpy(&quad, ab + t * lda + 4 * q, sizeof quad);
                const __m256i av = _mm256_set1_epi32(quad);
                acc[t][0] = _mm256_dpbusd_avx_epi32(acc[t][0], av, w0);
                acc[t][1] = _mm256_dpbusd_avx_epi32(acc[t][1], av, w1);
            }
        }
        for (int t = 0; t < TT; ++t) {
            const f32x8 sx = _mm256_broadcast_ss(dx + t * nb + b);
            for (int h = 0; h < 2; ++h) {
                const f32x8 s = _mm256_mul_ps(_mm256_loadu_ps(sp + (b * 2 + h) * 8), sx);  // dw * dx
                float* ct = c + t * 16 + 8 * h;
                _mm256_storeu_ps(ct, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t][h]), s, _mm256_loadu_ps(ct)));
            }
        }
    }
}

// The vpdpbusd scheme for q8_panels.inl (token tiles of 4; 6 measured the same).
struct VnniPanels {
    using Act = uint8_t;
    static void copy_chunk(uint8_t* dst, const int8_t* qx, int64_t len) {
        const __m256i flip = _mm256_set1_epi8(char(0x80));  // x ^ 0x80 = x + 128 for int8 x, as uint8
        for (int64_t k = 0; k < len; k += kQ8Block)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k),
                                _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + k)), flip));
    }
    void pack(const int8_t* w, const uint16_t* ws, int64_t K, int64_t rows, int64_t b0, int64_t nbc) {
        pack_panel(wp.data(), ncorr.data(), sp.data(), w, ws, K, rows, b0, nbc);
    }
    template <int TT>
    void tile(float* c, const uint8_t* a, int64_t lda, const float* dx, int64_t nb, int64_t nbc, bool first) const {
        panel_tile<TT>(c, a, lda, dx, nb, wp.data(), ncorr.data(), sp.data(), nbc, first);
    }
    std::vector<int32_t> wp = std::vector<int32_t>(size_t(kPanelChunkBlocks * 8 * 16));  // the packed panel
    std::vector<int32_t> ncorr = std::vector<int32_t>(size_t(kPanelChunkBlocks * 16));   // -128 x block sums
    std::vector<float> sp = std::vector<float>(size_t(kPanelChunkBlocks * 16));          // its scales
};

}  // namespace

void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    // Both paths compute the same chain per output element, as the AVX2 ones do.
    if (M >= kPackedMinTokens)
        q8_linear_panels<VnniPanels>(y, qx, dx, w, ws, b, M, N, K);
    else
        q8_linear_rows(y, qx, dx, w, ws, b, M, N, K);
}

}  // namespace gptj::kernels::avxvnni

#endif  // GPTJ_HAVE_AVXVNNI
