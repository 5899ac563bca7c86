// A linear layer's weight as the runtime sees it: y = x W^T + b, W (out, in) as nn.Linear.
//
// The runtime never touches W's bytes itself; it calls apply_linear, which picks the kernel for the
// weight's storage. fp32 is the only kind today. An int8 block-quantized kind (I8 (out, in) plus one
// F16 scale per block of 32 along `in`) is meant to slot in as another Kind with its own pointers and
// one more case in apply_linear; Model::forward does not change.
#pragma once

#include <cstdint>

namespace gptj::runtime {

struct LinearWeight {
    enum class Kind { F32 };

    Kind kind = Kind::F32;
    int64_t out = 0;              // N: rows of W, columns of y
    int64_t in = 0;               // K: columns of W, columns of x
    const float* f32 = nullptr;   // W (out, in) when kind == F32; a view, never owned
    const float* bias = nullptr;  // b (out) or nullptr
};

// y = x W^T + b.  x (M, w.in), y (M, w.out)
void apply_linear(float* y, const float* x, const LinearWeight& w, int64_t M);

}  // namespace gptj::runtime
