// Elementwise and row-wise activations, scalar reference: gelu_new, softmax, residual_add.
//
// Rounding: gelu_new follows transformers' order of operations with std::tanh (libm, < 1 ulp);
// softmax uses std::exp of (x - max) and divides by the fp32 sum taken in index order.
#include <cmath>

#include "kernels/impl.h"

namespace gptj::kernels::scalar {

// gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
void gelu_new(float* x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        const float inner = 0.7978845608f * (v + 0.044715f * (v * v * v));
        x[i] = (0.5f * v) * (1.0f + std::tanh(inner));
    }
}

// y = exp(x - max) / sum(exp(x - max)), the sum in index order; y may alias x.  x, y (n), n >= 1
void softmax_row(float* y, const float* x, int64_t n) {
    float mx = x[0];
    for (int64_t i = 1; i < n; ++i) mx = std::fmax(mx, x[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += (y[i] = std::exp(x[i] - mx));
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) y[i] *= inv;
}

void softmax(float* y, const float* x, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) softmax_row(y + m * N, x + m * N, N);
}

// x = (a + m) + x, the order transformers adds GPT-J's attention and MLP outputs to the residual.
void residual_add(float* x, const float* a, const float* m, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) x[i] = (a[i] + m[i]) + x[i];
}

}  // namespace gptj::kernels::scalar
