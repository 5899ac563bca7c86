// The GPT-J model in C++: Config -> Weights (views) -> KVCache + scratch -> forward.
//
// Weights are views of memory owned by the caller (NumPy arrays or a memory-mapped model file); nothing
// is copied. A KVCache holds `batch` independent sequences, each with its own length: batched calls
// pass the new tokens of every row concatenated, and the linears run over all of them at once, so a
// batched decode step reads each weight once for all rows.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/linear_weight.h"

namespace gptj::runtime {

struct Config {
    // The reference's short names; GPT-J 6B's values in brackets. (transformers' config names them
    // vocab_size, n_positions, n_embd, n_layer, n_head, rotary_dim, n_inner.)
    int64_t n_vocab = 0;  // rows of wte and lm_head            [50400]
    int64_t n_ctx = 0;    // context length, rows of sin/cos    [2048]
    int64_t n_embd = 0;   // model width                        [4096]
    int64_t n_layer = 0;  // blocks                             [28]
    int64_t n_head = 0;   // attention heads                    [16]
    int64_t n_rot = 0;    // rotated leading dims of each head  [64]
    int64_t d_ff = 0;     // MLP width                          [16384]
    float eps = 1e-5f;    // LayerNorm epsilon

    // Empty when the sizes are consistent, else what is wrong.
    std::string check() const;

    int64_t d_head() const { return n_embd / n_head; }
};

struct LayerWeights {
    const float* ln_g = nullptr;  // ln_1.weight (n_embd)
    const float* ln_b = nullptr;  // ln_1.bias (n_embd)
    LinearWeight q, k, v, out;    // attn.{q,k,v,out}_proj (n_embd, n_embd), no bias
    LinearWeight fc_in;           // mlp.fc_in (d_ff, n_embd) + bias
    LinearWeight fc_out;          // mlp.fc_out (n_embd, d_ff) + bias
};

struct Weights {
    const float* wte = nullptr;              // transformer.wte.weight (vocab_size, n_embd), or, in a q8 file:
    const int8_t* wte_q8 = nullptr;          //   its int8 rows (vocab_size, n_embd) and
    const uint16_t* wte_q8_scale = nullptr;  //   float16 scales (vocab_size, n_embd / 32), dequantized on lookup
    std::vector<LayerWeights> layers;
    const float* ln_f_g = nullptr;  // transformer.ln_f.weight (n_embd)
    const float* ln_f_b = nullptr;  // transformer.ln_f.bias (n_embd)
    LinearWeight lm_head;           // lm_head (n_vocab, n_embd) + bias
    const float* sin = nullptr;     // rotary table (n_ctx, n_rot / 2)
    const float* cos = nullptr;     // rotary table (n_ctx, n_rot / 2)
};

// Keys (after rotary) and values of `batch` sequences, each up to max_tokens long.
// Precision, chosen per cache: F32 or F16 (IEEE half, rounded to nearest-even when written, widened
// exactly when read). GPT-J 6B at the full 2048-token context needs 28 x 2 x 2048 x 4096 x 4 B = 1.9 GB
// in F32 and 0.94 GB in F16, and decode reads all of it once per token. The Python layer uses F16 for
// int8 models (next to int8 weights its rounding, ~2^-11 relative, is lost in the noise, and the
// reference emulates it exactly: Reference(kv_dtype=float16)) and F32 for fp32 models (exact parity).
// A cache holds only the tokens it was made for: generation asks new_cache(prompt + max_new_tokens).
// Layout: (n_layer, batch, n_head, max_tokens, d_head), one allocation per tensor, filled lazily.
enum class KVPrecision { F32, F16 };

class KVCache {
public:
    KVCache(const Config& config, int64_t batch, int64_t max_tokens, KVPrecision precision = KVPrecision::F32);

    int64_t batch() const { return batch_; }
    int64_t max_tokens() const { return max_tokens_; }
    int64_t n_layer() const { return n_layer_; }
    int64_t n_head() const { return n_head_; }
    int64_t d_head() const { return d_head_; }
    // Tokens held by row r.
    int64_t length(int64_t r) const { return length_[r]; }
    void set_length(int64_t r, int64_t n) { length_[r] = n; }
    KVPrecision precision() const { return precision_; }
    // Bytes of keys and values together, all slots.
    int64_t nbytes() const;
    // (n_head, max_tokens, d_head) block of layer l, row r, as stored: KV = float for F32, uint16_t
    // (float16 bits) for F16.
    template <typename KV>
    KV* keys(int64_t l, int64_t r) {
        return reinterpret_cast<KV*>(keys_.get()) + offset(l, r);
    }
    template <typename KV>
    KV* values(int64_t l, int64_t r) {
        return reinterpret_cast<KV*>(values_.get()) + offset(l, r);
    }

private:
    int64_t offset(int64_t l, int64_t r) const { return (l * batch_ + r) * row_elements_; }
    int64_t element_bytes() const { return precision_ == KVPrecision::F16 ? 2 : 4; }

    int64_t batch_, max_tokens_, row_elements_, n_layer_, n_head_, d_head_;
    KVPrecision precision_;
    std::unique_ptr<unsigned char[]> keys_, values_;  // element_bytes() per element
    std::vector<int64_t> length_;
};

class Model {
public:
    Model(const Config& config, Weights weights, int threads);

    const Config& config() const { return config_; }
    int threads() const { return threads_; }
    void set_threads(int threads) { threads_ = threads < 1 ? 1 : threads; }

    // Logits for new tokens of cache.batch() rows, appended to their cached sequences.
    // ids (n_tokens): the rows' new tokens concatenated, row 0 first; counts (cache.batch()): how many
    // belong to each row; logits (n_tokens, n_vocab) out. A token's position is its row's length so
    // far. hidden, when not null, receives (n_layer + 2, n_tokens, n_embd): the embeddings, the output
    // of every block, and the output of ln_f. logit_rows, when not null, lists the n_logit_rows tokens
    // (indices into ids) whose logits are wanted, and logits is (n_logit_rows, n_vocab): generation
    // needs only each row's last token, which saves lm_head's work and its (n_tokens, vocab) output on
    // prompts. Throws std::invalid_argument if a row would overflow or a logit row is out of range.
    void forward(float* logits, const int64_t* ids, const int64_t* counts, KVCache& cache, float* hidden = nullptr,
                 const int64_t* logit_rows = nullptr, int64_t n_logit_rows = 0);

private:
    void attention_block(float* att, const float* q, const float* k, const float* v, int64_t layer,
                         const int64_t* counts, KVCache& cache);
    float* reserve_scratch(int64_t n_tokens, int64_t max_keys);

    Config config_;
    Weights weights_;
    int threads_;
    std::mutex busy_;                     // one forward at a time: the scratch is shared
    std::vector<float> scratch_;          // activations of one call, grown on demand
    std::vector<int64_t> positions_;      // position of each new token
    float* attention_scratch_ = nullptr;  // the attention kernel's part of scratch_
    LinearInput in_h_, in_att_, in_f_;    // linear inputs h, att, f and their int8 blocks
};

}  // namespace gptj::runtime
