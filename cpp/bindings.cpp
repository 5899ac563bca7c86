// The only file that knows about Python: the kernels one by one (for tests and benchmarks) and the
// model (fp32 weights, or int8 weights + float16 scales from a q8 file). Arrays are taken without
// conversion: a wrong dtype, layout or shape raises with what was expected and what was found, instead
// of silently copying gigabytes. The GIL is released while C++ computes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/impl.h"
#include "kernels/kernels.h"
#include "kernels/q8.h"
#include "runtime/model.h"

namespace py = pybind11;
namespace k = gptj::kernels;
namespace rt = gptj::runtime;

namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "(";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << (shape.size() == 1 ? ",)" : ")");
    return s.str();
}

std::vector<int64_t> shape_of(const py::array& a) { return std::vector<int64_t>(a.shape(), a.shape() + a.ndim()); }

// Check a is a C-contiguous array of T with the given shape (-1 = any size on that axis).
template <typename T>
void check_array(const py::array& a, const std::string& what, const std::vector<int64_t>& shape) {
    if (!a.dtype().is(py::dtype::of<T>()))
        throw py::value_error(what + " has dtype " + std::string(py::str(a.dtype())) + ", expected " +
                              std::string(py::str(py::dtype::of<T>())) +
                              " (arrays are used in place, never converted)");
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(what + " is not C-contiguous; pass np.ascontiguousarray(...) (arrays are used in place)");
    bool same = int64_t(shape.size()) == a.ndim();
    for (size_t i = 0; same && i < shape.size(); ++i) same = shape[i] < 0 || shape[i] == a.shape(i);
    if (!same) throw py::value_error(what + " has shape " + shape_str(shape_of(a)) + ", expected " + shape_str(shape));
}

template <typename T>
const T* in_ptr(const py::array& a, const std::string& what, const std::vector<int64_t>& shape) {
    check_array<T>(a, what, shape);
    return static_cast<const T*>(a.data());
}

template <typename T>
T* out_ptr(py::array& a, const std::string& what, const std::vector<int64_t>& shape) {
    check_array<T>(a, what, shape);
    if (!a.writeable()) throw py::value_error(what + " is read-only");
    return static_cast<T*>(a.mutable_data());
}

// Runs f with `threads` kernel threads (when given), restoring the previous team size afterwards.
template <typename F>
void with_threads(std::optional<int> threads, F&& f) {
    const int before = k::max_threads();
    if (threads) k::set_num_threads(*threads);
    {
        py::gil_scoped_release release;
        f();
    }
    k::set_num_threads(before);
}

k::Isa parse_isa(const std::string& name) {
    if (name == "scalar") return k::Isa::Scalar;
    if (name == "avx2") return k::Isa::Avx2;
    if (name == "avxvnni") return k::Isa::AvxVnni;
    if (name == "amx") return k::Isa::Amx;
    throw py::value_error("unknown kernel ISA '" + name + "'; expected 'scalar', 'avx2', 'avxvnni' or 'amx'");
}

// attention / attention_f16kv on arrays: KV is float (an fp32 cache) or uint16_t (float16 bits).
template <typename KV>
py::array_t<float> attention_over_cache(const py::array& q, const py::array& kc, const py::array& vc, int64_t start,
                                        std::optional<int> threads) {
    const float* qp = in_ptr<float>(q, "q", {-1, -1, -1});
    const int64_t T = q.shape(0), H = q.shape(1), dh = q.shape(2);
    const KV* kp = in_ptr<KV>(kc, "k", {H, -1, dh});
    const int64_t S = kc.shape(1);
    const KV* vp = in_ptr<KV>(vc, "v", {H, S, dh});
    if (start < 0 || start + T > S) throw py::value_error("start + T must fit the cache's slots");
    py::array_t<float> out({T, H, dh});
    float* op = out.mutable_data();
    std::vector<float> scratch;
    with_threads(threads, [&] {
        scratch.resize(size_t(k::attention_scratch_floats(start + T)));
        if constexpr (std::is_same_v<KV, float>)
            k::attention(op, qp, kp, vp, scratch.data(), T, start, H, dh, S);
        else
            k::attention_f16kv(op, qp, kp, vp, scratch.data(), T, start, H, dh, S);
    });
    return out;
}

