// The row-streaming int8 linear kernel (decode and short inputs) on 256-bit vectors, shared by q8_avx2.cpp
// and q8_avxvnni.cpp (AVX-512 has its own, rows_avx512.h): each includes it inside its own anonymous
// namespace, compiled with its own flags, so the two copies never meet at link time (docs/kernels.md, "One
// algorithm, several targets"). They differ in one instruction sequence only, dot_i8x32: with
// GPTJ_Q8_ROWS_VNNI defined, vpdpbusd does in one step what maddubs + madd do in two.
//
// Needs, in the including scope: i8x32 / i32x8 (= __m256i), SharedRanges, num_threads, thread_index, kQ8Block, and
// simd_avx2.h's f32x8, load_i8x32, fold_halves_i32x8x4, add_halves_i32x8, quad_scales.
//
// The weights are read straight from the file, four rows (a "quad") at a time; one pass over a quad
// serves a tile of up to 4 tokens. Per block b, for a pair of tokens (t, t+1) and quad rows r0..r3:
//     p      = dot_i8x32(|w_r|, w_r, qx)         8 int32 lanes per (token, row), exact (sign trick)
//     d      = fold(p ...)                        [t: r0..r3 | t+1: r0..r3] whole-block sums, exact
//     acc    = fma(float(d), [dw_r,b] * [dx_t,b], acc)
// so every output element is one float32 chain over the blocks in order, as in quant.q8_linear. Rows
// left over after the quads (N % 4) run the same chain one element at a time.

static_assert(kQ8Block == 32, "one int8 block fills exactly one AVX2 register");

// Software prefetch: while a quad is read, the next quad's rows are fetched at the same offsets (4 K
// bytes ahead), so the next four streams are already running when it starts (docs/kernels.md has the
// measurements).

// Dot products of one int8 block pair, 4 elements per int32 lane: lane j = sum_{i<4} a[4j+i] w[4j+i].
// abs_w = |w|. The sign trick, with the weight as the unsigned side: |w| * sign(a, w) = a * w
// elementwise. |w| read as u8 is right even for w = -128 (0x80 = 128), and sign(a, w) only negates
// activations, which the quantizer keeps in [-127, 127]; so a file holding -128 still computes exactly.
// maddubs (u8 x s8 -> pairwise s16 sums) cannot saturate: 2 * 128 * 127 = 32512 < 32767; madd with
// ones sums the s16 pairs into int32.
inline i32x8 dot_i8x32(i8x32 abs_w, i8x32 w, i8x32 a) {
#if defined(GPTJ_Q8_ROWS_VNNI)
    // vpdpbusd: u8 x s8, four products per int32 lane, summed exactly (no int16 step to saturate).
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), abs_w, _mm256_sign_epi8(a, w));
#else
    const __m256i prod16 = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(a, w));
    return _mm256_madd_epi16(prod16, _mm256_set1_epi16(1));
#endif
}

// One block dot product summed to a single int32, exact.
inline int32_t dot_i8x32_total(i8x32 a, i8x32 w) {
    const __m128i h = add_halves_i32x8(dot_i8x32(_mm256_abs_epi8(w), w, a));
    const __m128i s = _mm_hadd_epi32(h, h);
    return _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
}

// Half-block sums of token a against the quad's 4 rows w[r] (aw[r] = |w[r]|):
// [r0..r3 elements 0..15 | r0..r3 elements 16..31].
inline i32x8 quad_dots(const int8_t* a, const i8x32* w, const i8x32* aw) {
    const i8x32 x = load_i8x32(a);
    return fold_halves_i32x8x4(dot_i8x32(aw[0], w[0], x), dot_i8x32(aw[1], w[1], x), dot_i8x32(aw[2], w[2], x),
                               dot_i8x32(aw[3], w[3], x));
}

