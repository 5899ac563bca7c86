// layer_norm, AVX2: y = (x - mean) / sqrt(var + eps) * g + b per row, biased variance.
//
// Contract: x, y (M, N), g, b (N); y may alias x.
// Rounding: mean and variance are fp32 sums in 8 lanes (index = lane mod 8) reduced by hsum_f32x8, then
// the N % 8 tail in order; a different order from the scalar version, with the same error growth in N.
// Threads split the rows.
#include <cmath>

#include "kernels/impl.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

void layer_norm(float* y, const float* x, const float* g, const float* b, int64_t M, int64_t N, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * N;
        float* ym = y + m * N;
        const int64_t n8 = N / 8 * 8;

        f32x8 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < n8; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(xm + i));
        float sum = hsum_f32x8(acc);
        for (int64_t i = n8; i < N; ++i) sum += xm[i];
        const float mean = sum / float(N);

        const f32x8 mean8 = _mm256_set1_ps(mean);
        acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < n8; i += 8) {
            const f32x8 d = _mm256_sub_ps(_mm256_loadu_ps(xm + i), mean8);
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        float sq = hsum_f32x8(acc);
        for (int64_t i = n8; i < N; ++i) sq += (xm[i] - mean) * (xm[i] - mean);
        const float rstd = 1.0f / std::sqrt(sq / float(N) + eps);

        const f32x8 rstd8 = _mm256_set1_ps(rstd);
        for (int64_t i = 0; i < n8; i += 8) {
            const f32x8 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xm + i), mean8), rstd8);
            _mm256_storeu_ps(ym + i, _mm256_fmadd_ps(xhat, _mm256_loadu_ps(g + i), _mm256_loadu_ps(b + i)));
        }
        for (int64_t i = n8; i < N; ++i) ym[i] = (xm[i] - mean) * rstd * g[i] + b[i];
    }
}

}  // namespace gptj::kernels::avx2