// The fp32 model plus the Python objects its weight views point into.
struct PyModel {
    std::unique_ptr<rt::Model> model;
    std::vector<py::object> keep_alive;
};

struct PyCache {
    std::unique_ptr<rt::KVCache> cache;
};

// W (out, in) from weights[name] as an fp32 LinearWeight view, with the bias when bias_name is given.
rt::LinearWeight linear_view(const py::dict& weights, const std::string& name, const std::string& bias_name,
                             int64_t out, int64_t in, std::vector<py::object>& keep) {
    auto get = [&](const std::string& key) -> py::array {
        if (!weights.contains(key)) throw py::value_error("missing weight " + key);
        py::object obj = weights[py::str(key)];
        if (!py::isinstance<py::array>(obj))
            throw py::type_error("weight " + key + " is a " + std::string(py::str(py::type::of(obj).attr("__name__"))) +
                                 ", expected a numpy.ndarray");
        keep.push_back(obj);
        return obj.cast<py::array>();
    };
    rt::LinearWeight w;
    w.out = out;
    w.in = in;
    const std::string scale = name + "_scale";  // present for the int8 weights of a q8 file
    if (weights.contains(scale)) {
        if (in % k::kQ8Block != 0)
            throw py::value_error("int8 weight " + name + " has " + std::to_string(in) + " inputs, not a multiple of 32");
        w.kind = rt::LinearWeight::Kind::Q8;
        w.q8 = in_ptr<int8_t>(get(name), "int8 weight " + name, {out, in});
        w.q8_scale = in_ptr<uint16_t>(get(scale), "scales " + scale + " (float16 viewed as uint16)",
                                      {out, in / k::kQ8Block});
    } else {
        w.f32 = in_ptr<float>(get(name), "weight " + name, {out, in});
    }
    if (!bias_name.empty()) w.bias = in_ptr<float>(get(bias_name), "weight " + bias_name, {out});
    return w;
}

const float* vector_view(const py::dict& weights, const std::string& name, std::vector<int64_t> shape,
                         std::vector<py::object>& keep) {
    if (!weights.contains(name)) throw py::value_error("missing weight " + name);
    py::object obj = weights[py::str(name)];
    if (!py::isinstance<py::array>(obj))
        throw py::type_error("weight " + name + " is a " + std::string(py::str(py::type::of(obj).attr("__name__"))) +
                             ", expected a numpy.ndarray");
    keep.push_back(obj);
    return in_ptr<float>(obj.cast<py::array>(), "weight " + name, shape);
}

