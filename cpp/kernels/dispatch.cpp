// The CPU level in use (detection and choice), the fp32 kernels' dispatch between the scalar and AVX2
// versions (every level above AVX2 uses the AVX2 fp32 kernels), and the thread-count knob. The linear
// layers of quantized formats are dispatched by formats.cpp's table.
#include <atomic>
#include <stdexcept>
#include <string>

#if defined(GPTJ_HAVE_AMX) && defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(GPTJ_HAVE_AVX2) && defined(_MSC_VER) && defined(_M_X64) && !defined(__x86_64__)
#include <intrin.h>
#endif

#include "kernels/impl.h"
#include "kernels/kernels.h"
#include "kernels/parallel.h"

namespace gptj::kernels {

namespace {

bool avx2_cpu() {
#if defined(GPTJ_HAVE_AVX2) && defined(__x86_64__)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#elif defined(GPTJ_HAVE_AVX2) && defined(_MSC_VER) && defined(_M_X64)
    // MSVC has no __builtin_cpu_supports. CPUID leaf 1 ECX: FMA (bit 12), OSXSAVE (27), F16C (29); the OS
    // must save the YMM registers (XCR0 bits 1 and 2); leaf 7 EBX bit 5: AVX2.
    int r[4];
    __cpuid(r, 1);
    const unsigned ecx = unsigned(r[2]);
    if (!(ecx & (1u << 12)) || !(ecx & (1u << 27)) || !(ecx & (1u << 29)) || (_xgetbv(0) & 6) != 6) return false;
    __cpuidex(r, 7, 0);
    return (unsigned(r[1]) & (1u << 5)) != 0;
#else
    return false;
#endif
}

bool avxvnni_cpu() {
#if defined(GPTJ_HAVE_AVXVNNI) && defined(__x86_64__)
    return avx2_cpu() && __builtin_cpu_supports("avxvnni");
#else
    return false;
#endif
}

bool avx512_cpu() {
#if defined(GPTJ_HAVE_AVX512) && defined(__x86_64__)
    return avx2_cpu() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

bool amx_cpu() {
#if defined(GPTJ_HAVE_AMX) && defined(__x86_64__) && defined(__linux__)
    static const bool supported = [] {
        if (!avxvnni_cpu() || !__builtin_cpu_supports("avx512f")) return false;
        unsigned a, b, c, d;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25)))
            return false;  // AMX-TILE, AMX-INT8
        // Linux hands out the 8 KB tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
        // the grant is for the whole process, so every OpenMP thread may then use the tiles.
        constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
        return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    }();
    return supported;
#else
    return false;
#endif
}

}  // namespace

bool isa_supported(Isa isa) {
    switch (isa) {
        case Isa::Scalar:
            return true;
        case Isa::Avx2:
            return avx2_cpu();
        case Isa::AvxVnni:
            return avxvnni_cpu();
        case Isa::Avx512:
            return avx512_cpu();
        case Isa::Amx:
            return amx_cpu();
    }
    return false;
}

static std::atomic<Isa>& current_isa() {
    static std::atomic<Isa> isa{[] {
        Isa best = Isa::Scalar;
        for (Isa level : {Isa::Avx2, Isa::AvxVnni, Isa::Avx512, Isa::Amx})
            if (isa_supported(level)) best = level;
        return best;
    }()};
    return isa;
}

void set_isa(Isa isa) {
    if (!isa_supported(isa))
        throw std::runtime_error(std::string("the ") + isa_name(isa) +
                                 " kernels are not available: this CPU or OS lacks the instructions, or the build "
                                 "left them out");
    current_isa().store(isa);
}

Isa isa() { return current_isa().load(); }

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Amx:
            return "amx";
        case Isa::Avx512:
            return "avx512";
        case Isa::AvxVnni:
            return "avxvnni";
        case Isa::Avx2:
            return "avx2";
        default:
            return "scalar";
    }
}

void set_num_threads(int threads) {
#if defined(_OPENMP)
    omp_set_num_threads(threads < 1 ? 1 : threads);
#else
    (void)threads;
#endif
}

int num_threads() {
#if defined(_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#if defined(GPTJ_HAVE_AVX2)
#define GPTJ_DISPATCH(call) (isa() != Isa::Scalar ? avx2::call : scalar::call)
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

void rotary(float* x, const float* sin, const float* cos, const int64_t* pos, int64_t T, int64_t ld, int64_t n_head,
            int64_t d_head, int64_t n_rot) {
    GPTJ_DISPATCH(rotary(x, sin, cos, pos, T, ld, n_head, d_head, n_rot));
}

void attention(float* out, const float* q, const float* k, const float* v, float* scratch, int64_t T, int64_t start,
               int64_t n_head, int64_t d_head, int64_t max_tokens) {
    GPTJ_DISPATCH(attention(out, q, k, v, scratch, T, start, n_head, d_head, max_tokens));
}

void attention_f16kv(float* out, const float* q, const uint16_t* k, const uint16_t* v, float* scratch, int64_t T,
                     int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens) {
    GPTJ_DISPATCH(attention_f16kv(out, q, k, v, scratch, T, start, n_head, d_head, max_tokens));
}

void f32_to_f16(uint16_t* y, const float* x, int64_t n) { GPTJ_DISPATCH(f32_to_f16(y, x, n)); }

double stream_read(const float* x, int64_t n) { return GPTJ_DISPATCH(stream_read(x, n)); }

}  // namespace gptj::kernels
