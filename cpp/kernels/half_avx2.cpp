// float32 -> float16 arrays with F16C (vcvtps2ph, round to nearest-even: the scalar f32_to_f16's result).
#include <immintrin.h>

#include "kernels/half.h"
#include "kernels/impl.h"

namespace gptj::kernels::avx2 {

void f32_to_f16(uint16_t* y, const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; ++i) y[i] = kernels::f32_to_f16(x[i]);
}

}  // namespace gptj::kernels::avx2
