// Scalar reference of the q4 kernel (the oracle of the SIMD ones and the fallback on other CPUs), and the
// prompt path shared by the SIMD levels (q4_via_q8). See q4.h for the contract.
#include <algorithm>
#include <cstring>
#include <memory>

#include "kernels/parallel.h"
#include "kernels/q4.h"
#include "kernels/q8.h"

namespace gptj::kernels {

void q4_via_q8(float* y, const LinearInputs& x, const WeightData& w, const float* b, int64_t N, Q4Unpack unpack) {
    static const WeightFormat& q8 = weight_format("q8");
    const int64_t K = x.K, nb = K / kQ8Block;
    // Slices of at most 8 MB of unpacked int8 rows (a multiple of 64 rows): small enough that the q8 kernel
    // reads them back from cache rather than memory, large enough that its per-call copy of the activations
    // stays small next to the work (docs/kernels.md has the slice sizes measured).
    const int64_t slice = std::min(N, std::max<int64_t>(64, (int64_t(8) << 20) / K / 64 * 64));
    std::unique_ptr<int8_t[]> q(new int8_t[size_t(slice * K)]);
    std::unique_ptr<uint16_t[]> qs(new uint16_t[size_t(slice * nb)]);
    std::unique_ptr<float[]> ys(slice < N ? new float[size_t(x.M * slice)] : nullptr);
    for (int64_t n0 = 0; n0 < N; n0 += slice) {
        const int64_t rows = std::min(slice, N - n0);
        unpack(q.get(), qs.get(), w, n0, rows, K);
        const WeightData part{q.get(), qs.get()};
        if (rows == N) {
            format_linear(y, x, part, b, N, q8);
            continue;
        }
        format_linear(ys.get(), x, part, b ? b + n0 : nullptr, rows, q8);
        for (int64_t t = 0; t < x.M; ++t) std::copy(ys.get() + t * rows, ys.get() + (t + 1) * rows, y + t * N + n0);
    }
}

PackedWeight q4_pack_panels(const WeightData& stored, int64_t N, int64_t K) {
    const int64_t nb = K / kQ8Block, panels = (N + kQ4PanelRows - 1) / kQ4PanelRows, row_bytes = K / 2;
    const int64_t value_bytes = panels * nb * kQ4PanelBlockBytes, scale_bytes = panels * nb * kQ4PanelRows * 2;
    PackedWeight out;
    out.storage = aligned_bytes(value_bytes + scale_bytes);
    uint8_t* pw = static_cast<uint8_t*>(out.storage.get());
    uint16_t* ps = reinterpret_cast<uint16_t*>(pw + value_bytes);
    const uint8_t* w = static_cast<const uint8_t*>(stored.values);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t* chunks = pw + (p * nb + b) * kQ4PanelBlockBytes;
            uint16_t* scales = ps + (p * nb + b) * kQ4PanelRows;
            for (int64_t r = 0; r < kQ4PanelRows; ++r) {
                const int64_t n = p * kQ4PanelRows + r;
                const uint8_t* block = w + n * row_bytes + b * kQ8Block / 2;  // 16 stored bytes
                for (int c = 0; c < 4; ++c) {                                 // bytes 4c..4c+3 -> chunk c, lane r
                    if (n < N)
                        std::memcpy(chunks + 64 * c + 4 * r, block + 4 * c, 4);
                    else
                        std::memset(chunks + 64 * c + 4 * r, 0, 4);
                }
                scales[r] = n < N ? stored.scales[n * nb + b] : 0;
            }
        }
    out.data = WeightData{pw, ps};
    return out;
}

namespace scalar {

// y[t, n] = sum_b float(d[t, n, b]) * (float(ws[n, b]) * dx[t, b]), b in order, + b[n]; q8_scalar's chain.
void q4_linear(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws, const float* b,
               int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / kQ8Block, half = kQ8Block / 2;
#pragma omp parallel
    {
        int64_t n0, n1;
        thread_range(N, 1, &n0, &n1);
        for (int64_t n = n0; n < n1; ++n)
            for (int64_t t = 0; t < M; ++t) {
                float acc = 0.0f;
                for (int64_t blk = 0; blk < nb; ++blk) {
                    const int8_t* a = qx + t * K + blk * kQ8Block;
                    const uint8_t* c = w + (n * K + blk * kQ8Block) / 2;
                    int32_t dot = 0;
                    for (int64_t j = 0; j < half; ++j)
                        dot += int32_t(a[j]) * ((c[j] & 0x0F) - kQ4Offset) +
                               int32_t(a[half + j]) * ((c[j] >> 4) - kQ4Offset);
                    const float s = f16_to_f32(ws[n * nb + blk]) * dx[t * nb + blk];
                    const float term = float(dot) * s;
                    acc = acc + term;
                }
                y[t * N + n] = b ? acc + b[n] : acc;
            }
    }
}

}  // namespace scalar

}  // namespace gptj::kernels
