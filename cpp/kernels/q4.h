// 4-bit block-quantized linear layers: the q4 format of gptj_ref/formats.py, in C++.
//
// Layout (one block = 32 consecutive elements along K, one float16 scale each, as q8):
//   values  w  (N, K/2) uint8. A weight's 4-bit value is q in [-8, 7], stored as u = q + 8 in [0, 15];
//              byte j (j < 16) of block b of row n holds u[n, 32b + j] in its low nibble and
//              u[n, 32b + 16 + j] in its high nibble, so one 16-byte load, masked and shifted, gives the
//              block's 32 values in order.
//   scales  ws (N, K/32) float16 bits:  W[n, 32b + j] ~= (u[n, 32b + j] - 8) * float(ws[n, b]).
//   0.5625 bytes per weight (q8: 1.0625).
// Activations are q8's int8 blocks (q8.h: quantize_activations).
//
// Arithmetic: exactly q8's on the unpacked values q = u - 8. Each block's integer dot product
//     d = sum_j qx_j q_j = sum_j qx_j u_j - 8 sum_j qx_j           exact in int32 (|d| <= 32 * 127 * 8)
// and then q8's float32 chain: the scalar kernel adds float(d) * (float(ws) * dx) in block order (bitwise
// quant.q8_linear on the unpacked weight, which is the Python emulation); the SIMD kernels fuse it,
// acc = fma(float(d), float(ws) * dx, acc), as the q8 SIMD kernels do, so every SIMD level agrees bitwise
// with the others and with the q8 kernels run on the unpacked weight.
//
// Kernels: the SIMD levels read each weight as 16-row panels (below), made once when a model is built
// (q4_pack_panels), and their decode kernels (q4_panels_avx2.inl for AVX2 and AVX-VNNI, q4_avx512.cpp)
// keep one row per int32 lane: unsigned nibbles times signed activations is the u8 x s8 product maddubs
// and vpdpbusd compute, so the -8 is taken back once per block with the activations' block sums (no
// horizontal sums, no shuffles). Prompts unpack slices of the panels to int8 rows and run the q8 kernel of
// the level in use on them (q4_via_q8), so prompts get the q8 panel and tile kernels.
//
// Panels (the layout the SIMD kernels read; N rounded up to 16 with zero rows):
//   values  panel p, block b: 256 bytes at (p * nb + b) * 256, four 64-byte chunks. Chunk c holds, as its
//           int32 lane r, the stored bytes 4c..4c+3 of row 16p + r's block b: low nibbles = the row's
//           elements 4c..4c+3, high nibbles = its elements 16 + 4c..16 + 4c + 3. (A 256-bit kernel reads
//           rows 0..7 from a chunk's first 32 bytes and rows 8..15 from the next 32.)
//   scales  panel p, block b: the 16 rows' float16 scales at (p * nb + b) * 16.
// The stored rows with their 4-byte pieces transposed: nothing is re-quantized.
#pragma once

#include <cstdint>

#include "kernels/formats.h"

namespace gptj::kernels {

constexpr int kQ4Offset = 8;  // stored u = q + 8

// Rows [n0, n0 + rows) of W in q8's layout: q[n, k] = u[n, k] - 8 as int8 (rows, K) and the rows' float16
// scales (rows, K/32). n0 is a multiple of 64.
using Q4Unpack = void (*)(int8_t* q, uint16_t* scales, const WeightData& w, int64_t n0, int64_t rows, int64_t K);

// y = x W^T + b for M tokens by unpacking slices of W's rows with `unpack` and running the q8 kernel that
// the level in use resolves to (the prompt path of every q4 level).
void q4_via_q8(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N, Q4Unpack unpack);

// Tokens from which the SIMD q4 kernels take q4_via_q8 (below it the panel kernels read the weights).
constexpr int64_t kQ4UnpackMinTokens = 16;

constexpr int64_t kQ4PanelRows = 16;
constexpr int64_t kQ4PanelBlockBytes = kQ4PanelRows * 32 / 2;  // one block of a panel
// How far ahead of the block being read the panel kernels fetch their stream into L2 (docs/kernels.md).
constexpr int64_t kQ4PanelPrefetchBytes = 16384;

// The panels of a stored weight W (N, K): the `pack` of every SIMD q4 cell.
PackedWeight q4_pack_panels(const WeightData& stored, int64_t N, int64_t K);

// 8 * (sum of each block of qx): what the stored offset adds to a block's dot product.  qx (M, K) -> ox (M, K/32)
inline void q4_offset_sums(int32_t* ox, const int8_t* qx, int64_t M, int64_t K) {
    for (int64_t i = 0; i < M * (K / 32); ++i) {
        int32_t s = 0;
        for (int64_t j = 0; j < 32; ++j) s += qx[i * 32 + j];
        ox[i] = kQ4Offset * s;
    }
}

namespace scalar {
// y = x W^T + b on the stored layout.  qx (M, K), dx (M, K/32); w (N, K/2) uint8, ws (N, K/32); b (N) or
// nullptr; y (M, N).
void q4_linear(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K);
}  // namespace scalar

// The SIMD levels' cells: y = x W^T + b with W as q4_pack_panels lays it out.
#define GPTJ_Q4_PANELS_DECL \
    void q4_linear(float* y, const LinearInputs& x, const WeightData& panels, const float* b, int64_t N);
#if defined(GPTJ_HAVE_AVX2)
namespace avx2 {
GPTJ_Q4_PANELS_DECL
// The Q4Unpack of the panels; the prompt path of every SIMD level uses it.
void q4_unpack_panels(int8_t* q, uint16_t* scales, const WeightData& panels, int64_t n0, int64_t rows, int64_t K);
}  // namespace avx2
#endif
#if defined(GPTJ_HAVE_AVXVNNI)
namespace avxvnni {
GPTJ_Q4_PANELS_DECL
}
#endif
#if defined(GPTJ_HAVE_AVX512)
namespace avx512 {
GPTJ_Q4_PANELS_DECL
}
#endif
#undef GPTJ_Q4_PANELS_DECL

}  // namespace gptj::kernels
