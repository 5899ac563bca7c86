// OpenMP helpers shared by the kernel files. Work is split into ranges or chunks of output rows,
// columns or heads (statically or dynamically); the split never changes what one output element
// computes, so results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

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

// Units [0, n) shared by the threads of the next parallel region: each thread starts on its own contiguous
// range (thread_range's) and takes its units from the front; a thread whose range is done takes units from
// the back of the others'. A slower thread (a busy vCPU) is helped, and every thread still reads one
// stream at a time, which the prefetchers follow (handing out interleaved chunks measured slower).
// Make it before the region; call next() inside it.
class SharedRanges {
public:
    SharedRanges(int64_t n, int threads) : threads_(std::max(1, threads)), ranges_(new Range[threads_]) {
        for (int t = 0; t < threads_; ++t)
            ranges_[t].bounds.store(pack(n * t / threads_, n * (t + 1) / threads_), std::memory_order_relaxed);
    }
    // The calling thread's next unit, or -1 when every unit is taken.
    int64_t next() {
        const int self = thread_index() % threads_;
        const int64_t own = take(ranges_[self], /*front=*/true);
        if (own >= 0) return own;
        for (int k = 1; k < threads_; ++k) {
            const int64_t unit = take(ranges_[(self + k) % threads_], /*front=*/false);
            if (unit >= 0) return unit;
        }
        return -1;
    }

private:
    struct alignas(64) Range {
        std::atomic<uint64_t> bounds;  // [front, back): front in the low 32 bits, back in the high
    };
    static uint64_t pack(int64_t front, int64_t back) { return uint64_t(front) | uint64_t(back) << 32; }
    static int64_t take(Range& r, bool front) {
        uint64_t v = r.bounds.load(std::memory_order_relaxed);
        for (;;) {
            const int64_t f = int64_t(v & 0xFFFFFFFFu), b = int64_t(v >> 32);
            if (f >= b) return -1;
            const uint64_t taken = front ? pack(f + 1, b) : pack(f, b - 1);
            if (r.bounds.compare_exchange_weak(v, taken, std::memory_order_relaxed)) return front ? f : b - 1;
        }
    }
    int threads_;
    std::unique_ptr<Range[]> ranges_;
};

}  // namespace gptj::kernels
