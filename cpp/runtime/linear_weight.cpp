#include "runtime/linear_weight.h"

#include <stdexcept>

#include "kernels/kernels.h"
#include "kernels/q8.h"

namespace gptj::runtime {

const int8_t* LinearInput::q8() {
    if (!quantized_) {
        if (K_ % kernels::kQ8Block != 0) throw std::invalid_argument("int8 linears need K % 32 == 0");
        q_.resize(size_t(M_ * K_));
        d_.resize(size_t(M_ * K_ / kernels::kQ8Block));
        kernels::quantize_activations(q_.data(), d_.data(), x_, M_, K_);
        quantized_ = true;
    }
    return q_.data();
}

const float* LinearInput::q8_scale() {
    q8();
    return d_.data();
}

void apply_linear(float* y, LinearInput& x, const LinearWeight& w) {
    switch (w.kind) {
        case LinearWeight::Kind::F32:
            kernels::linear(y, x.x(), w.f32, w.bias, x.rows(), w.out, w.in);
            break;
        case LinearWeight::Kind::Q8:
            kernels::q8_linear(y, x.q8(), x.q8_scale(), w.q8, w.q8_scale, w.bias, x.rows(), w.out, w.in);
            break;
    }
}

}  // namespace gptj::runtime
