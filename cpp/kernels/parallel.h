// OpenMP helpers shared by the kernel files. Work is split into ranges or chunks of output rows,
// columns or heads (statically or dynamically); the split never changes what one output element
// computes, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace gptj::kernels {

inline int thread_index() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline int thread_count() {
#if defined(_OPENMP)
    return omp_get_num_threads();
#else
    return 1;
#endif
}

// This thread's share [begin, end) of [0, n), cut at multiples of `unit` (the last range takes the tail).
inline void thread_range(int64_t n, int64_t unit, int64_t* begin, int64_t* end) {
    const int64_t units = (n + unit - 1) / unit;
    const int64_t t = thread_index(), nt = thread_count();
    *begin = std::min(n, units * t / nt * unit);
    *end = std::min(n, units * (t + 1) / nt * unit);
}

}  // namespace gptj::kernels
