// AVX2 int8 kernels: activation quantizer and the block-quantized linear layer. See q8.h for the
// contract, the block layout and the rounding policy.
//
// q8_linear has two paths that compute every output element with the same float32 chain, so they agree
// bitwise and the choice between them (by the number of tokens M) never shows in the results.
//
// Decode and short inputs (M < 64): q8_linear_rows (q8_rows_avx2.inl, shared with the AVX-VNNI file)
// walks the weights four rows (a "quad") at a time, straight from the file; one pass over a quad serves
// a tile of up to 4 tokens; every output element is one float32 chain over the blocks in order.
// Prompts (M >= 64): the int16 panels (Int16Panels below, run by q8_panels.inl) repack 16-row panels as
// int16 and run a register tile of 4 tokens x 16 rows with one output row per vector lane, so no lane
// folding is left per block.
//
// Measured figures and the variants tried: docs/kernels.md.
#if defined(GPTJ_HAVE_AVX2)

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

namespace gptj::kernels::avx2 {

namespace {

using i8x32 = __m256i;
using i32x8 = __m256i;

#include "kernels/q8_rows_avx2.inl"

// Lanes of the 32 int8 values of 8 float vectors after two saturating packs, back in order.
inline __m256i pack_f32x8x4_to_i8x32(f32x8 a, f32x8 b, f32x8 c, f32x8 d) {
    const __m256i ab = _mm256_packs_epi32(_mm256_cvtps_epi32(a), _mm256_cvtps_epi32(b));
    const __m256i cd = _mm256_packs_epi32(_mm256_cvtps_epi32(c), _mm256_cvtps_epi32(d));
    const __m256i abcd = _mm256_packs_epi16(ab, cd);  // [a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7]
    return _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

}  // namespace

void quantize_activations(int8_t* qx, float* dx, const float* x, int64_t M, int64_t K) {
    const int64_t nb = K / kQ8Block;
    const f32x8 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const f32x8 hi = _mm256_set1_ps(float(kQ8Max)), lo = _mm256_set1_ps(-float(kQ8Max));
    // Blocks are independent: threads split them, every block computed the same way.
#pragma omp parallel for schedule(static) if (M * K >= (int64_t(1) << 18))
    for (int64_t i = 0; i < M * nb; ++i) {
        const float* xb = x + i * kQ8Block;
        f32x8 v[4];
        for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(xb + 8 * j);
        const f32x8 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
                                      _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
        const float d = hmax_f32x8(m) / float(kQ8Max);
        const f32x8 divisor = _mm256_set1_ps(d > 0.0f ? d : 1.0f);  // a zero block holds zeros: q = 0
        for (int j = 0; j < 4; ++j) {
            // q = clip(round_half_even(x / d)): a true IEEE division, as quant.py does.
            const f32x8 q =
                _mm256_round_ps(_mm256_div_ps(v[j], divisor), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v[j] = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qx + i * kQ8Block),
                            pack_f32x8x4_to_i8x32(v[0], v[1], v[2], v[3]));
        dx[i] = d;
    }
}

namespace {

// ---- Many tokens (prompts): int16 panels -------------------------------------------------------------
//
// For a prompt the layer is a matrix product, and quad_tile's per-block folds across lanes cap it near
// 40 GMAC/s per core. This path does the same arithmetic with no work across lanes in the inner loop:
// every vector lane belongs to one output row ("vertical" layout), and vpmaddwd on int16 pairs does 16
// exact products per instruction, two of them per cycle on Zen 3.
//
//   panel   16 weight rows n0..n15 and one chunk of up to 8 blocks (256 k), widened to int16 and packed
//           pair by pair: for pair p of block b, register h (rows 8h..8h+7) holds in lane j
//           (w[n0 + 8h + j, 32b + 2p], w[n0 + 8h + j, 32b + 2p + 1]). 8 KB: it stays in L1.
//   tokens  qx widened to int16 once per call and stored chunk by chunk, so that one chunk's token rows
//           are contiguous (no power-of-two stride to collide in the caches): act[chunk][t][k - k0].
//   tile    4 tokens x 16 rows: for each pair p, acc[t][h] += madd(broadcast(act[t][2p, 2p+1]), panel[p][h]);
//           after a block's 16 pairs each int32 lane is the exact block dot product d of one (token, row)
//           (|d| <= 32 * 127 * 128), and
//               c[t][r] = fma(float(d), ws[r, b] * dx[t, b], c[t][r])
//           is exactly quad_tile's chain, so the two paths agree bitwise.
// The loops around the panels (token blocks, chunks, the per-thread buffer of chains) are
// q8_panels.inl's, shared with the AVX-VNNI kernel.

#if defined(__GNUC__)
#define GPTJ_NOINLINE __attribute__((noinline))
#else
#define GPTJ_NOINLINE
#endif

#include "kernels/q8_panels.inl"

constexpr int64_t kPackedMinTokens = 64;  // below this, packing costs more than it saves (docs/kernels.md)

// acc += madd(a, w): 8 int32 lanes, each a[2j] w[2j] + a[2j+1] w[2j+1] (int16 inputs, exact).
// In GNU asm only so that the sum lands in acc's register: GCC otherwise adds into the product's
// register and copies it back, one more instruction per step for the same vector ports.
inline void madd_accumulate(i32x8& acc, __m256i a, __m256i w) {
#if defined(__GNUC__)
    __m256i prod;
    __asm__("vpmaddwd %[w], %[a], %[prod]\n\tvpaddd %[prod], %[acc], %[acc]"
            : [acc] "+x"(acc), [prod] "=&x"(prod)
            : [a] "x"(a), [w] "x"(w));
#else
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
#endif
}

// Packs weight rows [0, rows) (rows <= 16; the rest of the panel is zeros) of blocks [b0, b0 + nbc)
// (nbc <= 8) as described above: wp[((b * 16 + p) * 2 + h) * 16 ..] and their scales as float32,
// sp[(b * 2 + h) * 8 + j] = float(ws[8h + j, b0 + b]).  w (rows, K), ws (rows, nb) start at the panel.
void pack_panel(int16_t* wp, float* sp, const int8_t* w, const uint16_t* ws, int64_t K, int64_t rows, int64_t b0,
                int64_t nbc) {
    const int64_t nb = K / kQ8Block;
    for (int h = 0; h < 2; ++h) {
        for (int64_t b = 0; b < nbc; ++b) {
            __m256i lo[8], hi[8];  // row j's pairs 0..7 and 8..15, as int16
            for (int j = 0; j < 8; ++j) {
                const int64_t r = 8 * h + j;
                const i8x32 x = r < rows ? load_i8x32(w + r * K + (b0 + b) * kQ8Block) : _mm256_setzero_si256();
                lo[j] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(x));
                hi[j] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(x, 1));
            }
            transpose_8x8_i32(lo);  // lo[p] lane j = row j's pair p
            transpose_8x8_i32(hi);
            for (int p = 0; p < 8; ++p) {
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(wp + ((b * 16 + p) * 2 + h) * 16), lo[p]);
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(wp + ((b * 16 + 8 + p) * 2 + h) * 16), hi[p]);
            }
        }
        for (int64_t b = 0; b < nbc; ++b)
            for (int j = 0; j < 8; ++j) {
                const int64_t r = 8 * h + j;
                sp[(b * 2 + h) * 8 + j] = r < rows ? f16_to_f32(ws[r * nb + b0 + b]) : 0.0f;
            }
    }
}

