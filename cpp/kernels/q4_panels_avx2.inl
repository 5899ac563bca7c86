// The q4 linear layer on the 16-row panels of q4.h, with 256-bit vectors: included by q4_avx2.cpp and
// q4_avxvnni.cpp inside their own anonymous namespaces (see docs/kernels.md, "One algorithm, several
// targets"). With GPTJ_Q4_PANELS_VNNI defined, vpdpbusd does in one step what maddubs + madd do in two.
//
// Needs, in the including scope: SharedRanges, num_threads, kQ8Block and q4.h.
//
// A 256-bit vector holds half a panel chunk: int32 lane r of the bytes at chunk + 32h is row 8h + r. Per
// panel, block b, half h and token t, with lo_c = chunk_c & 0x0F (elements 4c..4c+3 of each row):
//   VNNI:  d = sum_c vpdpbusd(lo_c, bcast(qx[4c..])) + (sum_c vpdpbusd(chunk_c & 0xF0, bcast(qx[16+4c..])) >> 4)
//   AVX2:  s = sum_c maddubs(lo_c, bcast(qx[4c..])) + maddubs((chunk_c >> 4) & 0x0F, bcast(qx[16+4c..]))
//          d = madd(s, 1)      the int16 sum is exact: 8 pairs of at most 2 * 15 * 127, 30480 < 32767
//   then   d -= 8 sum(qx_b);   acc = fma(float(d), float(ws_b) * dx_b, acc)
// one int32 lane per row, the chain of every other level (bitwise). Prompts: q4_via_q8 with
// avx2::q4_unpack_panels.

static_assert(kQ8Block == 32, "a panel block is 32 elements of 16 rows");

inline int32_t load_i32(const void* p) {
    int32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// The high nibbles as the dot product below takes them.
inline __m256i high_nibbles(__m256i chunk) {
#if defined(GPTJ_Q4_PANELS_VNNI)
    return _mm256_and_si256(chunk, _mm256_set1_epi8(char(0xF0)));  // 16 u: the sum is shifted back once
#else
    return _mm256_and_si256(_mm256_srli_epi16(chunk, 4), _mm256_set1_epi8(0x0F));  // u: int16 pairs stay exact
#endif
}

// Per int32 lane (row), the block's sum_j qx_j u_j: lo, hi the unpacked half chunks, xb the block's 32
// activations.
inline __m256i block_dots(const __m256i lo[4], const __m256i hi[4], const int8_t* xb) {
#if defined(GPTJ_Q4_PANELS_VNNI)
    __m256i pl = _mm256_setzero_si256(), ph = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
        pl = _mm256_dpbusd_avx_epi32(pl, lo[c], _mm256_set1_epi32(load_i32(xb + 4 * c)));
        ph = _mm256_dpbusd_avx_epi32(ph, hi[c], _mm256_set1_epi32(load_i32(xb + 16 + 4 * c)));
    }
    return _mm256_add_epi32(pl, _mm256_srai_epi32(ph, 4));
#else
    __m256i s = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(lo[c], _mm256_set1_epi32(load_i32(xb + 4 * c))));
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(hi[c], _mm256_set1_epi32(load_i32(xb + 16 + 4 * c))));
    }
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
#endif
}

// TM tokens x one panel. qx (TM, stride K), dx and ox (TM, stride nb): ox = 8 sum(qx_b); pw, ps: the
// panel's values and scales; y (TM rows, stride ldy), of which the first `rows` columns are written.
template <int TM>
void panel_tile(float* y, int64_t ldy, int64_t rows, const int8_t* qx, const float* dx, const int32_t* ox,
                const uint8_t* pw, const uint16_t* ps, const float* bias, int64_t K) {
    const int64_t nb = K / kQ8Block;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc[TM][2];
    for (int t = 0; t < TM; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* wb = pw + b * kQ4PanelBlockBytes;
        for (int c = 0; c < 4; ++c)  // each thread's panels are one stream: fetch it ahead into L2
            _mm_prefetch(reinterpret_cast<const char*>(wb + kQ4PanelPrefetchBytes + 64 * c), _MM_HINT_T1);
        if (b % 2 == 0)  // 64 bytes of scales serve two blocks
            _mm_prefetch(reinterpret_cast<const char*>(ps + b * kQ4PanelRows + kQ4PanelPrefetchBytes / 8), _MM_HINT_T1);
        for (int h = 0; h < 2; ++h) {
            __m256i lo[4], hi[4];
            for (int c = 0; c < 4; ++c) {
                const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + 64 * c + 32 * h));
                lo[c] = _mm256_and_si256(v, low4);
                hi[c] = high_nibbles(v);
            }
            const __m256 sw =
                _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(ps + b * kQ4PanelRows + 8 * h)));
            for (int t = 0; t < TM; ++t) {
                const __m256i d =
                    _mm256_sub_epi32(block_dots(lo, hi, qx + t * K + b * kQ8Block), _mm256_set1_epi32(ox[t * nb + b]));
                acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(sw, _mm256_set1_ps(dx[t * nb + b])),
                                            acc[t][h]);
            }
        }
    }
    alignas(32) float out[kQ4PanelRows];
    for (int t = 0; t < TM; ++t) {
        _mm256_store_ps(out, acc[t][0]);
        _mm256_store_ps(out + 8, acc[t][1]);
        for (int64_t r = 0; r < rows; ++r) y[t * ldy + r] = bias ? out[r] + bias[r] : out[r];
    }
}

// The level's q4 cell (q4.h): panels for fewer than kQ4UnpackMinTokens tokens, q4_via_q8 from there on.
// Tiles of at most 2 tokens: 16 registers hold a tile's accumulators and a half chunk's unpacked nibbles.
void q4_panels_linear(float* y, const LinearInputs& x, const WeightData& panels, const float* b, int64_t N) {
    const int64_t M = x.M, K = x.K, nb = K / kQ8Block;
    if (M >= kQ4UnpackMinTokens) return q4_via_q8(y, x, panels, b, N, avx2::q4_unpack_panels);
    std::vector<int32_t> ox(size_t(M * nb));
    q4_offset_sums(ox.data(), x.qx, M, K);
    const int64_t count = (N + kQ4PanelRows - 1) / kQ4PanelRows;
    const uint8_t* pw = static_cast<const uint8_t*>(panels.values);
    SharedRanges panels_left(count, num_threads());
#pragma omp parallel
    {
        for (int64_t p = panels_left.next(); p >= 0; p = panels_left.next()) {
            const int64_t n = p * kQ4PanelRows, rows = std::min(kQ4PanelRows, N - n);
            const uint8_t* wp = pw + p * nb * kQ4PanelBlockBytes;
            const uint16_t* sp = panels.scales + p * nb * kQ4PanelRows;
            const float* bp = b ? b + n : nullptr;
            for (int64_t t = 0; t < M; t += 2) {
                if (M - t >= 2)
                    panel_tile<2>(y + t * N + n, N, rows, x.qx + t * K, x.dx + t * nb, ox.data() + t * nb, wp, sp, bp,
                                  K);
                else
                    panel_tile<1>(y + t * N + n, N, rows, x.qx + t * K, x.dx + t * nb, ox.data() + t * nb, wp, sp, bp,
                                  K);
            }
        }
    }
}
