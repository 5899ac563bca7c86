// attention, AVX2: causal softmax attention of T new queries over one sequence's KV cache.
//
// Contract: as attention_scalar.cpp. q, out (T, n_head * d_head); k, v (n_head, max_tokens, d_head),
// slots [0, start + T) filled; scratch (attention_scratch_floats(start + T) floats). Query t (slot start + t) sees
// slots [0, start + t]:  s_j = (q . k_j) / sqrt(d_head),  p = softmax(s),  out = sum_j p_j v_j.
// Rounding: dot products in 8 lanes reduced by hsum_f32x8 (d_head % 8 tail by scalar FMA); softmax as in
// activation_avx2.cpp; the value sum by FMA in slot order, per element. Threads split the (head, query) pairs, so
// each output row is computed by one thread in a fixed order.
// attention_f16kv: the same with float16 keys and values, widened by F16C (exactly) where they are read.
#include <algorithm>
#include <cmath>

#include "kernels/half.h"
#include "kernels/impl.h"
#include "kernels/parallel.h"
#include "kernels/simd_avx2.h"

namespace gptj::kernels::avx2 {

// 8 (or 1) cache values as float32: loads, or F16C widening of float16 bits (exact).
static inline f32x8 load8(const float* p) { return _mm256_loadu_ps(p); }
static inline f32x8 load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
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

// dot_f32 for four vectors a[0..3] against the same b: each result is computed exactly as dot_f32 computes
// it (its own two accumulators, the same reduction and tail); b is loaded once for all four.
template <typename KV>
static inline void dot_f32_x4(float* out, const float* const* a, const KV* b, int64_t n) {
    f32x8 acc0[4], acc1[4];
    for (int r = 0; r < 4; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const f32x8 b0 = load8(b + i), b1 = load8(b + i + 8);
        for (int r = 0; r < 4; ++r) {
            acc0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + i), b0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + i + 8), b1, acc1[r]);
        }
    }
    const bool eight = i + 8 <= n;
    if (eight) {
        const f32x8 b0 = load8(b + i);
        for (int r = 0; r < 4; ++r) acc0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(a[r] + i), b0, acc0[r]);
        i += 8;
    }
    for (int r = 0; r < 4; ++r) {
        float s = hsum_f32x8(_mm256_add_ps(acc0[r], acc1[r]));
        for (int64_t k = i; k < n; ++k) s = std::fma(a[r][k], load1(b + k), s);
        out[r] = s;
    }
}

// out = sum_j p_j v_j over n rows of v (stride d): every element is the chain
// out = fma(p_j, v_j, out), j = 0, 1, ..., from 0, exactly as repeated axpy_f32 would compute it, but
// with 64 columns at a time held in registers instead of loaded and stored once per row.
template <typename KV>
static void weighted_sum(float* out, const float* p, const KV* v, int64_t n, int64_t d) {
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) {
        f32x8 acc[8];
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
        for (int64_t j = 0; j < n; ++j) {
            const f32x8 pj = _mm256_set1_ps(p[j]);
            const KV* vj = v + j * d + c;
            for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pj, load8(vj + 8 * i), acc[i]);
        }
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + c + 8 * i, acc[i]);
    }
    for (; c + 8 <= d; c += 8) {
        f32x8 acc = _mm256_setzero_ps();
        for (int64_t j = 0; j < n; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load8(v + j * d + c), acc);
        _mm256_storeu_ps(out + c, acc);
    }
    for (; c < d; ++c) {
        float acc = 0.0f;
        for (int64_t j = 0; j < n; ++j) acc = std::fma(p[j], load1(v + j * d + c), acc);
        out[c] = acc;
    }
}

// KV: float (an fp32 cache) or uint16_t (float16 bits). Queries go in groups of kQueryGroup of one head:
// the keys all of them see are read once for the group (dot_f32_x4); each query's scores, softmax and
// weighted sum are still its own, computed as for a query alone, so a token's output does not depend on
// the group it lands in (decode and prompt agree bitwise).
constexpr int64_t kQueryGroup = 4;

template <typename KV>
static void attention_over(float* out, const float* q, const KV* k, const KV* v, float* scratch, int64_t T,
                           int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens) {
    const int64_t width = n_head * d_head;
    const float scale = std::sqrt(float(d_head));
    const int64_t groups = (T + kQueryGroup - 1) / kQueryGroup;
#pragma omp parallel
    {
        float* scores = scratch + int64_t(thread_index()) * kQueryGroup * (start + T);  // kQueryGroup rows
#pragma omp for schedule(static)
        for (int64_t hg = 0; hg < n_head * groups; ++hg) {
            const int64_t h = hg / groups, t0 = hg % groups * kQueryGroup, tn = std::min(kQueryGroup, T - t0);
            const KV* kh = k + h * max_tokens * d_head;
            const KV* vh = v + h * max_tokens * d_head;
            const float* qt[kQueryGroup];
            for (int64_t r = 0; r < kQueryGroup; ++r) qt[r] = q + (t0 + std::min(r, tn - 1)) * width + h * d_head;
            // Keys every query of the group sees: [0, start + t0 + 1); query t0 + r sees r more.
            const int64_t shared = tn == kQueryGroup ? start + t0 + 1 : 0;
            for (int64_t j = 0; j < shared; ++j) {
                float s[kQueryGroup];
                dot_f32_x4(s, qt, kh + j * d_head, d_head);
                for (int64_t r = 0; r < kQueryGroup; ++r) scores[r * (start + T) + j] = s[r] / scale;
            }
            for (int64_t r = 0; r < tn; ++r) {
                const int64_t n_keys = start + t0 + r + 1;
                float* sr = scores + r * (start + T);
                for (int64_t j = shared; j < n_keys; ++j) sr[j] = dot_f32(qt[r], kh + j * d_head, d_head) / scale;
                softmax_row(sr, sr, n_keys);
                weighted_sum(out + (t0 + r) * width + h * d_head, sr, vh, n_keys, d_head);
            }
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

}  // namespace gptj::kernels::avx2
