// q4 linear layer, AVX2 (maddubs + madd): decode and short inputs unpack the nibbles in registers
// (q4_rows_avx2.inl); from kQ4UnpackMinTokens tokens on, q4_via_q8 runs the q8 kernels on unpacked rows.
// See q4.h for the contract.
#if defined(GPTJ_HAVE_AVX2)

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

namespace {

#include "kernels/q4_rows_avx2.inl"

}  // namespace

const uint16_t* q4_unpack(int8_t* q, uint16_t*, const WeightData& stored, int64_t n0, int64_t rows, int64_t K) {
    const uint8_t* w = static_cast<const uint8_t*>(stored.values) + n0 * K / 2;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k0 = 0; k0 < K; k0 += kQ8Block) {
            const __m256i u = unpack_u4x32(w + (r * K + k0) / 2);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + r * K + k0),
                                _mm256_sub_epi8(u, _mm256_set1_epi8(kQ4Offset)));
        }
    return stored.scales + n0 * (K / kQ8Block);
}

void q4_linear(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    q4_linear_level(y, qx, dx, w, ws, b, M, N, K);
}

}  // namespace gptj::kernels::avx2

#endif  // GPTJ_HAVE_AVX2
