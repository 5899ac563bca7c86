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
// Kernels: decode and short inputs read the packed bytes and unpack in registers (unsigned nibbles times
// signed activations is the u8 x s8 product maddubs and vpdpbusd compute, so the -8 is taken back once per
// block with the activations' block sums). The AVX2 and AVX-VNNI row kernels (q4_rows_avx2.inl) read the
// stored layout; the AVX-512 one reads a layout of its own, made when a model is built (q4_avx512.cpp:
// rows interleaved in panels of 16, one int32 lane per row). Prompts unpack slices of rows to int8 and run
// the q8 kernel of the level in use on them (q4_via_q8 below), so prompts get the q8 panel and tile kernels.
#pragma once

#include <cstdint>

#include "kernels/formats.h"

namespace gptj::kernels {

constexpr int kQ4Offset = 8;  // stored u = q + 8

// Rows [n0, n0 + rows) of W in q8's layout: q[n, k] = u[n, k] - 8 as int8 (rows, K), and the rows' float16
// scales (rows, K/32), returned: a view of w.scales, or `scales` filled, where w keeps them in another order.
// n0 is a multiple of 64.
using Q4Unpack = const uint16_t* (*)(int8_t* q, uint16_t* scales, const WeightData& w, int64_t n0, int64_t rows,
                                     int64_t K);

// y = x W^T + b for M tokens by unpacking slices of W's rows with `unpack` and running the q8 kernel that
// the level in use resolves to (the prompt path of every q4 level).
void q4_via_q8(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N, Q4Unpack unpack);

// Tokens from which the SIMD q4 kernels take q4_via_q8 (below it the row kernels read the file).
constexpr int64_t kQ4UnpackMinTokens = 16;

// y = x W^T + b.  qx (M, K), dx (M, K/32); w (N, K/2) uint8, ws (N, K/32); b (N) or nullptr; y (M, N).
#define GPTJ_Q4_DECL                                                                                                  \
    void q4_linear(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws, const float* b, \
                   int64_t M, int64_t N, int64_t K);
namespace scalar {
GPTJ_Q4_DECL
}
#if defined(GPTJ_HAVE_AVX2)
namespace avx2 {
GPTJ_Q4_DECL
// Q4Unpack of the stored layout; the AVX-VNNI level uses it too.
const uint16_t* q4_unpack(int8_t* q, uint16_t* scales, const WeightData& w, int64_t n0, int64_t rows, int64_t K);
}  // namespace avx2
#endif
#if defined(GPTJ_HAVE_AVXVNNI)
namespace avxvnni {
GPTJ_Q4_DECL
}
#endif
#if defined(GPTJ_HAVE_AVX512)
namespace avx512 {
// The table's q4 cell at this level: the kernel reads w as q4_pack lays it out.
PackedWeight q4_pack(const WeightData& stored, int64_t N, int64_t K);
void q4_linear(float* y, const LinearInputs& x, const WeightData& packed, const float* b, int64_t N);
}  // namespace avx512
#endif
#undef GPTJ_Q4_DECL

}  // namespace gptj::kernels
