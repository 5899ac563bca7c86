// The loop structure of the packed (prompt) int8 kernels, shared by q8_avx2.cpp (int16 panels) and
// q8_avxvnni.cpp (int8 panels for vpdpbusd); q8_amx.cpp uses store_panel_outputs. Each file includes
// this inside its own anonymous namespace, compiled with its own flags, so the copies never meet at
// link time. Needs, in the including scope: kQ8Block, thread_range, <memory>, <vector>, <algorithm>.
//
// A Scheme says how one 16-row panel is packed and multiplied:
//   using Act;                                    element of the activations' chunk-major copy
//   static void copy_chunk(Act* dst, const int8_t* qx, int64_t len);   len (a multiple of 32) values
//   void pack(const int8_t* w, const uint16_t* ws, int64_t K, int64_t rows, int64_t b0, int64_t nbc);
//                                                 rows [0, rows) of the panel, blocks [b0, b0 + nbc)
//   template <int TT> void tile(float* c, const Act* a, int64_t lda, const float* dx, int64_t nb,
//                               int64_t nbc, bool first) const;
//                                                 TT tokens x 16 rows over the packed chunk: continue the
//                                                 chains c (TT x 16; start them at 0 when `first`) with
//                                                 c = fma(float(d), ws * dx, c) per block, in block order
//
// Loop order per thread (a contiguous range of output rows): token blocks of up to kPanelTokenBlock;
// chunks of kPanelChunk k (that chunk of the block's activations stays in L2); panels; token tiles of 4.
// The chains live in a per-thread buffer [panel][token][16], so they stream through the caches instead
// of colliding at y's power-of-two row stride; y = c + bias is written once per token block.

constexpr int64_t kPanelRows = 16;
constexpr int64_t kPanelChunkBlocks = 8;
constexpr int64_t kPanelChunk = kPanelChunkBlocks * kQ8Block;  // 256 elements of k
constexpr int64_t kPanelTokenBlock = 256;

// y[t, n + r] = c[t][r] (+ b[n + r]) for t < tokens, r < rows: the chains of one panel ([token][16])
// ended as every q8 kernel ends them (no addition at all without a bias). y: row t at y + t * N.
inline void store_panel_outputs(float* y, int64_t N, const float* c, int64_t tokens, int64_t n, int64_t rows,
                                const float* b) {
    for (int64_t t = 0; t < tokens; ++t) {
        const float* ct = c + t * kPanelRows;
        float* yt = y + t * N + n;
        for (int64_t r = 0; r < rows; ++r) yt[r] = b ? ct[r] + b[n + r] : ct[r];
    }
}

template <class Scheme>
void q8_linear_panels(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws, const float* b,
                      int64_t M, int64_t N, int64_t K) {
    using Act = typename Scheme::Act;
    const int64_t nb = K / kQ8Block;
    // The activations chunk-major: chunk [k0, k0 + len) of token t at act[k0 * M + t * len].
    std::unique_ptr<Act[]> act(new Act[size_t(M * K)]);
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < M; ++t)
        for (int64_t k0 = 0; k0 < K; k0 += kPanelChunk) {
            const int64_t len = std::min(kPanelChunk, K - k0);
            Scheme::copy_chunk(act.get() + k0 * M + t * len, qx + t * K + k0, len);
        }
#pragma omp parallel
    {
        int64_t n0, n1;
        thread_range(N, kPanelRows, &n0, &n1);
        const int64_t panels = (n1 - n0 + kPanelRows - 1) / kPanelRows;
        Scheme panel;
        const size_t c_floats = size_t(std::max<int64_t>(1, panels * std::min(M, kPanelTokenBlock) * kPanelRows));
        std::unique_ptr<float[]> c(new float[c_floats]);
        for (int64_t t0 = 0; t0 < M && panels > 0; t0 += kPanelTokenBlock) {
            const int64_t tb = std::min(kPanelTokenBlock, M - t0);
            for (int64_t k0 = 0; k0 < K; k0 += kPanelChunk) {
                const int64_t len = std::min(kPanelChunk, K - k0), nbc = len / kQ8Block;
                const Act* ak = act.get() + k0 * M + t0 * len;
                const float* dk = dx + t0 * nb + k0 / kQ8Block;
                const bool first = k0 == 0;
                for (int64_t pi = 0; pi < panels; ++pi) {
                    const int64_t n = n0 + pi * kPanelRows;
                    panel.pack(w + n * K, ws + n * nb, K, std::min(kPanelRows, n1 - n), k0 / kQ8Block, nbc);
                    float* cp = c.get() + pi * tb * kPanelRows;
                    int64_t t = 0;
                    for (; t + 4 <= tb; t += 4)
                        panel.template tile<4>(cp + t * kPanelRows, ak + t * len, len, dk + t * nb, nb, nbc, first);
                    switch (tb - t) {
                        case 3:
                            panel.template tile<3>(cp + t * kPanelRows, ak + t * len, len, dk + t * nb, nb, nbc, first);
                            break;
                        case 2:
                            panel.template tile<2>(cp + t * kPanelRows, ak + t * len, len, dk + t * nb, nb, nbc, first);
                            break;
                        case 1:
                            panel.template tile<1>(cp + t * kPanelRows, ak + t * len, len, dk + t * nb, nb, nbc, first);
                            break;
                        default:
                            break;
                    }
                }
            }
            for (int64_t pi = 0; pi < panels; ++pi) {
                const int64_t n = n0 + pi * kPanelRows;
                store_panel_outputs(y + t0 * N, N, c.get() + pi * tb * kPanelRows, tb, n, std::min(kPanelRows, n1 - n),
                                    b);
            }
        }
    }
}
