// rotary, scalar reference: GPT-J's interleaved rotary embedding ("rotate_every_two").
//
// Contract: x (T, n_head * d_head) with row stride ld, rotated in place on dims [0, n_rot) of each head;
// sin, cos (n_ctx, n_rot / 2); pos (T). Pair (2i, 2i+1) at position p turns by angle p * inv_freq[i]:
//     x'[2i]   = x[2i] cos - x[2i+1] sin
//     x'[2i+1] = x[2i+1] cos + x[2i] sin
// Rounding: two products then one add/sub per output, as transformers computes it.
#include "kernels/impl.h"

namespace gptj::kernels::scalar {

void rotary(float* x, const float* sin, const float* cos, const int64_t* pos, int64_t T, int64_t ld, int64_t n_head,
            int64_t d_head, int64_t n_rot) {
    const int64_t half = n_rot / 2;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        const float* s = sin + pos[t] * half;
        const float* c = cos + pos[t] * half;
        for (int64_t h = 0; h < n_head; ++h) {
            float* xh = x + t * ld + h * d_head;
            for (int64_t i = 0; i < half; ++i) {
                const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
                xh[2 * i] = x0 * c[i] - x1 * s[i];
                xh[2 * i + 1] = x1 * c[i] + x0 * s[i];
            }
        }
    }
}

}  // namespace gptj::kernels::scalar
