// Weight formats x CPU levels: the one table a linear layer's kernel comes from.
//
// Each weight format describes itself once, in formats.cpp: its name and version (as a native file's
// metadata names them), its block size along K, the bits of one stored value, how its activations are
// prepared, and its linear kernel for each CPU level it has one for. resolve() picks, for the level in
// use (kernels.h: isa()), the kernel of that level or of the best level below it that has one and
// accepts M tokens; the scalar column is always filled, so every format runs everywhere.
//
// Adding a format: one kernel file per level it gets (plus the scalar one), one row in formats.cpp, one
// registry entry in gptj_ref/formats.py. Adding a CPU level: an Isa value and its detection
// (kernels.h, dispatch.cpp), its kernel files, one column entry in the rows that get one.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace gptj::kernels {

// How a format's kernels want the input x of a linear layer.
enum class Activations {
    F32,       // x itself
    Q8Blocks,  // int8 blocks of 32 per token, as quantize_activations makes them (see q8.h)
};

// x (M, K): the float32 rows and, for Q8Blocks formats, qx (M, K) int8 and dx (M, K/32) float32.
struct LinearInputs {
    const float* x = nullptr;
    const int8_t* qx = nullptr;
    const float* dx = nullptr;
    int64_t M = 0, K = 0;
};

// A weight W (N, K) as stored: `values` in the format's layout, `scales` one float16 per block (nullptr for
// formats without scales).
struct WeightData {
    const void* values = nullptr;
    const uint16_t* scales = nullptr;
};

// y (M, N) = x W^T + b (b (N) or nullptr).
using LinearKernel = void (*)(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N);

// A weight in the layout a level's kernel reads instead of the stored one (made once, when a model is
// built): `data` views `storage`, which it owns.
struct PackedWeight {
    WeightData data;
    std::shared_ptr<void> storage;
};

// Makes a level's layout of the stored weight W (N, K).
using PackFn = PackedWeight (*)(const WeightData& stored, int64_t N, int64_t K);

// One table cell: the kernel of a level, used for M >= min_tokens (fewer tokens go to the level below).
// With `pack`, the kernel reads the weight as pack lays it out (for every M it runs), not as stored.
struct LevelKernel {
    LinearKernel fn = nullptr;
    int64_t min_tokens = 1;
    PackFn pack = nullptr;
};

// `bytes` of 64-byte aligned memory, owned by the returned pointer (on Linux, backed by huge pages where
// the kernel gives them: fewer page faults and TLB misses while a packed weight streams).
std::shared_ptr<void> aligned_bytes(int64_t bytes);

constexpr int kIsaCount = int(Isa::Amx) + 1;

struct WeightFormat {
    const char* name;               // as in a native file's metadata: "f32", "q8", "q4"
    int version;                    // of the stored layout; files name it, readers check it
    int64_t block;                  // elements of K per scale (1: no blocks)
    int bits;                       // bits of one stored value
    Activations activations;        // what its kernels read
    LevelKernel linear[kIsaCount];  // by Isa; {} where the level has no kernel of its own

    // Bytes of one row of stored values for K inputs, and float16 scales per row.
    int64_t row_bytes(int64_t K) const { return K * bits / 8; }
    int64_t scales_per_row(int64_t K) const { return block > 1 ? K / block : 0; }
};

// Every format, in table order; one by name (throws std::invalid_argument naming the known ones).
const std::vector<const WeightFormat*>& weight_formats();
const WeightFormat& weight_format(const std::string& name);

// The level whose kernel runs M tokens of `format` when `level` is in use: `level` itself or the best
// level below it with a kernel that accepts M tokens.
Isa resolve_level(const WeightFormat& format, Isa level, int64_t M);
inline LinearKernel resolve(const WeightFormat& format, Isa level, int64_t M) {
    return format.linear[int(resolve_level(format, level, M))].fn;
}

// y = x W^T + b with the kernel resolve(format, isa(), x.M) picks, W as stored. A cell that packs its
// weights packs W for this one call (a built model packs once: runtime/linear_weight.h).
void format_linear(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N,
                   const WeightFormat& format);

}  // namespace gptj::kernels