PyModel make_model(const py::dict& weights, const py::array& sin, const py::array& cos, int64_t vocab_size,
                   int64_t n_positions, int64_t n_embd, int64_t n_layer, int64_t n_head, int64_t rotary_dim,
                   int64_t d_ff, float eps, int threads) {
    if (n_embd <= 0 || n_head <= 0 || n_embd % n_head || rotary_dim % 2 || rotary_dim > n_embd / n_head ||
        vocab_size <= 0 || n_positions <= 0 || n_layer <= 0 || d_ff <= 0)
        throw py::value_error("inconsistent model sizes");
    rt::Config c{vocab_size, n_positions, n_embd, n_layer, n_head, rotary_dim, d_ff, eps};
    PyModel pm;
    auto& keep = pm.keep_alive;
    rt::Weights w;
    const int64_t E = n_embd, F = d_ff, V = vocab_size;
    if (weights.contains("transformer.wte.weight_scale")) {   // a q8 file's int8 embedding rows
        if (E % k::kQ8Block != 0) throw py::value_error("an int8 embedding needs n_embd to be a multiple of 32");
        for (const char* name : {"transformer.wte.weight", "transformer.wte.weight_scale"})
            keep.push_back(weights[name]);
        w.wte_q8 = in_ptr<int8_t>(weights["transformer.wte.weight"].cast<py::array>(), "int8 embedding", {V, E});
        w.wte_q8_scale = in_ptr<uint16_t>(weights["transformer.wte.weight_scale"].cast<py::array>(),
                                          "embedding scales (float16 viewed as uint16)", {V, E / k::kQ8Block});
    } else {
        w.wte = vector_view(weights, "transformer.wte.weight", {V, E}, keep);
    }
    for (int64_t l = 0; l < n_layer; ++l) {
        const std::string p = "transformer.h." + std::to_string(l) + ".";
        rt::LayerWeights L;
        L.ln_g = vector_view(weights, p + "ln_1.weight", {E}, keep);
        L.ln_b = vector_view(weights, p + "ln_1.bias", {E}, keep);
        L.q = linear_view(weights, p + "attn.q_proj.weight", "", E, E, keep);
        L.k = linear_view(weights, p + "attn.k_proj.weight", "", E, E, keep);
        L.v = linear_view(weights, p + "attn.v_proj.weight", "", E, E, keep);
        L.out = linear_view(weights, p + "attn.out_proj.weight", "", E, E, keep);
        L.fc_in = linear_view(weights, p + "mlp.fc_in.weight", p + "mlp.fc_in.bias", F, E, keep);
        L.fc_out = linear_view(weights, p + "mlp.fc_out.weight", p + "mlp.fc_out.bias", E, F, keep);
        w.layers.push_back(L);
    }
    w.ln_f_g = vector_view(weights, "transformer.ln_f.weight", {E}, keep);
    w.ln_f_b = vector_view(weights, "transformer.ln_f.bias", {E}, keep);
    w.lm_head = linear_view(weights, "lm_head.weight", "lm_head.bias", V, E, keep);
    w.sin = in_ptr<float>(sin, "rotary sin table", {n_positions, rotary_dim / 2});
    w.cos = in_ptr<float>(cos, "rotary cos table", {n_positions, rotary_dim / 2});
    keep.push_back(sin);
    keep.push_back(cos);
    pm.model = std::make_unique<rt::Model>(c, std::move(w), threads);
    return pm;
}

