// attention, scalar reference: causal softmax attention of T new queries over one sequence's KV cache.
//
// Contract: q, out (T, n_head * d_head); k, v (n_head, max_tokens, d_head) with slots [0, start + T)
// filled (keys after rotary); scratch (attention_scratch_floats(start + T) floats). Query t is in slot start + t and
// sees slots [0, start + t]:
//     s_j = (q . k_j) / sqrt(d_head),  p = softmax(s),  out = sum_j p_j v_j
// Rounding: fp32 dot products in index order, softmax_row of activation_scalar.cpp, the value sum in
// slot order. Threads split the (head, query) pairs; each output row is computed by one thread.
// attention_f16kv: the same with float16 keys and values, each widened (exactly) where it is read.
#include <cmath>

#include "kernels/half.h"
#include "kernels/impl.h"
#include "kernels/parallel.h"

namespace gptj::kernels::scalar {

static inline float widen(float x) { return x; }
static inline float widen(uint16_t h) { return f16_to_f32(h); }

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
            for (int64_t j = 0; j < n_keys; ++j) {
                float dot = 0.0f;
                for (int64_t d = 0; d < d_head; ++d) dot += qt[d] * widen(kh[j * d_head + d]);
                scores[j] = dot / scale;
            }
            softmax_row(scores, scores, n_keys);  // the softmax kernel's row
            for (int64_t d = 0; d < d_head; ++d) ot[d] = 0.0f;
            for (int64_t j = 0; j < n_keys; ++j)
                for (int64_t d = 0; d < d_head; ++d) ot[d] += scores[j] * widen(vh[j * d_head + d]);
        }
    }
}

void attention(float* out, const float* q, const float* k, const float* v, float* scratch, int64_t T, int64_t start,
               int64_t n_head, int64_t d_head, int64_t max_tokens) {
    attention_over(out, q, k, v, scratch, T, start, n_head, d_head, max_tokens);
}

void attention_f16kv(float* out, const float* q, const uint16_t* k, const uint16_t* v, float* scratch, int64_t T,
                     int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens) {
    attention_over(out, q, k, v, scratch, T, start, n_head, d_head, max_tokens);
}

}  // namespace gptj::kernels::scalar
