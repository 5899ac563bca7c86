#include "runtime/linear_weight.h"

#include <stdexcept>

#include "kernels/q8.h"

namespace gptj::runtime {

kernels::LinearInputs LinearInput::prepared(kernels::Activations activations) {
    kernels::LinearInputs in;
    in.x = x_;
    in.M = M_;
    in.K = K_;
    if (activations == kernels::Activations::Q8Blocks) {
        if (!quantized_) {
            if (K_ % kernels::kQ8Block != 0) throw std::invalid_argument("int8 activation blocks need K % 32 == 0");
            q_.resize(size_t(M_ * K_));
            d_.resize(size_t(M_ * K_ / kernels::kQ8Block));
            kernels::quantize_activations(q_.data(), d_.data(), x_, M_, K_);
            quantized_ = true;
        }
        in.qx = q_.data();
        in.dx = d_.data();
    }
    return in;
}

void apply_linear(float* y, LinearInput& x, const LinearWeight& w) {
    kernels::format_linear(y, x.prepared(w.format->activations), w.data, w.bias, w.out, *w.format);
}

}  // namespace gptj::runtime
