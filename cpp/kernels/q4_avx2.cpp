// q4 linear layer, AVX2 (maddubs + madd) on the 16-row panels of q4.h: q4_panels_avx2.inl.
#if defined(GPTJ_HAVE_AVX2)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"

namespace gptj::kernels::avx2 {

namespace {

#include "kernels/q4_panels_avx2.inl"

}  // namespace

void q4_linear(float* y, const LinearInputs& x, const WeightData& panels, const float* b, int64_t N) {
    q4_panels_linear(y, x, panels, b, N);
}

}  // namespace gptj::kernels::avx2

#endif  // GPTJ_HAVE_AVX2
