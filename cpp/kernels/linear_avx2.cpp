// linear, AVX2+FMA: y = x W^T + b with register tiles of RM rows of x times RN rows of W.
//
// Contract: x (M, K), w (N, K) as nn.Linear, b (N) or nullptr, y (M, N); no aliasing.
// Rounding: for each K block of kLinearBlockK elements, y[m, n] takes one partial dot product: 8 lane
// sums over k = lane (mod 8) by FMA in increasing k, reduced by hsum_f32x8, then the block's last K % 8
// terms by scalar FMA. The partials are added to y in block order, then b[n]. This sequence depends on
// K only -- not on M, the tile an element falls in, the loop order or the thread count -- so results
// are bitwise reproducible across thread counts and a token's row is the same alone or in a prompt.
// Like tinyBLAS, no error bound beyond that of a blocked recursive sum (it grows with K).
//
// Work split: threads take chunks of output columns (rows of W) dynamically, so a core slowed by
// another process does not hold the other back; the K sum is never split. Two loop orders, same
// arithmetic:
//   M <= kMidM (decoding, batched decoding, short prompts; memory-bound or nearly): each W tile is
//     streamed once from start to end of K while x's K-block slice stays in L1/L2;
//   M > kMidM (prompts; compute-bound): K block -> W block of kNb rows packed per thread (L2) -> row
//     tile of x (L1) -> W tile.
// Slices of x (M > kRm) and W blocks are copied to contiguous buffers first: with power-of-two row
// strides such as K = 4096 every row would otherwise fall into the same cache sets.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/impl.h"
#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

namespace {

constexpr int kRm = 4;                // rows of x per register tile
constexpr int kRn = 3;                // rows of W per register tile: kRm * kRn accumulators + kRn W vectors
constexpr int64_t kNb = 20 * kRn;     // rows of W per cache block in the prompt path
constexpr int64_t kMidM = 64;         // up to this many rows of x, W is streamed once
constexpr int64_t kChunk = 16 * kRn;  // rows of W a thread takes at a time when streaming W

// y[i, j] (+)= x[i, 0:kc] . w[j, 0:kc] for i < RM, j < RN; `first` starts the sum, `bias` (when not null)
// is added after the last block.  x (RM, ldx), w (RN, ldw), y (RM, ldy), bias (RN)
template <int RM, int RN>
void tile(float* y, int64_t ldy, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kc, bool first,
          const float* bias) {
    f32x8 acc[RM][RN];
    for (int i = 0; i < RM; ++i)
        for (int j = 0; j < RN; ++j) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        f32x8 wv[RN];
        for (int j = 0; j < RN; ++j) wv[j] = _mm256_loadu_ps(w + j * ldw + k);
        for (int i = 0; i < RM; ++i) {
            const f32x8 xv = _mm256_loadu_ps(x + i * ldx + k);
            for (int j = 0; j < RN; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < RM; ++i) {
        for (int j = 0; j < RN; ++j) {
            float s = hsum_f32x8(acc[i][j]);
            for (int64_t kk = k; kk < kc; ++kk) s = std::fma(x[i * ldx + kk], w[j * ldw + kk], s);
            float* yij = y + i * ldy + j;
            float r = first ? s : *yij + s;
            if (bias) r = r + bias[j];
            *yij = r;
        }
    }
}

using TileFn = void (*)(float*, int64_t, const float*, int64_t, const float*, int64_t, int64_t, bool, const float*);

template <int RM, int... RN>
constexpr auto tile_row(std::integer_sequence<int, RN...>) {
    return std::array<TileFn, kRn>{&tile<RM, RN + 1>...};
}

template <int... RM>
constexpr auto tile_table(std::integer_sequence<int, RM...>) {
    return std::array<std::array<TileFn, kRn>, kRm>{tile_row<RM + 1>(std::make_integer_sequence<int, kRn>{})...};
}

// kTiles[rm - 1][rn - 1] is the tile for an rm x rn corner of y.
constexpr auto kTiles = tile_table(std::make_integer_sequence<int, kRm>{});

// The rm x rn tile of y at y (row stride ldy) from rows of x at x (stride ldx) and rows of W at w
// (stride ldw), over kc elements of K.
inline void run_tile(float* y, int64_t ldy, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t rm,
                     int64_t rn, int64_t kc, bool first, const float* bias) {
    kTiles[rm - 1][rn - 1](y, ldy, x, ldx, w, ldw, kc, first, bias);
}

// Rows [0, rows) and columns [k0, k0 + kc) of a (rows, K) matrix into a contiguous (rows, kc) buffer:
// power-of-two strides like K = 4096 would otherwise map every row to the same cache sets.
inline void pack_rows(float* dst, const float* src, int64_t rows, int64_t K, int64_t k0, int64_t kc) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * kc, src + r * K + k0, sizeof(float) * kc);
}

}  // namespace

