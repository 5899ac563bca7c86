// q4 linear layer, AVX-512 (F, BW, VL, VNNI): decode and short inputs take the 512-bit row kernel of
// rows_avx512.h on the packed nibbles; from kQ4UnpackMinTokens tokens on, q4_via_q8 runs the q8 kernels on
// unpacked rows. See q4.h for the contract.
#if defined(GPTJ_HAVE_AVX512)

#include "kernels/q4.h"
#include "kernels/rows_avx512.h"

namespace gptj::kernels::avx512 {

void q4_linear(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    if (M < kQ4UnpackMinTokens) return rows_linear<Q4Nibbles>(y, qx, dx, w, ws, b, M, N, K);
    LinearInputs x;
    x.qx = qx, x.dx = dx, x.M = M, x.K = K;
    q4_via_q8(y, x, WeightData{w, ws}, b, N, avx2::q4_unpack);
}

}  // namespace gptj::kernels::avx512

#endif  // GPTJ_HAVE_AVX512
