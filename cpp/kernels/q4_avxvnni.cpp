// q4 linear layer, AVX-VNNI (vpdpbusd): decode and short inputs unpack the nibbles in registers
// (q4_rows_avx2.inl); from kQ4UnpackMinTokens tokens on, q4_via_q8 runs the q8 kernels on unpacked rows.
// See q4.h for the contract.
#if defined(GPTJ_HAVE_AVXVNNI)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avxvnni {

namespace {

using avx2::add_halves_i32x8;
using avx2::f32x8;
using avx2::fold_halves_i32x8x4;
using avx2::load_i8x32;
using avx2::quad_scales;

#define GPTJ_Q4_ROWS_VNNI 1
#include "kernels/q4_rows_avx2.inl"

}  // namespace

void q4_linear(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    q4_linear_level(y, qx, dx, w, ws, b, M, N, K);
}

}  // namespace gptj::kernels::avxvnni

#endif  // GPTJ_HAVE_AVXVNNI
