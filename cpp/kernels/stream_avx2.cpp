// stream_read, AVX2: the sum of x (n), read once. Threads take 4 MiB chunks dynamically (as the linear
// kernel takes W rows) and read each as 4 parallel sequential streams (the chunk cut in quarters), the
// access pattern of the linear kernel's decode path, which reads several W rows at a time.
// Measures memory read bandwidth; the value only defeats dead-code elimination (its rounding depends
// on the thread count).
#include "kernels/impl.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

double stream_read(const float* x, int64_t n) {
    constexpr int64_t kChunk = int64_t(1) << 20;  // floats
    double total = 0.0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : total)
    for (int64_t begin = 0; begin < n; begin += kChunk) {
        const int64_t end = begin + kChunk < n ? begin + kChunk : n;
        const int64_t quarter = (end - begin) / 32 * 8;  // floats per stream, a multiple of 8
        const float *s0 = x + begin, *s1 = s0 + quarter, *s2 = s1 + quarter, *s3 = s2 + quarter;
        f32x8 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < quarter; i += 8) {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(s0 + i));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(s1 + i));
            a2 = _mm256_add_ps(a2, _mm256_loadu_ps(s2 + i));
            a3 = _mm256_add_ps(a3, _mm256_loadu_ps(s3 + i));
        }
        double s = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (int64_t i = begin + 4 * quarter; i < end; ++i) s += x[i];
        total += s;
    }
    return total;
}

}  // namespace gptj::kernels::avx2
