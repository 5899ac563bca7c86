// attention, AVX2: causal softmax attention of T new queries over one sequence's KV cache.
//
// Contract: as attention_scalar.cpp. q, out (T, n_head * d_head); k, v (n_head, max_tokens, d_head),
// slots [0, start + T) filled; scratch (max_threads() * (start + T)). Query t (slot start + t) sees
// slots [0, start + t]:  s_j = (q . k_j) / sqrt(d_head),  p = softmax(s),  out = sum_j p_j v_j.
// Rounding: dot products in 8 lanes reduced by hsum_f32x8 (d_head % 8 tail by scalar FMA); softmax as in
// activation_avx2.cpp; the value sum by FMA in slot order. Threads split the (head, query) pairs, so
// each output row is computed by one thread in a fixed order.
// attention_f16kv: the same with float16 keys and values, widened by F16C (exactly) where they are read.
#include <cmath>

#include "kernels/half.h"
#include "kernels/impl.h"
#include "kernels/parallel.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

// 8 (or 1) cache values as float32: loads, or F16C widening of float16 bits (exact).
static inline f32x8 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline f32x8 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
static inline float load1(const float* p) { return *p; }
static inline float load1(const uint16_t* p) { return f16_to_f32(*p); }

// a . b over n floats.
template <typename KV>
static inline float dot_f32(const float* a, const KV* b, int64_t n) {
    f32x8 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8(b + i + 8), acc1);
    }
    if (i + 8 <= n) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc0);
        i += 8;
    }
    float s = hsum_f32x8(_mm256_add_ps(acc0, acc1));
    for (; i < n; ++i) s = std::fma(a[i], load1(b + i), s);
    return s;
}

// y += p * v over n floats.
template <typename KV>
static inline void axpy_f32(float* y, float p, const KV* v, int64_t n) {
    const f32x8 p8 = _mm256_set1_ps(p);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(p8, load8(v + i), _mm256_loadu_ps(y + i)));
    for (; i < n; ++i) y[i] = std::fma(p, load1(v + i), y[i]);
}

// KV: float (an fp32 cache) or uint16_t (float16 bits).
template <typename KV>
static void attention_over(float* out, const float* q, const KV* k, const KV* v, float* scratch, int64_t T,
                           int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens) {
    const int64_t width = n_head * d_head;
    const float scale = std::sqrt(float(d_head));
#pragma omp parallel
    {
        float* scores = scratch + int64_t(thread_index()) * (start + T);
#pragma omp for schedule(static)
        for (int64_t ht = 0; ht < n_head * T; ++ht) {
            const int64_t h = ht / T, t = ht % T, n_keys = start + t + 1;
            const float* qt = q + t * width + h * d_head;
            const KV* kh = k + h * max_tokens * d_head;
            const KV* vh = v + h * max_tokens * d_head;
            float* ot = out + t * width + h * d_head;
            for (int64_t j = 0; j < n_keys; ++j) scores[j] = dot_f32(qt, kh + j * d_head, d_head) / scale;
            softmax_row(scores, scores, n_keys);
            for (int64_t d = 0; d < d_head; ++d) ot[d] = 0.0f;
            for (int64_t j = 0; j < n_keys; ++j) axpy_f32(ot, scores[j], vh + j * d_head, d_head);
        }
    }
}

void attention(float* out, const float* q, const float* k, const float* v, float* scratch, int64_t T,
               int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens) {
    attention_over(out, q, k, v, scratch, T, start, n_head, d_head, max_tokens);
}

void attention_f16kv(float* out, const float* q, const uint16_t* k, const uint16_t* v, float* scratch, int64_t T,
                     int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens) {
    attention_over(out, q, k, v, scratch, T, start, n_head, d_head, max_tokens);
}

}  // namespace gptj::kernels::avx2
