// linear, scalar reference: y = x W^T + b.
//
// Contract: x (M, K), w (N, K) as nn.Linear, b (N) or nullptr, y (M, N); no aliasing.
// Rounding: each y[m, n] is one fp32 sum over k in increasing order (multiply, then add), then + b[n].
// The error bound grows with K like any recursive sum. Threads split the N columns.
#include "kernels/impl.h"
#include "kernels/parallel.h"

namespace gptj::kernels::scalar {

void linear(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        const float* wn = w + n * K;
        for (int64_t m = 0; m < M; ++m) {
            const float* xm = x + m * K;
            float acc = 0.0f;
            for (int64_t k = 0; k < K; ++k) acc += xm[k] * wn[k];
            y[m * N + n] = b ? acc + b[n] : acc;
        }
    }
}

}  // namespace gptj::kernels::scalar
