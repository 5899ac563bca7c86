// A linear layer's weight as the runtime sees it: y = x W^T + b, W (out, in) as nn.Linear.
//
// The runtime never touches W's bytes itself; it calls apply_linear, which picks the kernel for the
// weight's storage: fp32, or int8 blocks (I8 (out, in) plus one F16 scale per block of 32 along `in`,
// see kernels/q8.h), both views into memory the model does not own (NumPy arrays or the memory-mapped
// model file: nothing is copied at load).
//
// A linear's input is a LinearInput: the fp32 rows plus, made on first demand by an int8 weight, their
// int8 blocks. An input read by several linears (ln_1's output feeds q, k, v and fc_in) is quantized
// once.
#pragma once

#include <cstdint>
#include <vector>

namespace gptj::runtime {

struct LinearWeight {
    enum class Kind { F32, Q8 };

    Kind kind = Kind::F32;
    int64_t out = 0;              // N: rows of W, columns of y
    int64_t in = 0;               // K: columns of W, columns of x
    const float* f32 = nullptr;   // W (out, in) when kind == F32; a view, never owned
    const int8_t* q8 = nullptr;         // W's int8 values (out, in) when kind == Q8; a view
    const uint16_t* q8_scale = nullptr; // W's float16 block scales (out, in / 32) when kind == Q8; a view
    const float* bias = nullptr;  // b (out) or nullptr
};

// The input x (M, K) of one or more linears. set() points it at new rows (and forgets old blocks);
// the int8 blocks qx (M, K), dx (M, K/32) are made once, by the first int8 linear that reads them.
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
    // Quantize (once per set) and return the int8 blocks.
    const int8_t* q8();
    const float* q8_scale();

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