// TT tokens x 16 rows over one chunk of nbc blocks, continuing the chains in c (TT x 16, contiguous;
// started at zero when `first`). a: the chunk's TT token rows (stride lda int16); dx: their block scales
// (stride nb) from the chunk's first block; wp, sp: the packed panel. Not inlined: inside the OpenMP
// region GCC ran out of registers and kept the accumulators on the stack, halving the speed.
template <int TT>
GPTJ_NOINLINE void panel_tile(float* c, const int16_t* a, int64_t lda, const float* dx, int64_t nb, const int16_t* wp,
                              const float* sp, int64_t nbc, bool first) {
    if (first)
        for (int i = 0; i < TT * 2; ++i) _mm256_storeu_ps(c + 8 * i, _mm256_setzero_ps());
    for (int64_t b = 0; b < nbc; ++b) {
        i32x8 acc[TT][2];
        for (int t = 0; t < TT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
        const int16_t* wb = wp + b * 16 * 32;
        const int16_t* ab = a + b * kQ8Block;
        for (int p = 0; p < 16; ++p) {
            const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * p));
            const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 32 * p + 16));
            for (int t = 0; t < TT; ++t) {
                int32_t pair;  // (a[2p], a[2p + 1]) as one 32-bit lane
                std::memcpy(&pair, ab + t * lda + 2 * p, sizeof pair);
                const __m256i av = _mm256_set1_epi32(pair);
                madd_accumulate(acc[t][0], av, w0);
                madd_accumulate(acc[t][1], av, w1);
            }
        }
        for (int t = 0; t < TT; ++t) {
            const f32x8 sx = _mm256_broadcast_ss(dx + t * nb + b);
            for (int h = 0; h < 2; ++h) {
                const f32x8 s = _mm256_mul_ps(_mm256_loadu_ps(sp + (b * 2 + h) * 8), sx);  // dw * dx, as quad_tile
                float* ct = c + t * 16 + 8 * h;
                _mm256_storeu_ps(ct, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t][h]), s, _mm256_loadu_ps(ct)));
            }
        }
    }
}

// The int16 scheme for q8_panels.inl.
struct Int16Panels {
    using Act = int16_t;
    static void copy_chunk(int16_t* dst, const int8_t* qx, int64_t len) {
        for (int64_t k = 0; k < len; k += 16)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k),
                                _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qx + k))));
    }
    void pack(const int8_t* w, const uint16_t* ws, int64_t K, int64_t rows, int64_t b0, int64_t nbc) {
        pack_panel(wp.data(), sp.data(), w, ws, K, rows, b0, nbc);
    }
    template <int TT>
    void tile(float* c, const int16_t* a, int64_t lda, const float* dx, int64_t nb, int64_t nbc, bool first) const {
        panel_tile<TT>(c, a, lda, dx, nb, wp.data(), sp.data(), nbc, first);
    }
    std::vector<int16_t> wp = std::vector<int16_t>(size_t(kPanelChunkBlocks * 16 * 32));  // the packed panel
    std::vector<float> sp = std::vector<float>(size_t(kPanelChunkBlocks * 16));           // its scales
};

}  // namespace

void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    // Both paths compute every output element with the same float32 chain, so the switch is invisible
    // in the results; it only trades the packing work against its reuse over tokens.
    if (M >= kPackedMinTokens)
        q8_linear_panels<Int16Panels>(y, qx, dx, w, ws, b, M, N, K);
    else
        q8_linear_rows(y, qx, dx, w, ws, b, M, N, K);
}

}  // namespace gptj::kernels::avx2

#endif  // GPTJ_HAVE_AVX2
