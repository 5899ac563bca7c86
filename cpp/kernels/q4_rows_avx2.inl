// The row-streaming q4 linear kernel (decode and short inputs) on 256-bit vectors, included by q4_avx2.cpp
// and q4_avxvnni.cpp inside their own anonymous namespaces (see docs/kernels.md, "One algorithm, several
// targets"; AVX-512 has its own, q4_avx512.cpp). With GPTJ_Q4_ROWS_VNNI defined, vpdpbusd does in one step
// what maddubs + madd do in two.
//
// Needs, in the including scope: thread_range, kQ8Block, q4.h (kQ4Offset, q4_via_q8, avx2::q4_unpack) and
// simd_avx2.h's f32x8, load_i8x32, fold_halves_i32x8x4, add_halves_i32x8, quad_scales.
//
// As q8_rows_avx2.inl: four weight rows (a quad) at a time straight from the file, one pass over a quad
// for a tile of up to 4 tokens, the next quad's rows prefetched. Per block b, rows r0..r3, tokens (t, t+1):
//     u      = the block's 32 nibbles of row r, in order         (load 16 bytes, shift, mask)
//     p      = dot_u4x32(u, qx)                                  8 int32 lanes, exact: u8 x s8 products
//     d      = fold(p ...) - 8 * sum(qx[t, b])                   [t: r0..r3 | t+1: r0..r3], exact
//     acc    = fma(float(d), [dw_r,b] * [dx_t,b], acc)           q8's chain, so the levels agree bitwise

static_assert(kQ8Block == 32, "one q4 block fills one AVX2 register once unpacked");

// The 32 unsigned 4-bit values of a block (16 bytes at p, see q4.h) as bytes in element order.
inline __m256i unpack_u4x32(const uint8_t* p) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// lane j = sum_{i<4} u[4j+i] a[4j+i]: u in [0, 15] unsigned, a signed; exact (maddubs pairs <= 2 * 15 * 127).
inline __m256i dot_u4x32(__m256i u, __m256i a) {
#if defined(GPTJ_Q4_ROWS_VNNI)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, a);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1));
#endif
}

// 8 * (sum of each block of qx): what taking 8 off every stored value takes off a block's dot product.
// qx (M, K) -> ox (M, K/32)
inline void offset_sums(int32_t* ox, const int8_t* qx, int64_t M, int64_t K) {
    for (int64_t i = 0; i < M * (K / kQ8Block); ++i) {
        int32_t s = 0;
        for (int64_t j = 0; j < kQ8Block; ++j) s += qx[i * kQ8Block + j];
        ox[i] = kQ4Offset * s;
    }
}

// Half-block sums of token a against the quad's 4 unpacked rows: [r0..r3 elements 0..15 | 16..31].
inline __m256i q4_quad_dots(const int8_t* a, const __m256i* u) {
    const __m256i x = load_i8x32(a);
    return fold_halves_i32x8x4(dot_u4x32(u[0], x), dot_u4x32(u[1], x), dot_u4x32(u[2], x), dot_u4x32(u[3], x));
}

