// q4 linear layer, AVX-VNNI (vpdpbusd on 256-bit vectors) on the 16-row panels of q4.h:
// q4_panels_avx2.inl.
#if defined(GPTJ_HAVE_AVXVNNI)

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"

namespace gptj::kernels::avxvnni {

namespace {

#define GPTJ_Q4_PANELS_VNNI 1
#include "kernels/q4_panels_avx2.inl"

}  // namespace

void q4_linear(float* y, const LinearInputs& x, const WeightData& panels, const float* b, int64_t N) {
    q4_panels_linear(y, x, panels, b, N);
}

}  // namespace gptj::kernels::avxvnni

#endif  // GPTJ_HAVE_AVXVNNI
