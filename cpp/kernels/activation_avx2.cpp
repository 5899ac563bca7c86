// Elementwise and row-wise activations, AVX2: gelu_new, softmax, residual_add.
//
// Rounding: tanh and exp come from simd_avx2.h (exp about 2 ulp; tanh within 3e-7 absolute), so gelu_new
// is within about 2e-7 |x| + 1 ulp of the libm version and softmax within a few ulp per probability.
// Tails shorter than 8 lanes go through the same vector code with masked loads and stores.
#include "kernels/impl.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

// gelu_new on 8 lanes: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
static inline f32x8 gelu_new_f32x8(f32x8 x) {
    const f32x8 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    const f32x8 inner =
        _mm256_mul_ps(_mm256_set1_ps(0.7978845608f), _mm256_add_ps(x, _mm256_mul_ps(_mm256_set1_ps(0.044715f), x3)));
    const f32x8 half_x = _mm256_mul_ps(_mm256_set1_ps(0.5f), x);
    return _mm256_mul_ps(half_x, _mm256_add_ps(_mm256_set1_ps(1.0f), tanh_f32x8(inner)));
}

void gelu_new(float* x, int64_t n) {
    const int64_t n8 = n / 8 * 8;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n8; i += 8) _mm256_storeu_ps(x + i, gelu_new_f32x8(_mm256_loadu_ps(x + i)));
    if (n8 < n) {
        const __m256i tail = first_lanes_mask(n - n8);
        _mm256_maskstore_ps(x + n8, tail, gelu_new_f32x8(_mm256_maskload_ps(x + n8, tail)));
    }
}

// y[m, :] = exp(x[m, :] - max) / sum(exp(x[m, :] - max))
void softmax(float* y, const float* x, int64_t M, int64_t N) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) softmax_row(y + m * N, x + m * N, N);
}

// x = (a + m) + x
void residual_add(float* x, const float* a, const float* m, int64_t n) {
    const int64_t n8 = n / 8 * 8;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n8; i += 8) {
        const f32x8 am = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(m + i));
        _mm256_storeu_ps(x + i, _mm256_add_ps(am, _mm256_loadu_ps(x + i)));
    }
    for (int64_t i = n8; i < n; ++i) x[i] = (a[i] + m[i]) + x[i];
}

}  // namespace gptj::kernels::avx2