// TM tokens x 4 weight rows; the layout of q8_rows_avx2.inl's quad_tile. qx (TM, stride K), dx and ox
// (TM, stride nb); w (4 rows, stride K/2 bytes); dq (nb, 4); y (TM, stride ldy).
template <int TM>
void q4_quad_tile(float* y, int64_t ldy, const int8_t* qx, const float* dx, const int32_t* ox, const uint8_t* w,
                  const float* dq, const float* bias, int64_t K) {
    constexpr int P = TM / 2;
    const int64_t nb = K / kQ8Block, rb = K / 2;
    f32x8 acc[P > 0 ? P : 1];
    __m128 acc1 = _mm_setzero_ps();
    for (int i = 0; i < P; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const int64_t o = b * kQ8Block, ob = b * (kQ8Block / 2);
        if ((b & 3) == 0) {  // one cache line per row every four blocks: the next quad's rows
            const char* pf = reinterpret_cast<const char*>(w + 4 * rb + ob);
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + rb, _MM_HINT_T0);
            _mm_prefetch(pf + 2 * rb, _MM_HINT_T0);
            _mm_prefetch(pf + 3 * rb, _MM_HINT_T0);
        }
        const __m256i u[4] = {unpack_u4x32(w + ob), unpack_u4x32(w + rb + ob), unpack_u4x32(w + 2 * rb + ob),
                              unpack_u4x32(w + 3 * rb + ob)};
        const __m128 sw = _mm_loadu_ps(dq + 4 * b);  // [dw_r0 .. dw_r3]
        for (int i = 0; i < P; ++i) {
            const int8_t* a = qx + 2 * i * K + o;
            const __m256i h0 = q4_quad_dots(a, u), h1 = q4_quad_dots(a + K, u);
            const __m256i off =
                _mm256_set_m128i(_mm_set1_epi32(ox[(2 * i + 1) * nb + b]), _mm_set1_epi32(ox[2 * i * nb + b]));
            const __m256i d = _mm256_sub_epi32(
                _mm256_add_epi32(_mm256_permute2x128_si256(h0, h1, 0x20), _mm256_permute2x128_si256(h0, h1, 0x31)),
                off);
            const f32x8 sx =
                _mm256_set_m128(_mm_broadcast_ss(dx + (2 * i + 1) * nb + b), _mm_broadcast_ss(dx + 2 * i * nb + b));
            const f32x8 s = _mm256_mul_ps(_mm256_set_m128(sw, sw), sx);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc[i]);
        }
        if (TM % 2) {
            const __m128i d = _mm_sub_epi32(add_halves_i32x8(q4_quad_dots(qx + (TM - 1) * K + o, u)),
                                            _mm_set1_epi32(ox[(TM - 1) * nb + b]));
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

// One row against M tokens (the rows left after the quads), the same chain one element at a time.
inline void q4_single_row(float* y, int64_t ldy, const int8_t* qx, const float* dx, const int32_t* ox, const uint8_t* w,
                          const uint16_t* ws, const float* bias, int64_t M, int64_t K) {
    const int64_t nb = K / kQ8Block;
    for (int64_t t = 0; t < M; ++t) {
        float acc = 0.0f;
        for (int64_t b = 0; b < nb; ++b) {
            const __m128i h =
                add_halves_i32x8(dot_u4x32(unpack_u4x32(w + b * kQ8Block / 2), load_i8x32(qx + t * K + b * kQ8Block)));
            const __m128i s = _mm_hadd_epi32(h, h);
            const int32_t d = _mm_cvtsi128_si32(_mm_hadd_epi32(s, s)) - ox[t * nb + b];
            acc = std::fma(float(d), f16_to_f32(ws[b]) * dx[t * nb + b], acc);
        }
        y[t * ldy] = bias ? acc + bias[0] : acc;
    }
}

// Decode and short inputs: the packed weights straight from the file, four rows at a time.
inline void q4_linear_rows(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws,
                           const float* b, int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / kQ8Block, rb = K / 2;
    std::vector<int32_t> ox(size_t(M * nb));
    offset_sums(ox.data(), qx, M, K);
    // Rows per group: a group's packed rows (192 KB) stay in L2 while every token tile passes over them.
    const int64_t group = std::max<int64_t>(4, (int64_t(192) << 10) / rb / 4 * 4);
#pragma omp parallel
    {
        int64_t n0, n1;
        thread_range(N, 4, &n0, &n1);
        const int64_t quads_end = n0 + (n1 - n0) / 4 * 4;
        std::vector<float> dq(size_t(group * nb));
        for (int64_t g0 = n0; g0 < quads_end; g0 += group) {
            const int64_t g1 = std::min(quads_end, g0 + group);
            for (int64_t t = 0; t < M;) {
                const int64_t tm = std::min<int64_t>(4, M - t);
                for (int64_t n = g0; n < g1; n += 4) {
                    // the quad's scales, converted as its weights start streaming (reused by later token tiles)
                    if (t == 0) quad_scales(dq.data() + (n - g0) * nb, ws + n * nb, nb);
                    float* yt = y + t * N + n;
                    const float* dqn = dq.data() + (n - g0) * nb;
                    const float* bn = b ? b + n : nullptr;
                    const uint8_t* wn = w + n * rb;
                    const int8_t* xt = qx + t * K;
                    const float* dt = dx + t * nb;
                    const int32_t* ot = ox.data() + t * nb;
                    switch (tm) {
                        case 4:
                            q4_quad_tile<4>(yt, N, xt, dt, ot, wn, dqn, bn, K);
                            break;
                        case 3:
                            q4_quad_tile<3>(yt, N, xt, dt, ot, wn, dqn, bn, K);
                            break;
                        case 2:
                            q4_quad_tile<2>(yt, N, xt, dt, ot, wn, dqn, bn, K);
                            break;
                        default:
                            q4_quad_tile<1>(yt, N, xt, dt, ot, wn, dqn, bn, K);
                            break;
                    }
                }
                t += tm;
            }
        }
        for (int64_t n = quads_end; n < n1; ++n)
            q4_single_row(y + n, N, qx, dx, ox.data(), w + n * rb, ws + n * nb, b ? b + n : nullptr, M, K);
    }
}

// q4_linear of the including level: the row kernel for few tokens, q4_via_q8 on unpacked rows from
// kQ4UnpackMinTokens tokens on.
inline void q4_linear_level(float* y, const int8_t* qx, const float* dx, const uint8_t* w, const uint16_t* ws,
                            const float* b, int64_t M, int64_t N, int64_t K) {
    if (M < kQ4UnpackMinTokens) return q4_linear_rows(y, qx, dx, w, ws, b, M, N, K);
    LinearInputs x;
    x.qx = qx, x.dx = dx, x.M = M, x.K = K;
    q4_via_q8(y, x, WeightData{w, ws}, b, N, avx2::q4_unpack);
}
