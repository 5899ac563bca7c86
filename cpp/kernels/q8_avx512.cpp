// q8 linear layer, AVX-512 (F, BW, VL, VNNI): decode and short inputs take the 512-bit row kernel of
// rows_avx512.h; from kRowsMaxTokens tokens on, the level below's kernels (AVX-VNNI panels where the CPU
// has them). See q8.h for the contract.
#if defined(GPTJ_HAVE_AVX512)

#include "kernels/formats.h"
#include "kernels/q8.h"
#include "kernels/rows_avx512.h"

namespace gptj::kernels::avx512 {

namespace {
constexpr int64_t kRowsMaxTokens = 16;  // from here on the AVX-VNNI panels win (as in q8_avxvnni.cpp)
}

void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    if (M < kRowsMaxTokens) return rows_linear<Q8Bytes>(y, qx, dx, w, ws, b, M, N, K);
    static const WeightFormat& q8 = weight_format("q8");
    LinearInputs x;
    x.qx = qx, x.dx = dx, x.M = M, x.K = K;
    resolve(q8, Isa::AvxVnni, M)(y, x, WeightData{w, ws}, b, N);
}

}  // namespace gptj::kernels::avx512

#endif  // GPTJ_HAVE_AVX512
