// A linear layer's weight as the runtime sees it: y = x W^T + b, W (out, in) as nn.Linear.
//
// The runtime never touches W's bytes itself; it calls apply_linear, which runs the kernel the formats
// table (kernels/formats.h) resolves for the weight's format and the CPU level in use. The stored data
// are views into memory the model does not own (NumPy arrays or the memory-mapped model file). A level
// whose kernel reads a layout of its own (q4 on AVX-512) gets it made once, by pack_for_level when the
// model is built; the stored data then need not stay in memory (the bindings hand a mapped file's pages
// back), and a call at another level reads them again.
//
// A linear's input is a LinearInput: the fp32 rows plus, made on first demand by a weight whose format
// reads int8 blocks, those blocks. An input read by several linears (ln_1's output feeds q, k, v and
// fc_in) is quantized once.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/formats.h"

namespace gptj::runtime {

struct LinearWeight {
    const kernels::WeightFormat* format = nullptr;  // f32, q8, q4, ... (never null in a built model)
    kernels::WeightData data;      // W as stored: values (and block scales) in the format's layout; views
    int64_t out = 0;               // N: rows of W, columns of y
    int64_t in = 0;                // K: columns of W, columns of x
    const float* bias = nullptr;   // b (out) or nullptr
    kernels::PackedWeight packed;  // W in the layout of packed_level's kernel (empty when none)
    kernels::Isa packed_level = kernels::Isa::Scalar;
};

// Makes w.packed when the kernel `level` resolves to for w's format reads a layout of its own; returns
// whether it did.
bool pack_for_level(LinearWeight& w, kernels::Isa level);

// The input x (M, K) of one or more linears. set() points it at new rows (and forgets old blocks);
// the int8 blocks qx (M, K), dx (M, K/32) are made once, by the first linear whose format reads them.
// The buffers are kept between calls and grow on demand.
class LinearInput {
public:
    void set(const float* x, int64_t M, int64_t K) {
        x_ = x;
        M_ = M;
        K_ = K;
        quantized_ = false;
    }
    const float* x() const { return x_; }
    int64_t rows() const { return M_; }
    int64_t cols() const { return K_; }
    // The inputs as a format with these activations reads them (quantized once per set when needed).
    kernels::LinearInputs prepared(kernels::Activations activations);

private:
    const float* x_ = nullptr;
    int64_t M_ = 0, K_ = 0;
    bool quantized_ = false;
    std::vector<int8_t> q_;
    std::vector<float> d_;
};

// y = x W^T + b.  x (M, w.in) from x.x(), y (M, w.out)
void apply_linear(float* y, LinearInput& x, const LinearWeight& w);

}  // namespace gptj::runtime
