// Run-time choice between the scalar and AVX2 kernels, and the thread-count knob.
#include <atomic>
#include <stdexcept>

#include "kernels/impl.h"
#include "kernels/kernels.h"
#include "kernels/parallel.h"

namespace gptj::kernels {

bool avx2_supported() {
#if defined(GPTJ_HAVE_AVX2) && defined(__x86_64__)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

bool avxvnni_supported() {
#if defined(GPTJ_HAVE_AVXVNNI) && defined(__x86_64__)
    return avx2_supported() && __builtin_cpu_supports("avxvnni");
#else
    return false;
#endif
}

static std::atomic<Isa>& current_isa() {
    static std::atomic<Isa> isa{avxvnni_supported() ? Isa::AvxVnni : avx2_supported() ? Isa::Avx2 : Isa::Scalar};
    return isa;
}

void set_isa(Isa isa) {
    if (isa == Isa::Avx2 && !avx2_supported())
        throw std::runtime_error("the AVX2+FMA kernels are not available on this CPU or were not compiled in");
    if (isa == Isa::AvxVnni && !avxvnni_supported())
        throw std::runtime_error("the AVX-VNNI kernels are not available on this CPU or were not compiled in");
    current_isa().store(isa);
}

Isa isa() { return current_isa().load(); }

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::AvxVnni: return "avxvnni";
        case Isa::Avx2: return "avx2";
        default: return "scalar";
    }
}

void set_num_threads(int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads < 1 ? 1 : threads);
#else
    (void)threads;
#endif
}

int max_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#if defined(GPTJ_HAVE_AVX2)
#define GPTJ_DISPATCH(call) (isa() != Isa::Scalar ? avx2::call : scalar::call)  // AvxVnni uses them too
#else
#define GPTJ_DISPATCH(call) (scalar::call)
#endif

void linear(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K) {
    GPTJ_DISPATCH(linear(y, x, w, b, M, N, K));
}

void layer_norm(float* y, const float* x, const float* g, const float* b, int64_t M, int64_t N, float eps) {
    GPTJ_DISPATCH(layer_norm(y, x, g, b, M, N, eps));
}

void gelu_new(float* x, int64_t n) { GPTJ_DISPATCH(gelu_new(x, n)); }

void softmax(float* y, const float* x, int64_t M, int64_t N) { GPTJ_DISPATCH(softmax(y, x, M, N)); }

void residual_add(float* x, const float* a, const float* m, int64_t n) { GPTJ_DISPATCH(residual_add(x, a, m, n)); }

void rotary(float* x, const float* sin, const float* cos, const int64_t* pos, int64_t T, int64_t ld,
            int64_t n_head, int64_t d_head, int64_t n_rot) {
    GPTJ_DISPATCH(rotary(x, sin, cos, pos, T, ld, n_head, d_head, n_rot));
}

void attention(float* out, const float* q, const float* k, const float* v, float* scratch, int64_t T,
               int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens) {
    GPTJ_DISPATCH(attention(out, q, k, v, scratch, T, start, n_head, d_head, max_tokens));
}

double stream_read(const float* x, int64_t n) { return GPTJ_DISPATCH(stream_read(x, n)); }

}  // namespace gptj::kernels
