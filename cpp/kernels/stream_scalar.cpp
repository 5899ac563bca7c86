// stream_read, scalar reference: the sum of x (n), read once with the rows split across threads.
// Exists to measure memory read bandwidth beside the linear kernels; the value only defeats dead-code
// elimination (the summation order depends on the thread count).
#include "kernels/impl.h"

namespace gptj::kernels::scalar {

double stream_read(const float* x, int64_t n) {
    double total = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t i = 0; i < n; ++i) total += x[i];
    return total;
}

}  // namespace gptj::kernels::scalar
