// The table of weight formats x CPU levels (see formats.h): one row per format, one cell per level that
// has a kernel of its own. A cell adapts the format's kernel to the common LinearKernel signature.
#include "kernels/formats.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <stdexcept>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels/impl.h"
#include "kernels/q4.h"
#include "kernels/q8.h"

namespace gptj::kernels {

namespace {

using Q8Fn = void (*)(float*, const int8_t*, const float*, const int8_t*, const uint16_t*, const float*, int64_t,
                      int64_t, int64_t);
using Q4Fn = void (*)(float*, const int8_t*, const float*, const uint8_t*, const uint16_t*, const float*, int64_t,
                      int64_t, int64_t);
using F32Fn = void (*)(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t);

template <F32Fn F>
void f32_cell(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N) {
    F(y, x.x, static_cast<const float*>(w.values), b, x.M, N, x.K);
}
template <Q8Fn F>
void q8_cell(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N) {
    F(y, x.qx, x.dx, static_cast<const int8_t*>(w.values), w.scales, b, x.M, N, x.K);
}
template <Q4Fn F>
void q4_cell(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N) {
    F(y, x.qx, x.dx, static_cast<const uint8_t*>(w.values), w.scales, b, x.M, N, x.K);
}

constexpr int at(Isa isa) { return int(isa); }

// f32: W (N, K) float32 as nn.Linear; the AVX2 kernel serves every level above it.
WeightFormat f32_format() {
    WeightFormat f{"f32", 1, 1, 32, Activations::F32, {}};
    f.linear[at(Isa::Scalar)] = {f32_cell<scalar::linear>};
#if defined(GPTJ_HAVE_AVX2)
    f.linear[at(Isa::Avx2)] = {f32_cell<avx2::linear>};
#endif
    return f;
}

// q8: int8 blocks of 32 with a float16 scale (q8.h).
WeightFormat q8_format() {
    WeightFormat f{"q8", 1, kQ8Block, 8, Activations::Q8Blocks, {}};
    f.linear[at(Isa::Scalar)] = {q8_cell<scalar::q8_linear>};
#if defined(GPTJ_HAVE_AVX2)
    f.linear[at(Isa::Avx2)] = {q8_cell<avx2::q8_linear>};
#endif
#if defined(GPTJ_HAVE_AVXVNNI)
    f.linear[at(Isa::AvxVnni)] = {q8_cell<avxvnni::q8_linear>};
#endif
#if defined(GPTJ_HAVE_AVX512)
    f.linear[at(Isa::Avx512)] = {q8_cell<avx512::q8_linear>};
#endif
#if defined(GPTJ_HAVE_AMX)
    f.linear[at(Isa::Amx)] = {q8_cell<amx::q8_linear>, amx::kMinTokens};
#endif
    return f;
}

// q4: 4-bit blocks of 32 with a float16 scale (q4.h). The SIMD kernels read the weights as 16-row panels
// (q4_pack_panels). Prompts reuse q8's kernels (q4_via_q8), so the AMX level needs no q4 cell of its own.
WeightFormat q4_format() {
    WeightFormat f{"q4", 1, kQ8Block, 4, Activations::Q8Blocks, {}};
    f.linear[at(Isa::Scalar)] = {q4_cell<scalar::q4_linear>};
#if defined(GPTJ_HAVE_AVX2)
    f.linear[at(Isa::Avx2)] = {avx2::q4_linear, 1, q4_pack_panels};
#endif
#if defined(GPTJ_HAVE_AVXVNNI)
    f.linear[at(Isa::AvxVnni)] = {avxvnni::q4_linear, 1, q4_pack_panels};
#endif
#if defined(GPTJ_HAVE_AVX512)
    f.linear[at(Isa::Avx512)] = {avx512::q4_linear, 1, q4_pack_panels};
#endif
    return f;
}

}  // namespace

const std::vector<const WeightFormat*>& weight_formats() {
    static const WeightFormat f32 = f32_format(), q8 = q8_format(), q4 = q4_format();
    static const std::vector<const WeightFormat*> all{&f32, &q8, &q4};
    return all;
}

const WeightFormat& weight_format(const std::string& name) {
    std::string known;
    for (const WeightFormat* f : weight_formats()) {
        if (name == f->name) return *f;
        known += (known.empty() ? "" : ", ") + std::string(f->name);
    }
    throw std::invalid_argument("unknown weight format '" + name + "'; this build knows " + known);
}

Isa resolve_level(const WeightFormat& format, Isa level, int64_t M) {
    for (int l = int(level); l > 0; --l) {
        const LevelKernel& cell = format.linear[l];
        if (cell.fn && M >= cell.min_tokens && isa_supported(Isa(l))) return Isa(l);
    }
    return Isa::Scalar;
}

std::shared_ptr<void> aligned_bytes(int64_t bytes) {
    constexpr size_t huge = size_t(2) << 20;
    const size_t size = std::max<size_t>(64, (size_t(bytes) + 63) / 64 * 64);
    void* p = nullptr;
    // Huge-page aligned when large; the tail past the last whole huge page stays in small pages, so no
    // memory beyond `bytes` is touched.
    if (posix_memalign(&p, size >= huge ? huge : 64, size) != 0) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (size >= huge) madvise(p, size / huge * huge, MADV_HUGEPAGE);  // a hint: ignored where they are off
#endif
    return std::shared_ptr<void>(p, std::free);
}

void format_linear(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N,
                   const WeightFormat& format) {
    const LevelKernel& cell = format.linear[int(resolve_level(format, isa(), x.M))];
    if (!cell.pack) return cell.fn(y, x, w, b, N);
    const PackedWeight packed = cell.pack(w, N, x.K);
    cell.fn(y, x, packed.data, b, N);
}

}  // namespace gptj::kernels
