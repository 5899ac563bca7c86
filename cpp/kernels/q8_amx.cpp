// AMX int8 linear layer for prompts (Sapphire Rapids and later Xeons): the tile unit computes the
// blocks' integer dot products, AVX-512 turns them into the same float32 chains as every other path.
// Compiled with -mamx-tile -mamx-int8 -mavx512f and called only when the CPU reports AMX-INT8 and the
// kernel has granted this process the tile state (isa_supported(Isa::Amx) in dispatch.cpp asks for it).
// The formats table sends fewer tokens than amx::kMinTokens to the level below. See q8.h for the contract.
//
// One tile instruction, TDPBSSD, multiplies a 16 x 32 int8 tile A by a 32 x 16 int8 tile B (stored as
// 8 rows of 16 groups of 4 bytes) into a 16 x 16 int32 tile C, exactly (signed x signed, int32 sums,
// no saturation). With A = 16 tokens of one block of 32 activations and B = 16 weight rows of the same
// block, C[t][r] is the block's exact integer dot product d, and per block
//     c[t][r] = fma(float(d), ws[r, b] * dx[t, b], c[t][r]),   y = c + bias   (c starts at 0)
// is the chain of the AVX2 and AVX-VNNI kernels, one zmm (16 rows) per token: bitwise the same results.
// C is reset for every block (the scales differ per block, so the integer sums cannot run on).
//
//   A   the activations, copied once per call chunk by chunk (as the AVX2 path stores its copy), with
//       the token count rounded up to 32 (zero rows), so that every tile load reads 16 whole rows:
//       tile (t, b) of the chunk at k0 at qa + k0 * M_pad + t * len + 32 (b - k0 / 32), rows len apart.
//   B   16 weight rows, one chunk of up to 8 blocks, packed per block as TDPBSSD wants them:
//       wp[(b * 8 + q) * 16 + j] = row j's bytes 32b + 4q .. 32b + 4q + 3 as one int32. 512 B a block.
//   step  per block: 2 token tiles x 2 panels = 4 C tiles (tmm0-3) from 2 A (tmm4-5) and 2 B (tmm6-7),
//       stored to a 4 KB buffer, then 64 zmm chains updated.
// Loop order per thread (a contiguous range of 16-row panels): token blocks of 512; panel pairs;
// chunks of 256 k (pack the pair's B); token tile pairs; blocks. The pair's chains for the token block
// (2 x 512 x 16 floats, 64 KB) stay in L2 and are written to y once.
// Measured figures and the variants tried: docs/kernels.md.
#if defined(GPTJ_HAVE_AMX)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/parallel.h"
#include "kernels/q8.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::amx {

namespace {

#include "kernels/q8_panels.inl"  // kPanelRows, kPanelChunk, store_panel_outputs

constexpr int64_t kTileTokens = 16;
constexpr int64_t kChunkBlocks = kPanelChunkBlocks;
constexpr int64_t kChunk = kPanelChunk;  // 256 elements of k
constexpr int64_t kTokenBlock = 512;     // token rows whose chains stay in L2 (docs/kernels.md)

// LDTILECFG's 64-byte operand, palette 1.
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};  // bytes per row
    uint8_t rows[16] = {};
};

TileConfig tile_config() {
    TileConfig cfg;
    for (int i = 0; i < 4; ++i) cfg.rows[i] = 16, cfg.colsb[i] = 64;  // C: 16 tokens x 16 int32
    for (int i = 4; i < 6; ++i) cfg.rows[i] = 16, cfg.colsb[i] = 32;  // A: 16 tokens x 32 int8
    for (int i = 6; i < 8; ++i) cfg.rows[i] = 8, cfg.colsb[i] = 64;   // B: 8 x (16 rows x 4 int8)
    return cfg;
}

