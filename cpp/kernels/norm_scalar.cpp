// layer_norm, scalar reference.
//
// Contract: x, y (M, N), g, b (N); y may alias x. Per row: mean = sum(x) / N, var = sum((x - mean)^2) / N
// (biased, as torch), y = (x - mean) * (1 / sqrt(var + eps)) * g + b.
// Rounding: sums in fp32 in index order; error grows with N. Threads split the rows.
#include <cmath>

#include "kernels/impl.h"

namespace gptj::kernels::scalar {

void layer_norm(float* y, const float* x, const float* g, const float* b, int64_t M, int64_t N, float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
        const float* xm = x + m * N;
        float* ym = y + m * N;
        float sum = 0.0f;
        for (int64_t i = 0; i < N; ++i) sum += xm[i];
        const float mean = sum / float(N);
        float sq = 0.0f;
        for (int64_t i = 0; i < N; ++i) sq += (xm[i] - mean) * (xm[i] - mean);
        const float rstd = 1.0f / std::sqrt(sq / float(N) + eps);
        for (int64_t i = 0; i < N; ++i) ym[i] = (xm[i] - mean) * rstd * g[i] + b[i];
    }
}

}  // namespace gptj::kernels::scalar
