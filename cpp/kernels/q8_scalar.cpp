// Scalar reference of the int8 kernels (the oracle of the SIMD ones and the fallback on other CPUs), and
// the activation quantizer's choice between scalar and AVX2 (the linear layer's is formats.cpp's table).
// See q8.h for the contract.
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/q8.h"

namespace gptj::kernels {

namespace scalar {

void quantize_activations(int8_t* qx, float* dx, const float* x, int64_t M, int64_t K) {
    const int64_t nb = K / kQ8Block;
    // Blocks are independent: threads split them, every block computed the same way.
#pragma omp parallel for schedule(static) if (M * K >= (int64_t(1) << 18))
    for (int64_t i = 0; i < M * nb; ++i) {
        const float* xb = x + i * kQ8Block;
        float amax = 0.0f;
        for (int64_t j = 0; j < kQ8Block; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        const float d = amax / float(kQ8Max);
        const float divisor = d > 0.0f ? d : 1.0f;  // a zero block holds zeros: q = 0, no division by 0
        for (int64_t j = 0; j < kQ8Block; ++j) {
            const float v = std::nearbyint(xb[j] / divisor);  // ties to even in the default rounding mode
            qx[i * kQ8Block + j] = int8_t(std::fmin(std::fmax(v, -float(kQ8Max)), float(kQ8Max)));
        }
        dx[i] = d;
    }
}

// y[t, n] = sum_b float(dot(qx[t, b], w[n, b])) * (float(ws[n, b]) * dx[t, b]), b in order, + b[n].
void q8_linear(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / kQ8Block;
#pragma omp parallel
    {
        int64_t n0, n1;
        thread_range(N, 1, &n0, &n1);
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t t = 0; t < M; ++t) {
                float acc = 0.0f;
                for (int64_t blk = 0; blk < nb; ++blk) {
                    const int8_t* a = qx + t * K + blk * kQ8Block;
                    const int8_t* c = w + n * K + blk * kQ8Block;
                    int32_t dot = 0;
                    for (int64_t j = 0; j < kQ8Block; ++j) dot += int32_t(a[j]) * int32_t(c[j]);
                    const float s = f16_to_f32(ws[n * nb + blk]) * dx[t * nb + blk];
                    const float term = float(dot) * s;
                    acc = acc + term;
                }
                y[t * N + n] = b ? acc + b[n] : acc;
            }
    }
}

}  // namespace scalar

void quantize_activations(int8_t* qx, float* dx, const float* x, int64_t M, int64_t K) {
#if defined(GPTJ_HAVE_AVX2)
    if (isa() != Isa::Scalar) return avx2::quantize_activations(qx, dx, x, M, K);
#endif
    scalar::quantize_activations(qx, dx, x, M, K);
}

}  // namespace gptj::kernels
