#include "runtime/model.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/half.h"
#include "kernels/kernels.h"
#include "kernels/q8.h"

namespace gptj::runtime {

std::string Config::check() const {
    if (n_embd <= 0 || n_head <= 0 || n_embd % n_head) return "n_embd must be a positive multiple of n_head";
    if (n_rot < 0 || n_rot % 2 || n_rot > n_embd / n_head) return "n_rot must be even and at most d_head";
    if (n_vocab <= 0 || n_ctx <= 0 || n_layer <= 0 || d_ff <= 0)
        return "n_vocab, n_ctx, n_layer and d_ff must be positive";
    return "";
}

KVCache::KVCache(const Config& config, int64_t batch, int64_t max_tokens, KVPrecision precision)
    : batch_(batch),
      max_tokens_(max_tokens),
      row_elements_(config.n_head * max_tokens * config.d_head()),
      n_layer_(config.n_layer),
      n_head_(config.n_head),
      d_head_(config.d_head()),
      precision_(precision),
      // new unsigned char[] leaves the memory untouched: pages are only mapped as tokens are written.
      keys_(new unsigned char[size_t(nbytes() / 2)]),
      values_(new unsigned char[size_t(nbytes() / 2)]),
      length_(batch, 0) {}

int64_t KVCache::nbytes() const { return 2 * n_layer_ * batch_ * row_elements_ * element_bytes(); }

namespace {

// A cache's element from a float32 key or value: copied, or rounded to float16 (nearest-even).
void store(float* dst, const float* src, int64_t n) { std::memcpy(dst, src, sizeof(float) * n); }
void store(uint16_t* dst, const float* src, int64_t n) { kernels::f32_to_f16(dst, src, n); }

// The attention kernel for a cache of float32 or float16 elements.
void attend(float* out, const float* q, const float* k, const float* v, float* scratch, int64_t T, int64_t start,
            int64_t H, int64_t dh, int64_t S) {
    kernels::attention(out, q, k, v, scratch, T, start, H, dh, S);
}
void attend(float* out, const float* q, const uint16_t* k, const uint16_t* v, float* scratch, int64_t T, int64_t start,
            int64_t H, int64_t dh, int64_t S) {
    kernels::attention_f16kv(out, q, k, v, scratch, T, start, H, dh, S);
}

}  // namespace

Model::Model(const Config& config, Weights weights, int threads)
    : config_(config), weights_(std::move(weights)), threads_(threads < 1 ? 1 : threads) {}

// Scratch for one call: x, h, q, k, v, att, a, m (n_tokens, n_embd) each, f (n_tokens, d_ff), and the
// attention kernel's per-thread score rows. One buffer, grown when a call needs more.
float* Model::reserve_scratch(int64_t n_tokens, int64_t max_keys) {
    const size_t need =
        size_t(n_tokens * (8 * config_.n_embd + config_.d_ff) + kernels::attention_scratch_floats(max_keys));
    if (scratch_.size() < need) scratch_.resize(need);
    return scratch_.data();
}

// For every cache row r in turn (its tokens are the next counts[r] rows of q, k, v): write the new keys
// and values into slots [length, length + count) of its cache, then attend its new queries over slots
// [0, length + count). Rows never see each other's tokens.
void Model::attention_block(float* att, const float* q, const float* k, const float* v, int64_t layer,
                            const int64_t* counts, KVCache& cache) {
    const int64_t E = config_.n_embd, H = config_.n_head, dh = config_.d_head(), S = cache.max_tokens();
    int64_t first = 0;
    for (int64_t r = 0; r < cache.batch(); ++r) {
        const int64_t count = counts[r], start = cache.length(r);
        auto append_and_attend = [&](auto* keys, auto* values) {  // float* or uint16_t*, as the cache stores
            for (int64_t t = 0; t < count; ++t)
                for (int64_t h = 0; h < H; ++h) {
                    const int64_t src = (first + t) * E + h * dh, dst = (h * S + start + t) * dh;
                    store(keys + dst, k + src, dh);
                    store(values + dst, v + src, dh);
                }
            if (count > 0)
                attend(att + first * E, q + first * E, keys, values, attention_scratch_, count, start, H, dh, S);
        };
        if (cache.precision() == KVPrecision::F16)
            append_and_attend(cache.keys<uint16_t>(layer, r), cache.values<uint16_t>(layer, r));
        else
            append_and_attend(cache.keys<float>(layer, r), cache.values<float>(layer, r));
        first += count;
    }
}

void Model::forward(float* logits, const int64_t* ids, const int64_t* counts, KVCache& cache, float* hidden,
                    const int64_t* logit_rows, int64_t n_logit_rows) {
    std::lock_guard<std::mutex> lock(busy_);
    const Config& c = config_;
    const int64_t E = c.n_embd, F = c.d_ff, H = c.n_head, dh = c.d_head(), R = c.n_rot;

    // Positions: a row's new tokens follow the tokens it already holds.
    int64_t n = 0, max_keys = 0;
    positions_.clear();
    for (int64_t r = 0; r < cache.batch(); ++r) {
        const int64_t start = cache.length(r);
        if (counts[r] < 0 || start + counts[r] > cache.max_tokens())
            throw std::invalid_argument("row " + std::to_string(r) + " holds " + std::to_string(start) + " tokens; " +
                                        std::to_string(counts[r]) + " more do not fit a cache of " +
                                        std::to_string(cache.max_tokens()));
        for (int64_t t = 0; t < counts[r]; ++t) positions_.push_back(start + t);
        n += counts[r];
        max_keys = std::max(max_keys, start + counts[r]);
    }
    if (logit_rows && (n_logit_rows < 0 || n_logit_rows > n))
        throw std::invalid_argument("asked for " + std::to_string(n_logit_rows) + " logit rows of " +
                                    std::to_string(n) + " new tokens");
    for (int64_t j = 0; logit_rows && j < n_logit_rows; ++j)
        if (logit_rows[j] < 0 || logit_rows[j] >= n)
            throw std::out_of_range("logit row " + std::to_string(logit_rows[j]) + " is outside the " +
                                    std::to_string(n) + " new tokens");
    for (int64_t i = 0; i < n; ++i)
        if (ids[i] < 0 || ids[i] >= c.n_vocab)
            throw std::out_of_range("token id " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                                    std::to_string(c.n_vocab) + ")");
    if (n == 0) return;

    kernels::set_num_threads(threads_);
    float* x = reserve_scratch(n, max_keys);
    float *h = x + n * E, *q = h + n * E, *k = q + n * E, *v = k + n * E, *att = v + n * E;
    float *a = att + n * E, *m = a + n * E, *f = m + n * E;
    attention_scratch_ = f + n * F;
    const int64_t* pos = positions_.data();
    auto keep = [&](int64_t i, const float* state) {
        if (hidden) std::memcpy(hidden + i * n * E, state, sizeof(float) * n * E);
    };

    // Embedding: each token's row of wte; GPT-J has no position embedding table.
    if (weights_.wte_q8) {
        // int8 rows: element j of row r is q[r, j] * scale[r, j / 32], exact in float32 (as quant.py).
        for (int64_t i = 0; i < n; ++i) {
            const int8_t* q = weights_.wte_q8 + ids[i] * E;
            const uint16_t* d = weights_.wte_q8_scale + ids[i] * (E / kernels::kQ8Block);
            for (int64_t j = 0; j < E; ++j)
                x[i * E + j] = static_cast<float>(q[j]) * kernels::f16_to_f32(d[j / kernels::kQ8Block]);
        }
    } else {
        for (int64_t i = 0; i < n; ++i) std::memcpy(x + i * E, weights_.wte + ids[i] * E, sizeof(float) * E);
    }
    keep(0, x);

    for (int64_t l = 0; l < c.n_layer; ++l) {
        const LayerWeights& L = weights_.layers[l];
        // ln_1: GPT-J's only LayerNorm in a block; attention and MLP both read its output h.
        kernels::layer_norm(h, x, L.ln_g, L.ln_b, n, E, c.eps);
        // Attention projections (no bias in GPT-J).
        in_h_.set(h, n, E);  // int8 weights: h is quantized once for q, k, v and fc_in
        apply_linear(q, in_h_, L.q);
        apply_linear(k, in_h_, L.k);
        apply_linear(v, in_h_, L.v);
        // Rotary on the first n_rot dims of every head, pairs (2i, 2i+1).
        kernels::rotary(q, weights_.sin, weights_.cos, pos, n, E, H, dh, R);
        kernels::rotary(k, weights_.sin, weights_.cos, pos, n, E, H, dh, R);
        // Append k, v to each row's cache; causal attention of each row over its own sequence.
        attention_block(att, q, k, v, l, counts, cache);
        // Output projection (no bias).
        in_att_.set(att, n, E);
        apply_linear(a, in_att_, L.out);
        // MLP on the same h: fc_in, gelu_new, fc_out.
        apply_linear(f, in_h_, L.fc_in);
        kernels::gelu_new(f, n * F);
        in_f_.set(f, n, F);
        apply_linear(m, in_f_, L.fc_out);
        // Parallel residual: x = (attn + mlp) + x.
        kernels::residual_add(x, a, m, n * E);
        keep(l + 1, x);
    }

    // Final LayerNorm, then lm_head (GPT-J's has a bias) straight into the caller's logits, for every
    // token or only the asked ones (gathered into q, free by now).
    kernels::layer_norm(h, x, weights_.ln_f_g, weights_.ln_f_b, n, E, c.eps);
    keep(c.n_layer + 1, h);
    if (logit_rows) {
        for (int64_t j = 0; j < n_logit_rows; ++j) std::memcpy(q + j * E, h + logit_rows[j] * E, sizeof(float) * E);
        in_h_.set(q, n_logit_rows, E);
    } else {
        in_h_.set(h, n, E);
    }
    if (in_h_.rows() > 0) apply_linear(logits, in_h_, weights_.lm_head);

    for (int64_t r = 0; r < cache.batch(); ++r) cache.set_length(r, cache.length(r) + counts[r]);
}

}  // namespace gptj::runtime