void linear(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K) {
    if (K == 0) {  // an empty sum: y = b
        for (int64_t i = 0; i < M * N; ++i) y[i] = b ? b[i % N] : 0.0f;
        return;
    }
    const int64_t n_blocks = (K + kLinearBlockK - 1) / kLinearBlockK;
    // x as (n_blocks, M, kc) when it is packed: each K block's slice of x is contiguous.
    std::vector<float> x_pack(M > kRm ? size_t(M * K) : 0);
    auto x_block = [&](int64_t k0) { return x_pack.data() + M * k0; };
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t kb = 0; kb < (M > kRm ? n_blocks : 0); ++kb) {
            const int64_t k0 = kb * kLinearBlockK;
            pack_rows(x_block(k0), x, M, K, k0, std::min(kLinearBlockK, K - k0));
        }
        if (M <= kMidM) {
            // Decoding, small batches, short prompts: stream each W tile once from start to end of K (long
            // sequential reads from memory) while x's K-block slice stays in L1/L2.
#pragma omp for schedule(dynamic, 1)
            for (int64_t chunk = 0; chunk < (N + kChunk - 1) / kChunk; ++chunk) {
                const int64_t n_end = std::min(N, (chunk + 1) * kChunk);
                for (int64_t n = chunk * kChunk; n < n_end; n += kRn)
                    for (int64_t k0 = 0; k0 < K; k0 += kLinearBlockK) {
                        const int64_t kc = std::min(kLinearBlockK, K - k0), rn = std::min<int64_t>(kRn, n_end - n);
                        const float* x0 = M > kRm ? x_block(k0) : x + k0;
                        const int64_t ldx = M > kRm ? kc : K;
                        const float* bias = b && k0 + kc == K ? b + n : nullptr;
                        for (int64_t m = 0; m < M; m += kRm)
                            run_tile(y + m * N + n, N, x0 + m * ldx, ldx, w + n * K + k0, K,
                                     std::min<int64_t>(kRm, M - m), rn, kc, k0 == 0, bias);
                    }
            }
        } else {
            // Long prompts: compute-bound. Per K block (the blocks in order, a barrier between them), each
            // thread packs W blocks of kNb rows (kept in L2) and runs every row tile of x (kept in L1)
            // against them.
            std::vector<float> w_pack(size_t(kNb * std::min(K, kLinearBlockK)));
            for (int64_t k0 = 0; k0 < K; k0 += kLinearBlockK) {
                const int64_t kc = std::min(kLinearBlockK, K - k0);
#pragma omp for schedule(dynamic, 1)
                for (int64_t nb = 0; nb < N; nb += kNb) {
                    const int64_t nb_rows = std::min(kNb, N - nb);
                    pack_rows(w_pack.data(), w + nb * K, nb_rows, K, k0, kc);
                    for (int64_t m = 0; m < M; m += kRm)
                        for (int64_t j = 0; j < nb_rows; j += kRn) {
                            const float* bias = b && k0 + kc == K ? b + nb + j : nullptr;
                            run_tile(y + m * N + nb + j, N, x_block(k0) + m * kc, kc, w_pack.data() + j * kc, kc,
                                     std::min<int64_t>(kRm, M - m), std::min<int64_t>(kRn, nb_rows - j), kc, k0 == 0,
                                     bias);
                        }
                }
            }
        }
    }
}

}  // namespace gptj::kernels::avx2