// Runs the model on ids (n) split into rows by counts (batch); returns logits (n, vocab), or
// (len(logit_rows), vocab) for only the tokens logit_rows lists, and, when asked, the hidden states
// (n_layer + 2, n, n_embd).
py::tuple run_model(PyModel& pm, const py::array& ids, const py::array& counts, PyCache& pc, bool with_hidden,
                    const py::object& logit_rows = py::none()) {
    const rt::Config& c = pm.model->config();
    // A cache of another geometry would be indexed out of bounds (the Python layer refuses it first).
    const rt::KVCache& kv = *pc.cache;
    if (kv.n_layer() != c.n_layer || kv.n_head() != c.n_head || kv.head_dim() != c.head_dim() || kv.max_tokens() > c.n_ctx)
        throw py::value_error("the KV cache was made for a model of another geometry");
    const int64_t* id = in_ptr<int64_t>(ids, "token ids", {-1});
    const int64_t* cnt = in_ptr<int64_t>(counts, "counts", {pc.cache->batch()});
    int64_t total = 0;
    for (int64_t r = 0; r < pc.cache->batch(); ++r) total += cnt[r];
    if (total != ids.shape(0))
        throw py::value_error("counts add up to " + std::to_string(total) + " tokens but " +
                              std::to_string(ids.shape(0)) + " ids were given");
    const int64_t n = ids.shape(0);
    const int64_t* rows = nullptr;
    int64_t n_rows = n;
    py::array rows_array;
    if (!logit_rows.is_none()) {
        rows_array = py::reinterpret_borrow<py::array>(logit_rows);
        rows = in_ptr<int64_t>(rows_array, "logit rows", {-1});
        n_rows = rows_array.shape(0);
    }
    py::array_t<float> logits({n_rows, c.vocab_size});
    py::object hidden = py::none();
    float* hidden_ptr = nullptr;
    if (with_hidden) {
        py::array_t<float> h({c.n_layer + 2, n, c.n_embd});
        hidden_ptr = h.mutable_data();
        hidden = h;
    }
    float* out = logits.mutable_data();
    {
        py::gil_scoped_release release;
        pm.model->forward(out, id, cnt, *pc.cache, hidden_ptr, rows, rows ? n_rows : 0);
    }
    return py::make_tuple(logits, hidden);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "gptj_ref C++ core: fp32 and int8 kernels (scalar and AVX2) and the GPT-J runtime (fp32 or q8 weights)";

    // Kernel implementation and threads ---------------------------------------------------------
    m.def("avx2_supported", &k::avx2_supported, "True when the AVX2+FMA kernels are compiled in and the CPU has them");
    m.def(
        "available_isas",
        [] {
            std::vector<std::string> names{"scalar"};
            if (k::avx2_supported()) names.push_back("avx2");
            if (k::avxvnni_supported()) names.push_back("avxvnni");
            if (k::amx_supported()) names.push_back("amx");
            return names;
        },
        "The kernel implementations this build can run on this CPU, from the portable to the fastest");
    m.def("set_isa", [](const std::string& name) { k::set_isa(parse_isa(name)); }, py::arg("isa"),
          "Use the 'scalar', 'avx2', 'avxvnni' or 'amx' kernels from now on (process-wide)");
    m.def("isa", [] { return std::string(k::isa_name(k::isa())); }, "The kernel implementation in use");
    m.def("max_threads", &k::max_threads, "Default kernel team size for the calling thread");
    m.attr("LINEAR_BLOCK_K") = k::kLinearBlockK;

    // Kernels, each returning a new array (threads=None keeps the default team size) -------------
    m.def(
        "linear",
        [](const py::array& x, const py::array& w, std::optional<py::array> b, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            const float* wp = in_ptr<float>(w, "w", {-1, K});
            const int64_t N = w.shape(0);
            const float* bp = b ? in_ptr<float>(*b, "b", {N}) : nullptr;
            py::array_t<float> y({M, N});
            float* yp = y.mutable_data();
            with_threads(threads, [&] { k::linear(yp, xp, wp, bp, M, N, K); });
            return y;
        },
        py::arg("x").noconvert(), py::arg("w").noconvert(), py::arg("b").noconvert() = py::none(),
        py::arg("threads") = py::none(), "y = x @ w.T + b.  x (M, K), w (N, K), b (N) or None -> y (M, N)");
    m.def(
        "layer_norm",
        [](const py::array& x, const py::array& g, const py::array& b, float eps, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), N = x.shape(1);
            const float* gp = in_ptr<float>(g, "weight", {N});
            const float* bp = in_ptr<float>(b, "bias", {N});
            py::array_t<float> y({M, N});
            float* yp = y.mutable_data();
            with_threads(threads, [&] { k::layer_norm(yp, xp, gp, bp, M, N, eps); });
            return y;
        },
        py::arg("x").noconvert(), py::arg("weight").noconvert(), py::arg("bias").noconvert(), py::arg("eps"),
        py::arg("threads") = py::none(), "Row-wise LayerNorm.  x (M, N), weight, bias (N) -> (M, N)");
    m.def(
        "gelu_new",
        [](const py::array& x, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1});
            const int64_t n = x.shape(0);
            py::array_t<float> y(n);
            float* yp = y.mutable_data();
            std::copy(xp, xp + n, yp);
            with_threads(threads, [&] { k::gelu_new(yp, n); });
            return y;
        },
        py::arg("x").noconvert(), py::arg("threads") = py::none(), "gelu_new (tanh approximation).  x (n) -> (n)");
    m.def(
        "softmax",
        [](const py::array& x, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), N = x.shape(1);
            if (N == 0) throw py::value_error("softmax needs at least one column");
            py::array_t<float> y({M, N});
            float* yp = y.mutable_data();
            with_threads(threads, [&] { k::softmax(yp, xp, M, N); });
            return y;
        },
        py::arg("x").noconvert(), py::arg("threads") = py::none(), "Row-wise softmax.  x (M, N) -> (M, N)");
    m.def(
        "residual_add",
        [](const py::array& x, const py::array& a, const py::array& mm, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1});
            const int64_t n = x.shape(0);
            const float* ap = in_ptr<float>(a, "a", {n});
            const float* mp = in_ptr<float>(mm, "m", {n});
            py::array_t<float> y(n);
            float* yp = y.mutable_data();
            std::copy(xp, xp + n, yp);
            with_threads(threads, [&] { k::residual_add(yp, ap, mp, n); });
            return y;
        },
        py::arg("x").noconvert(), py::arg("a").noconvert(), py::arg("m").noconvert(), py::arg("threads") = py::none(),
        "(a + m) + x.  x, a, m (n) -> (n)");
    m.def(
        "rotary",
        [](const py::array& x, const py::array& sin, const py::array& cos, const py::array& pos, int64_t n_head,
           int64_t n_rot, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1, -1});
            const int64_t T = x.shape(0), width = x.shape(1);
            if (n_head <= 0 || width % n_head || n_rot % 2 || n_rot > width / n_head || n_rot < 0)
                throw py::value_error("need n_head dividing the width and an even n_rot <= head width");
            const float* sp = in_ptr<float>(sin, "sin", {-1, n_rot / 2});
            const float* cp = in_ptr<float>(cos, "cos", {sin.shape(0), n_rot / 2});
            const int64_t* pp = in_ptr<int64_t>(pos, "pos", {T});
            for (int64_t t = 0; t < T; ++t)
                if (pp[t] < 0 || pp[t] >= sin.shape(0)) throw py::value_error("position outside the sin/cos tables");
            py::array_t<float> y({T, width});
            float* yp = y.mutable_data();
            std::copy(xp, xp + T * width, yp);
            with_threads(threads, [&] { k::rotary(yp, sp, cp, pp, T, width, n_head, width / n_head, n_rot); });
            return y;
        },
        py::arg("x").noconvert(), py::arg("sin").noconvert(), py::arg("cos").noconvert(), py::arg("pos").noconvert(),
        py::arg("n_head"), py::arg("n_rot"), py::arg("threads") = py::none(),
        "Interleaved rotary on the first n_rot dims of each head.  x (T, n_head*d_head), sin, cos (n_ctx, n_rot/2), "
        "pos (T) int64 -> (T, n_head*d_head)");
    m.def("attention", &attention_over_cache<float>, py::arg("q").noconvert(), py::arg("k").noconvert(),
          py::arg("v").noconvert(), py::arg("start"), py::arg("threads") = py::none(),
          "Causal attention of T queries in slots [start, start+T) over cache slots [0, start+T).  "
          "q (T, n_head, d_head), k, v (n_head, max_tokens, d_head) -> (T, n_head, d_head)");
    m.def("attention_f16kv", &attention_over_cache<uint16_t>, py::arg("q").noconvert(), py::arg("k").noconvert(),
          py::arg("v").noconvert(), py::arg("start"), py::arg("threads") = py::none(),
          "attention() over a float16 cache: k, v (n_head, max_tokens, d_head) uint16 (float16 bits: pass "
          "k.view(np.uint16)); widened exactly, so it equals attention() on k.astype(np.float32)");
    m.def(
        "f32_to_f16",
        [](const py::array& x) {
            const float* xp = in_ptr<float>(x, "x", {-1});
            py::array_t<uint16_t> y(x.shape(0));
            uint16_t* yp = y.mutable_data();
            {
                py::gil_scoped_release release;
                k::f32_to_f16(yp, xp, x.shape(0));
            }
            return y;
        },
        py::arg("x").noconvert(),
        "float32 -> float16 bits, rounded to nearest-even as x.astype(np.float16).view(np.uint16).  x (n) -> (n)");
    m.def(
        "stream_read",
        [](const py::array& x, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1});
            double total = 0;
            with_threads(threads, [&] { total = k::stream_read(xp, x.shape(0)); });
            return total;
        },
        py::arg("x").noconvert(), py::arg("threads") = py::none(),
        "Sum of x read once with streaming loads (a memory-bandwidth probe).  x (n) -> float");

    // int8 kernels (q8 format, see cpp/kernels/q8.h) --------------------------------------------
    m.attr("Q8_BLOCK") = k::kQ8Block;
    m.def(
        "q8_quantize_activations",
        [](const py::array& x, std::optional<int> threads) {
            const float* xp = in_ptr<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            if (K % k::kQ8Block != 0)
                throw py::value_error("x has " + std::to_string(K) + " columns, expected a multiple of 32");
            py::array_t<int8_t> qx({M, K});
            py::array_t<float> dx({M, K / k::kQ8Block});
            int8_t* qp = qx.mutable_data();
            float* dp = dx.mutable_data();
            with_threads(threads, [&] { k::quantize_activations(qp, dp, xp, M, K); });
            return py::make_tuple(qx, dx);
        },
        py::arg("x").noconvert(), py::arg("threads") = py::none(),
        "Per-token int8 blocks of 32, as quant.quantize_activations.  x (M, K) float32 -> (qx (M, K) int8, "
        "dx (M, K/32) float32)");
    m.def(
        "q8_linear",
        [](const py::array& qx, const py::array& dx, const py::array& w, const py::array& scales,
           std::optional<py::array> b, std::optional<int> threads) {
            const int8_t* qp = in_ptr<int8_t>(qx, "qx", {-1, -1});
            const int64_t M = qx.shape(0), K = qx.shape(1);
            if (K % k::kQ8Block != 0)
                throw py::value_error("qx has " + std::to_string(K) + " columns, expected a multiple of 32");
            const float* dp = in_ptr<float>(dx, "dx", {M, K / k::kQ8Block});
            const int8_t* wp = in_ptr<int8_t>(w, "w", {-1, K});
            const int64_t N = w.shape(0);
            const uint16_t* sp = in_ptr<uint16_t>(scales, "scales (float16 viewed as uint16)", {N, K / k::kQ8Block});
            const float* bp = b ? in_ptr<float>(*b, "b", {N}) : nullptr;
            py::array_t<float> y({M, N});
            float* yp = y.mutable_data();
            with_threads(threads, [&] { k::q8_linear(yp, qp, dp, wp, sp, bp, M, N, K); });
            return y;
        },
        py::arg("qx").noconvert(), py::arg("dx").noconvert(), py::arg("w").noconvert(),
        py::arg("scales").noconvert(), py::arg("b").noconvert() = py::none(), py::arg("threads") = py::none(),
        "y = x @ W.T + b on int8 blocks.  qx (M, K) int8, dx (M, K/32) float32, w (N, K) int8, "
        "scales (N, K/32) uint16 (float16 bits: pass scales.view(np.uint16)), b (N) or None -> y (M, N)");

    // The fp32 runtime ---------------------------------------------------------------------------
    py::class_<PyCache>(m, "KVCache", "Keys and values of `batch` independent sequences")
        .def(py::init([](const PyModel& pm, int64_t batch, int64_t max_tokens, const std::string& dtype) {
                 const rt::Config& c = pm.model->config();
                 if (batch < 1 || max_tokens < 1 || max_tokens > c.n_ctx)
                     throw py::value_error("a cache needs batch >= 1 and 1 <= max_tokens <= " + std::to_string(c.n_ctx));
                 if (dtype != "float32" && dtype != "float16")
                     throw py::value_error("a cache's dtype is 'float32' or 'float16', got '" + dtype + "'");
                 const auto precision = dtype == "float16" ? rt::KVPrecision::F16 : rt::KVPrecision::F32;
                 return PyCache{std::make_unique<rt::KVCache>(c, batch, max_tokens, precision)};
             }),
             py::arg("model"), py::arg("batch"), py::arg("max_tokens"), py::arg("dtype") = "float32")
        .def_property_readonly("dtype", [](const PyCache& pc) {
            return std::string(pc.cache->precision() == rt::KVPrecision::F16 ? "float16" : "float32");
        }, "Precision of the stored keys and values")
        .def_property_readonly("nbytes", [](const PyCache& pc) { return pc.cache->nbytes(); },
                               "Bytes of keys and values, all slots (pages are mapped as tokens are written)")
        .def_property_readonly("batch", [](const PyCache& pc) { return pc.cache->batch(); })
        .def_property_readonly("max_tokens", [](const PyCache& pc) { return pc.cache->max_tokens(); })
        .def_property_readonly("n_layer", [](const PyCache& pc) { return pc.cache->n_layer(); })
        .def_property_readonly("n_head", [](const PyCache& pc) { return pc.cache->n_head(); })
        .def_property_readonly("head_dim", [](const PyCache& pc) { return pc.cache->head_dim(); })
        .def_property_readonly("lengths", [](const PyCache& pc) {
            std::vector<int64_t> out(size_t(pc.cache->batch()));
            for (int64_t r = 0; r < pc.cache->batch(); ++r) out[size_t(r)] = pc.cache->length(r);
            return out;
        }, "Tokens held by each row")
        .def(
            "reset_row",
            [](PyCache& pc, int64_t row) {
                if (row < 0 || row >= pc.cache->batch())
                    throw py::index_error("row " + std::to_string(row) + " is outside the cache's " +
                                          std::to_string(pc.cache->batch()) + " rows");
                pc.cache->set_length(row, 0);
            },
            py::arg("row"), "Empty row `row` (its length becomes 0) so a new sequence can start there")
        .def(
            "stored",
            [](PyCache& pc, const std::string& which, int64_t layer, int64_t row) {
                rt::KVCache& c = *pc.cache;
                if (which != "keys" && which != "values") throw py::value_error("which is 'keys' or 'values'");
                if (layer < 0 || layer >= c.n_layer() || row < 0 || row >= c.batch())
                    throw py::index_error("layer " + std::to_string(layer) + ", row " + std::to_string(row) +
                                          " is outside the cache's " + std::to_string(c.n_layer()) + " layers x " +
                                          std::to_string(c.batch()) + " rows");
                const int64_t H = c.n_head(), n = c.length(row), dh = c.head_dim(), S = c.max_tokens();
                const bool half = c.precision() == rt::KVPrecision::F16;
                py::array out(py::dtype(half ? "float16" : "float32"), std::vector<int64_t>{H, n, dh});
                auto copy = [&](const auto* block) {  // the row's (n_head, max_tokens, head_dim) block
                    auto* dst = static_cast<std::remove_const_t<std::remove_pointer_t<decltype(block)>>*>(out.mutable_data());
                    for (int64_t h = 0; h < H; ++h) std::copy(block + h * S * dh, block + (h * S + n) * dh, dst + h * n * dh);
                };
                if (half)
                    copy(which == "keys" ? c.keys<uint16_t>(layer, row) : c.values<uint16_t>(layer, row));
                else
                    copy(which == "keys" ? c.keys<float>(layer, row) : c.values<float>(layer, row));
                return out;
            },
            py::arg("which"), py::arg("layer"), py::arg("row") = 0,
            "A copy of the keys or values row `row` holds in layer `layer`: (n_head, length, head_dim), float32 or "
            "float16 as stored (keys after rotary)")
        .def(
            "copy_row",
            [](PyCache& pc, int64_t src, int64_t dst, int64_t n) {
                rt::KVCache& c = *pc.cache;
                if (src < 0 || src >= c.batch() || dst < 0 || dst >= c.batch())
                    throw py::index_error("rows " + std::to_string(src) + ", " + std::to_string(dst) +
                                          " are not both in the cache's " + std::to_string(c.batch()) + " rows");
                if (n < 0 || n > c.length(src))
                    throw py::value_error("row " + std::to_string(src) + " holds " + std::to_string(c.length(src)) +
                                          " tokens; cannot copy " + std::to_string(n));
                const int64_t H = c.n_head(), dh = c.head_dim(), S = c.max_tokens();
                auto copy = [&](auto* from, auto* to) {  // one (n_head, max_tokens, head_dim) block per row
                    for (int64_t h = 0; h < H; ++h) std::copy(from + h * S * dh, from + (h * S + n) * dh, to + h * S * dh);
                };
                if (src != dst)
                    for (int64_t l = 0; l < c.n_layer(); ++l) {
                        if (c.precision() == rt::KVPrecision::F16) {
                            copy(c.keys<uint16_t>(l, src), c.keys<uint16_t>(l, dst));
                            copy(c.values<uint16_t>(l, src), c.values<uint16_t>(l, dst));
                        } else {
                            copy(c.keys<float>(l, src), c.keys<float>(l, dst));
                            copy(c.values<float>(l, src), c.values<float>(l, dst));
                        }
                    }
                c.set_length(dst, n);
            },
            py::arg("src"), py::arg("dst"), py::arg("n"),
            "Row dst becomes the first n tokens of row src (n <= src's length): a shared prefix is computed once "
            "and each row then continues it. src == dst keeps the first n tokens (rewinds the row)");

    py::class_<PyModel>(m, "Model", "GPT-J in fp32 over views of the given weight arrays")
        .def(py::init(&make_model), py::arg("weights"), py::arg("sin").noconvert(), py::arg("cos").noconvert(),
             py::kw_only(), py::arg("vocab_size"), py::arg("n_positions"), py::arg("n_embd"), py::arg("n_layer"),
             py::arg("n_head"), py::arg("rotary_dim"), py::arg("d_ff"), py::arg("eps"), py::arg("threads"))
        .def_property(
            "threads", [](const PyModel& pm) { return pm.model->threads(); },
            [](PyModel& pm, int t) {
                if (t < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(t));
                pm.model->set_threads(t);
            })
        .def(
            "forward",
            [](PyModel& pm, const py::array& ids, const py::array& counts, PyCache& cache, const py::object& logit_rows) {
                if (!logit_rows.is_none() && !py::isinstance<py::array>(logit_rows))
                    throw py::type_error("logit_rows must be an int64 numpy array or None");
                return py::object(run_model(pm, ids, counts, cache, false, logit_rows)[0]);
            },
            py::arg("ids").noconvert(), py::arg("counts").noconvert(), py::arg("cache"),
            py::arg("logit_rows") = py::none(),
            "Logits (n, vocab) for ids (n) int64: the new tokens of every cache row concatenated, counts (batch) "
            "int64 of them per row. logit_rows (m) int64, if given, selects the tokens (indices into ids) whose "
            "logits are computed and returned: (m, vocab)")
        .def(
            "forward_hidden",
            [](PyModel& pm, const py::array& ids, const py::array& counts, PyCache& cache) {
                return run_model(pm, ids, counts, cache, true);
            },
            py::arg("ids").noconvert(), py::arg("counts").noconvert(), py::arg("cache"),
            "(logits (n, vocab), hidden (n_layer + 2, n, n_embd)): as forward, plus the embeddings, every block's "
            "output and ln_f's output");
}
