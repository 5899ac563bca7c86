#include "runtime/linear_weight.h"

#include "kernels/kernels.h"

namespace gptj::runtime {

void apply_linear(float* y, const float* x, const LinearWeight& w, int64_t M) {
    switch (w.kind) {
        case LinearWeight::Kind::F32:
            kernels::linear(y, x, w.f32, w.bias, M, w.out, w.in);
            break;
    }
}

}  // namespace gptj::runtime