// Quad tile: TM tokens x 4 weight rows. Every output element (t, r) is one float32 chain over the
// blocks, exactly as in quant.q8_linear except that the multiply-add is fused:
//     acc = fma(float(dot(qx[t, b], w[r, b])), dw[r, b] * dx[t, b], acc),  b = 0, 1, ...;  y = acc + bias
// Tokens go in pairs, one vector lane per (token, row): [t r0..r3 | t+1 r0..r3]; an odd token uses
// the low 128 bits alone.
// qx (TM rows, stride K), dx (TM rows, stride nb); w (4 rows, stride K); dq (nb, 4); y (TM rows, stride ldy).
template <int TM>
void quad_tile(float* y, int64_t ldy, const int8_t* qx, const float* dx, const int8_t* w, const float* dq,
               const float* bias, int64_t K) {
    constexpr int P = TM / 2;  // token pairs
    const int64_t nb = K / kQ8Block;
    f32x8 acc[P > 0 ? P : 1];
    __m128 acc1 = _mm_setzero_ps();
    for (int i = 0; i < P; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t o = b * kQ8Block;
        if ((b & 1) == 0) {  // one cache line per row every two blocks: the next quad's rows
            const char* pf = reinterpret_cast<const char*>(w + 4 * K + o);
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + K, _MM_HINT_T0);
            _mm_prefetch(pf + 2 * K, _MM_HINT_T0);
            _mm_prefetch(pf + 3 * K, _MM_HINT_T0);
        }
        const i8x32 wr[4] = {load_i8x32(w + o), load_i8x32(w + K + o), load_i8x32(w + 2 * K + o),
                             load_i8x32(w + 3 * K + o)};
        const i8x32 awr[4] = {_mm256_abs_epi8(wr[0]), _mm256_abs_epi8(wr[1]), _mm256_abs_epi8(wr[2]),
                              _mm256_abs_epi8(wr[3])};
        const __m128 sw = _mm_loadu_ps(dq + 4 * b);  // [dw_r0 .. dw_r3]
        for (int i = 0; i < P; ++i) {
            const int8_t* a = qx + 2 * i * K + o;
            const i32x8 h0 = quad_dots(a, wr, awr), h1 = quad_dots(a + K, wr, awr);
            // [t: r0..r3 | t+1: r0..r3], each the sum of its two halves.
            const i32x8 d =
                _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31));
            const f32x8 sx =
                _mm256_set_m128(_mm_broadcast_ss(dx + (2 * i + 1) * nb + b), _mm_broadcast_ss(dx + 2 * i * nb + b));
            const f32x8 s = _mm256_mul_ps(_mm256_set_m128(sw, sw), sx);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[i]);
        }
        if (TM % 2) {
            const __m128i d = add_halves_i32x8(quad_dots(qx + (TM - 1) * K + o, wr, awr));
            const __m128 s = _mm_mul_ps(sw, _mm_broadcast_ss(dx + (TM - 1) * nb + b));
            acc1 = _mm_fmadd_ps(_mm_cvtepi32_ps(d), s, acc1);
        }
    }
    const __m128 b4 = bias ? _mm_loadu_ps(bias) : _mm_setzero_ps();
    auto store = [&](float* out, __m128 v) { _mm_storeu_ps(out, bias ? _mm_add_ps(v, b4) : v); };
    for (int i = 0; i < P; ++i) {
        store(y + 2 * i * ldy, _mm256_castps256_ps128(acc[i]));
        store(y + (2 * i + 1) * ldy, _mm256_extractf128_ps(acc[i], 1));
    }
    if (TM % 2) store(y + (TM - 1) * ldy, acc1);
}

// One row against M tokens (the rows left over after the quads), the same chain one element at a time.
// qx (M, K), dx (M, nb); w (K); ws (nb) float16 bits; y (M rows, stride ldy).
inline void single_row(float* y, int64_t ldy, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws,
                       const float* bias, int64_t M, int64_t K) {
    const int64_t nb = K / kQ8Block;
    for (int64_t t = 0; t < M; ++t) {
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
            const int32_t d = dot_i8x32_total(load_i8x32(qx + t * K + b * kQ8Block), load_i8x32(w + b * kQ8Block));
            acc = std::fma(float(d), f16_to_f32(ws[b]) * dx[t * nb + b], acc);
        }
        y[t * ldy] = bias ? acc + bias[0] : acc;
    }
}

// Decode and short inputs: the weights straight from the file, four rows at a time.
inline void q8_linear_rows(float* y, const int8_t* qx, const float* dx, const int8_t* w, const uint16_t* ws,
                           const float* b, int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / kQ8Block;
    // Rows per group: a group's weights (rows x K bytes) stay in L2 while every token tile passes over
    // them; each token tile (4 x K bytes) stays in L1/L2 while it passes over the group's quads.
    // The threads share the groups (SharedRanges): each walks its own range and then helps the others.
    const int64_t group = std::max<int64_t>(4, (int64_t(192) << 10) / K / 4 * 4);
    const int64_t quads_end = N / 4 * 4, groups = (quads_end + group - 1) / group;
    SharedRanges groups_left(groups, num_threads());
#pragma omp parallel
    {
        std::vector<float> dq(size_t(group * nb));  // the group's scales, quad by quad, transposed
        for (int64_t g = groups_left.next(); g >= 0; g = groups_left.next()) {
            const int64_t g0 = g * group, g1 = std::min(quads_end, g0 + group);
            for (int64_t t = 0; t < M;) {
                const int64_t tm = std::min<int64_t>(4, M - t);
                for (int64_t n = g0; n < g1; n += 4) {
                    // the quad's scales, converted as its weights start streaming (reused by later token tiles)
                    if (t == 0) quad_scales(dq.data() + (n - g0) * nb, ws + n * nb, nb);
                    float* yt = y + t * N + n;
                    const float* dqn = dq.data() + (n - g0) * nb;
                    const float* bn = b ? b + n : nullptr;
                    const int8_t* wn = w + n * K;
                    switch (tm) {
                        case 4:
                            quad_tile<4>(yt, N, qx + t * K, dx + t * nb, wn, dqn, bn, K);
                            break;
                        case 3:
                            quad_tile<3>(yt, N, qx + t * K, dx + t * nb, wn, dqn, bn, K);
                            break;
                        case 2:
                            quad_tile<2>(yt, N, qx + t * K, dx + t * nb, wn, dqn, bn, K);
                            break;
                        default:
                            quad_tile<1>(yt, N, qx + t * K, dx + t * nb, wn, dqn, bn, K);
                            break;
                    }
                }
                t += tm;
            }
        }
        if (thread_index() == 0)  // the rows after the last quad (N % 4)
            for (int64_t n = quads_end; n < N; ++n)
                single_row(y + n, N, qx, dx, w + n * K, ws + n * nb, b ? b + n : nullptr, M, K);
    }
}
