// The kernel API: stateless functions on raw pointers, fp32 in and out.
//
// Conventions (every family): output first, then const inputs, then sizes; shapes are listed in the
// first comment lines; offsets into weights are 64-bit. Each function here forwards to a scalar
// reference (namespace scalar) or an AVX2+FMA version (namespace avx2) with the same signature,
// chosen at run time from the CPU's level (Isa below) or forced with set_isa(). The linear layers of
// the quantized formats are chosen through the table of formats.h.
//
// Threads: the kernels open OpenMP regions with the calling thread's default team size (see
// set_num_threads). Work is split over output rows, columns or heads, never over a reduction, so every
// output element is computed by the same sequence of operations whatever the thread count: results
// are bitwise identical for 1 and N threads.
#pragma once

#include <cstdint>

namespace gptj::kernels {

// CPU levels, from the portable to the fastest. Every level computes the same results as the AVX2 one,
// bitwise; they differ in the instructions of the weight formats' linear kernels (formats.h):
//   Scalar   portable C++, the oracle of the others
//   Avx2     AVX2 + FMA + F16C: every fp32 kernel and the int8 kernels with maddubs + madd
//   AvxVnni  the int8 kernels with AVX-VNNI's vpdpbusd (q8_avxvnni.cpp, q4_avxvnni.cpp)
//   Avx512   the int8 row (decode) kernels on 512-bit vectors with AVX512-VNNI (*_avx512.cpp)
//   Amx      int8 prompts of 32 tokens or more on the AMX tile unit (q8_amx.cpp)
// A level's kernels are used only where the CPU and the build have it; a format with no kernel of its
// own at a level uses the best level below that it has (formats.h: resolve).
enum class Isa { Scalar, Avx2, AvxVnni, Avx512, Amx };

// The CPU can run this level's kernels and they were compiled in. Amx also needs Linux's grant of the
// tile state, asked for on the first call.
bool isa_supported(Isa isa);
// Use this level from now on (process-wide); one the CPU or the build lacks throws std::runtime_error.
void set_isa(Isa isa);
Isa isa();
const char* isa_name(Isa isa);

// Team size for kernels called later from this thread (OpenMP's per-thread ICV); 1 without OpenMP.
void set_num_threads(int threads);
int num_threads();

// y = x W^T + b.  x (M, K), w (N, K) as nn.Linear, b (N) or nullptr, y (M, N).
// The K sum runs in blocks of kLinearBlockK; a row of y does not depend on M, so a token's output is
// the same whether it is decoded alone or inside a prompt (AVX2 path).
void linear(float* y, const float* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K);

// Row-wise LayerNorm: y = (x - mean) / sqrt(var + eps) * g + b, biased variance.
// x, y (M, N); g, b (N). y may alias x.
void layer_norm(float* y, const float* x, const float* g, const float* b, int64_t M, int64_t N, float eps);

// gelu_new (tanh approximation), in place: x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).  x (n)
void gelu_new(float* x, int64_t n);

// Row-wise softmax with the row maximum subtracted.  x, y (M, N); y may alias x.
void softmax(float* y, const float* x, int64_t M, int64_t N);

// GPT-J's parallel residual: x = (a + m) + x.  x, a, m (n)
void residual_add(float* x, const float* a, const float* m, int64_t n);

// Interleaved rotary ("rotate_every_two") on the first n_rot dims of every head, in place.
// x (T, n_head * d_head) with row stride ld; sin, cos (n_ctx, n_rot / 2); pos (T) positions of the rows.
// Pair i of a head at position p: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), angle p * inv_freq[i].
void rotary(float* x, const float* sin, const float* cos, const int64_t* pos, int64_t T, int64_t ld, int64_t n_head,
            int64_t d_head, int64_t n_rot);

// Causal attention of T new queries over one sequence's KV cache, scores and softmax in fp32.
// out, q (T, n_head * d_head); k, v (n_head, max_tokens, d_head), slots [0, start + T) filled;
// scratch (attention_scratch_floats(start + T) floats). Query t sits in slot start + t and sees slots [0, start + t].
// out = softmax(q k^T / sqrt(d_head)) v per head.
void attention(float* out, const float* q, const float* k, const float* v, float* scratch, int64_t T, int64_t start,
               int64_t n_head, int64_t d_head, int64_t max_tokens);
// The same with keys and values stored as float16 (the half-size KV cache): each is widened to
// float32 exactly where it is read, so the result is attention() on the widened cache, bitwise.
void attention_f16kv(float* out, const float* q, const uint16_t* k, const uint16_t* v, float* scratch, int64_t T,
                     int64_t start, int64_t n_head, int64_t d_head, int64_t max_tokens);
// Scratch for attention over n_keys keys: score rows for 4 queries per thread (the AVX2 kernel's group).
inline int64_t attention_scratch_floats(int64_t n_keys) { return int64_t(num_threads()) * 4 * n_keys; }

// y = float16(x), rounded to nearest-even (as NumPy's astype(np.float16)).  x, y (n)
void f32_to_f16(uint16_t* y, const float* x, int64_t n);

// Sum of n floats with parallel streaming loads: measures memory read bandwidth.  x (n)
double stream_read(const float* x, int64_t n);

// Block length of the K sum in linear (AVX2 path): the tile accumulators are reduced every
// kLinearBlockK elements so that the active slices of x and W stay in cache.
constexpr int64_t kLinearBlockK = 512;

}  // namespace gptj::kernels