// Packs weight rows [0, rows) (rows <= 16; the rest of the panel is zeros) of blocks [b0, b0 + nbc) into
// the B layout above, and their scales as float32: sp[b * 16 + j] = float(ws[j, b0 + b]).
void pack_panel(int32_t* wp, float* sp, const int8_t* w, const uint16_t* ws, int64_t K, int64_t rows, int64_t b0,
                int64_t nbc) {
    const int64_t nb = K / kQ8Block;
    for (int64_t b = 0; b < nbc; ++b) {
        for (int h = 0; h < 2; ++h) {
            __m256i r[8];  // row 8h + j's 32 bytes = its 8 quads
            for (int j = 0; j < 8; ++j) {
                const int64_t row = 8 * h + j;
                r[j] = row < rows
                           ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + row * K + (b0 + b) * kQ8Block))
                           : _mm256_setzero_si256();
            }
            avx2::transpose_8x8_i32(r);  // r[q] lane j = row 8h + j's quad q
            for (int q = 0; q < 8; ++q)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(wp + (b * 8 + q) * 16 + 8 * h), r[q]);
        }
    }
    for (int64_t j = 0; j < kPanelRows; ++j) {
        alignas(32) float row_scales[kChunkBlocks] = {};  // F16C conversion, exact like f16_to_f32
        if (j < rows && nbc == kChunkBlocks)
            _mm256_store_ps(row_scales,
                            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ws + j * nb + b0))));
        else if (j < rows)
            for (int64_t b = 0; b < nbc; ++b) row_scales[b] = f16_to_f32(ws[j * nb + b0 + b]);
        for (int64_t b = 0; b < nbc; ++b) sp[b * 16 + j] = row_scales[b];
    }
}

// c[t] = fma(float(d[t]), sp * dx[t], c[t]) for the real tokens t < tokens of one C tile; c and d hold
// 16 floats / int32 per token.
inline void update_chains(float* c, const int32_t* d, const float* sp, const float* dx, int64_t nb, int64_t tokens) {
    const __m512 sw = _mm512_loadu_ps(sp);
    for (int64_t t = 0; t < tokens; ++t) {
        const __m512 s = _mm512_mul_ps(sw, _mm512_set1_ps(dx[t * nb]));  // dw * dx, as the other kernels
        const __m512 dt = _mm512_cvtepi32_ps(_mm512_loadu_si512(d + 16 * t));
        _mm512_storeu_ps(c + 16 * t, _mm512_fmadd_ps(dt, s, _mm512_loadu_ps(c + 16 * t)));
    }
}

void q8_linear_tiles(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
                     int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / kQ8Block;
    const int64_t M_pad = (M + 2 * kTileTokens - 1) / (2 * kTileTokens) * (2 * kTileTokens);
    // The activations chunk-major, with zero tokens up to M_pad: chunk [k0, k0 + len) of token t at
    // qa[k0 * M_pad + t * len]. A tile's 16 rows are then len (256) bytes apart, not K: a power-of-two
    // stride of K bytes put all 16 in one L1 set.
    std::unique_ptr<int8_t[]> qa(new int8_t[size_t(M_pad * K)]);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < M_pad; ++t)
        for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
            const int64_t len = std::min(kChunk, K - k0);
            int8_t* dst = qa.get() + k0 * M_pad + t * len;
            if (t < M)
                std::memcpy(dst, qx + t * K + k0, size_t(len));
            else
                std::memset(dst, 0, size_t(len));
        }
    const TileConfig cfg = tile_config();
