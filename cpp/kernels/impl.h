// The two implementations of the fp32 kernels behind kernels.h, with identical signatures. Only
// dispatch.cpp and formats.cpp call these directly; avx2:: exists only when GPTJ_HAVE_AVX2 is defined.
#pragma once

#include <cstdint>

#define GPTJ_KERNEL_DECLS                                                                                             \
    void linear(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K);           \
    void layer_norm(float* y, const float* x, const float* g, const float* b, int64_t M, int64_t N, float eps);       \
    void gelu_new(float* x, int64_t n);                                                                               \
    void softmax(float* y, const float* x, int64_t M, int64_t N);                                                     \
    void residual_add(float* x, const float* a, const float* m, int64_t n);                                           \
    void rotary(float* x, const float* sin, const float* cos, const int64_t* pos, int64_t T, int64_t ld,              \
                int64_t n_head, int64_t d_head, int64_t n_rot);                                                       \
    void f32_to_f16(uint16_t* y, const float* x, int64_t n);                                                          \
    void attention_f16kv(float* out, const float* q, const uint16_t* k, const uint16_t* v, float* scratch, int64_t T, \
                         int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens);                          \
    void attention(float* out, const float* q, const float* k, const float* v, float* scratch, int64_t T,             \
                   int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens);                                \
    double stream_read(const float* x, int64_t n);

namespace gptj::kernels::scalar {
GPTJ_KERNEL_DECLS
// One row of softmax (the scalar attention's too).  x, y (n), n >= 1; y may alias x.
void softmax_row(float* y, const float* x, int64_t n);
}  // namespace gptj::kernels::scalar

#if defined(GPTJ_HAVE_AVX2)
namespace gptj::kernels::avx2 {
GPTJ_KERNEL_DECLS
}
#endif

#undef GPTJ_KERNEL_DECLS
