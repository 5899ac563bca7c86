// rotary, AVX2: GPT-J's interleaved rotary embedding, 4 pairs per vector.
//
// Contract: as rotary_scalar.cpp. x (T, n_head * d_head) with row stride ld, rotated in place on dims
// [0, n_rot) of each head; sin, cos (n_ctx, n_rot / 2); pos (T).
//     x'[2i] = x[2i] cos_i - x[2i+1] sin_i,   x'[2i+1] = x[2i+1] cos_i + x[2i] sin_i
// Rounding: two products then one add/sub per output (addsub), identical to the scalar version.
#include "kernels/impl.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

// (c0, c1, c2, c3) -> (c0, c0, c1, c1, c2, c2, c3, c3): one angle per pair of lanes.
static inline f32x8 pairs_f32x8(const float* c) {
    const f32x8 v = _mm256_castps128_ps256(_mm_loadu_ps(c));
    return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
}

// (x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...): each pair swapped.
static inline f32x8 swap_pairs_f32x8(f32x8 x) { return _mm256_permute_ps(x, 0xB1); }

void rotary(float* x, const float* sin, const float* cos, const int64_t* pos, int64_t T, int64_t ld, int64_t n_head,
            int64_t d_head, int64_t n_rot) {
    const int64_t half = n_rot / 2, half4 = half / 4 * 4;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        const float* s = sin + pos[t] * half;
        const float* c = cos + pos[t] * half;
        for (int64_t h = 0; h < n_head; ++h) {
            float* xh = x + t * ld + h * d_head;
            for (int64_t i = 0; i < half4; i += 4) {
                const f32x8 v = _mm256_loadu_ps(xh + 2 * i);
                const f32x8 vc = _mm256_mul_ps(v, pairs_f32x8(c + i));
                const f32x8 vs = _mm256_mul_ps(swap_pairs_f32x8(v), pairs_f32x8(s + i));
                _mm256_storeu_ps(xh + 2 * i, _mm256_addsub_ps(vc, vs));  // even lanes vc - vs, odd vc + vs
            }
            for (int64_t i = half4; i < half; ++i) {
                const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
                const float a = x0 * c[i], b = x1 * s[i], d = x1 * c[i], e = x0 * s[i];
                xh[2 * i] = a - b;
                xh[2 * i + 1] = d + e;
            }
        }
    }
}

}  // namespace gptj::kernels::avx2
