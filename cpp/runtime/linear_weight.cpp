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

bool pack_for_level(LinearWeight& w, kernels::Isa level) {
    const kernels::Isa at = kernels::resolve_level(*w.format, level, 1);
    const kernels::PackFn pack = w.format->linear[int(at)].pack;
    if (!pack) return false;
    w.packed = pack(w.data, w.out, w.in);
    w.packed_level = at;
    return true;
}

void apply_linear(float* y, LinearInput& x, const LinearWeight& w) {
    const kernels::LinearInputs in = x.prepared(w.format->activations);
    const kernels::Isa at = kernels::resolve_level(*w.format, kernels::isa(), in.M);
    if (w.packed.storage && at == w.packed_level)
        return w.format->linear[int(at)].fn(y, in, w.packed.data, w.bias, w.out);
    kernels::format_linear(y, in, w.data, w.bias, w.out, *w.format);  // packs for this call if it must
}

}  // namespace gptj::runtime