#pragma omp parallel
    {
        _tile_loadconfig(&cfg);
        int64_t n0, n1;
        thread_range(N, kPanelRows, &n0, &n1);
        const int64_t panels = (n1 - n0 + kPanelRows - 1) / kPanelRows;
        std::vector<int32_t> wp(size_t(2 * kChunkBlocks * 8 * 16));
        std::vector<float> sp(size_t(2 * kChunkBlocks * 16));
        alignas(64) int32_t d[2][4][16 * 16];                // two blocks' C tiles: [block & 1][tile][token][row]
        std::vector<float> c(size_t(2 * kTokenBlock * 16));  // [panel of the pair][token][16]
        for (int64_t t0 = 0; t0 < M; t0 += kTokenBlock) {
            const int64_t tb = std::min(kTokenBlock, M - t0);
            for (int64_t pi = 0; pi < panels; pi += 2) {
                const int64_t n = n0 + pi * kPanelRows;
                const int64_t rows0 = std::min(kPanelRows, n1 - n),
                              rows1 = std::max<int64_t>(0, std::min(kPanelRows, n1 - n - kPanelRows));
                std::fill(c.begin(), c.end(), 0.0f);
                for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
                    const int64_t len = std::min(kChunk, K - k0), nbc = len / kQ8Block, bk = k0 / kQ8Block;
                    int32_t* wp1 = wp.data() + kChunkBlocks * 8 * 16;
                    float* sp1 = sp.data() + kChunkBlocks * 16;
                    pack_panel(wp.data(), sp.data(), w + n * K, ws + n * nb, K, rows0, bk, nbc);
                    pack_panel(wp1, sp1, w + (n + kPanelRows) * K, ws + (n + kPanelRows) * nb, K, rows1, bk, nbc);
                    for (int64_t t = 0; t < tb; t += 2 * kTileTokens) {
                        const int8_t* a = qa.get() + k0 * M_pad + (t0 + t) * len;
                        const int64_t real0 = std::min(kTileTokens, tb - t);
                        const int64_t real1 = std::max<int64_t>(0, std::min(kTileTokens, tb - t - kTileTokens));
                        // Software pipeline: the tile products of block bi are issued before the chains of
                        // block bi - 1 are updated (from the other half of d), so the tile unit and the
                        // vector units work at the same time.
                        auto chains = [&](int64_t bi) {
                            const int32_t(*db)[16 * 16] = d[bi & 1];
                            const float* dxb = dx + (t0 + t) * nb + bk + bi;
                            float* c0 = c.data() + t * 16;                  // panel 0, tokens t ..
                            float* c1 = c.data() + (kTokenBlock + t) * 16;  // panel 1
                            update_chains(c0, db[0], sp.data() + bi * 16, dxb, nb, real0);
                            update_chains(c1, db[1], sp1 + bi * 16, dxb, nb, rows1 > 0 ? real0 : 0);
                            update_chains(c0 + kTileTokens * 16, db[2], sp.data() + bi * 16, dxb + kTileTokens * nb, nb,
                                          real1);
                            update_chains(c1 + kTileTokens * 16, db[3], sp1 + bi * 16, dxb + kTileTokens * nb, nb,
                                          rows1 > 0 ? real1 : 0);
                        };
                        for (int64_t bi = 0; bi < nbc; ++bi) {
                            int32_t(*db)[16 * 16] = d[bi & 1];
                            _tile_zero(0);
                            _tile_zero(1);
                            _tile_zero(2);
                            _tile_zero(3);
                            _tile_loadd(4, a + bi * kQ8Block, len);                      // tokens t .. t+15
                            _tile_loadd(5, a + kTileTokens * len + bi * kQ8Block, len);  // tokens t+16 .. t+31
                            _tile_loadd(6, wp.data() + bi * 8 * 16, 64);                 // panel 0
                            _tile_loadd(7, wp1 + bi * 8 * 16, 64);                       // panel 1
                            _tile_dpbssd(0, 4, 6);
                            _tile_dpbssd(1, 4, 7);
                            _tile_dpbssd(2, 5, 6);
                            _tile_dpbssd(3, 5, 7);
                            _tile_stored(0, db[0], 64);
                            _tile_stored(1, db[1], 64);
                            _tile_stored(2, db[2], 64);
                            _tile_stored(3, db[3], 64);
                            if (bi > 0) chains(bi - 1);
                        }
                        chains(nbc - 1);
                    }
                }
                store_panel_outputs(y + t0 * N, N, c.data(), tb, n, rows0, b);
                store_panel_outputs(y + t0 * N, N, c.data() + kTokenBlock * 16, tb, n + kPanelRows, rows1, b);
            }
        }
        _tile_release();
    }
}

}  // namespace

void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    q8_linear_tiles(y, qx, dx, w, ws, b, M, N, K);
}

}  // namespace gptj::kernels::amx

#endif  // GPTJ_HAVE_AMX
