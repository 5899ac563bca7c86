// int8 block-quantized linear layers: the q8 format of gptj_ref/quant.py, in C++.
//
// Layout (one block = kQ8Block = 32 consecutive elements along K, the input dimension):
//   weights      w  (N, K) int8, row-major as nn.Linear;  ws (N, K/32) float16 bits (uint16), one scale per
//                block: W[n, 32b + j] ~= w[n, 32b + j] * float(ws[n, b]). These are the two tensors of a q8
//                native file, used in place (memory-mapped): the kernels never repack or copy them.
//   activations  qx (M, K) int8;  dx (M, K/32) float32, one scale per block: x ~= qx * dx blockwise.
//
// Range: activations are in [-127, 127], never -128 (the quantizers here and in quant.py clip there), and
// the kernels rely on it. Weights are written in [-127, 127] too (NativeFile.check() verifies a file), but
// every kernel is exact for -128 as well, so a file made elsewhere cannot make them compute garbage. The
// AVX2 "sign trick" is why activations may not be -128: maddubs multiplies unsigned by signed bytes, so a
// block's dot product is |w| (as u8: 0..128) times sign(qx, w) (qx negated where w < 0; negating -128
// would overflow), and the pair sums <= 2 * 128 * 127 = 32512 stay below int16's 32767.
//
// Rounding policy.
//   quantize_activations is bit-exact with quant.quantize_activations: dx = float32(max |x|) / 127 by IEEE
//   float32 division, qx = round-half-to-even(x / dx) (a true division, then rounding in the default
//   MXCSR mode), clipped to [-127, 127]; an all-zero block gives dx = 0 and qx = 0. Inputs must be finite.
//   q8_linear: each block's integer dot product is exact in int32 (|dot| <= 32 * 127^2 < 2^24, so its
//   float conversion is exact too); each block contributes float(dot) * s with s = float(ws) * dx rounded
//   once. The scalar kernel sums the blocks in order b = 0, 1, ... with a separate multiply and add,
//   exactly as quant.q8_linear (bitwise equal on x86-64, where the scalar file has no FMA to contract to).
//   The AVX2 kernel computes the same single chain per output element, in the same block order, with
//   the multiply and add fused: acc = fma(float(dot_b), s_b, acc), then y = acc + bias. It differs from
//   the emulation by the FMA's skipped rounding only: within quant.q8_linear_error_bound(..., lanes=1).
//   Every output element goes through the same operations whatever M, the tile it lands in or the thread
//   count, so a token's output does not depend on the rest of the batch and 1 and N threads agree bitwise.
//
// Threads: q8_linear splits contiguous ranges of output rows n (never K); quantize_activations splits
// blocks (for large inputs). Either way each value is computed by the same operations.
#pragma once

#include <cstdint>

#include "kernels/half.h"

namespace gptj::kernels {

constexpr int64_t kQ8Block = 32;  // elements per block along K, one scale each
constexpr int kQ8Max = 127;       // int8 values used: [-kQ8Max, kQ8Max]

// Quantize activations per token and block of 32.
// x (M, K) float32 -> qx (M, K) int8, dx (M, K/32) float32.  K % 32 == 0.
void quantize_activations(int8_t* qx, float* dx, const float* x, int64_t M, int64_t K);

// The q8 linear layer, y = x W^T + b on quantized activations and weights, is a row of the formats table
// (formats.h, formats.cpp); its kernels, one per level:
// qx (M, K), dx (M, K/32); w (N, K) int8, ws (N, K/32) float16 bits; b (N) or nullptr; y (M, N).
// K % 32 == 0. Small M (decode) streams the weights from the file four rows at a time; large M (prompts)
// packs 16-row panels (int16 for AVX2, int8 for AVX-VNNI) or tiles (AMX) and runs a register-tiled
// product over them. All compute the same chain per output element, so they agree bitwise.
// avx2:: exists only when GPTJ_HAVE_AVX2 is defined, and so on.
#define GPTJ_Q8_DECLS                                                                                                \
    void quantize_activations(int8_t* qx, float* dx, const float* x, int64_t M, int64_t K);                          \
    void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b, \
                   int64_t M, int64_t N, int64_t K);

namespace scalar {
GPTJ_Q8_DECLS
}
#if defined(GPTJ_HAVE_AVX2)
namespace avx2 {
GPTJ_Q8_DECLS
}
#endif
#if defined(GPTJ_HAVE_AVXVNNI)
namespace avxvnni {  // q8_linear only (activations are quantized by avx2::)
void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K);
}
#endif
#if defined(GPTJ_HAVE_AVX512)
namespace avx512 {  // q8_linear only: the row kernel on 512-bit vectors, prompts through the level below
void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K);
}
#endif
#if defined(GPTJ_HAVE_AMX)
namespace amx {  // q8_linear for kMinTokens tokens or more (the table sends fewer to the level below)
constexpr int64_t kMinTokens = 32;  // two token tiles
void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K);
}  // namespace amx
#endif
#undef GPTJ_Q8_DECLS

}  // namespace gptj::kernels
