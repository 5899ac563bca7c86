// The Python module _core: CPU levels, the formats table, and the model (each linear's weight in the
// format its file names: f32, q8, q4, ...). Arrays are taken without conversion (bindings_common.h); the
// GIL is released while C++ computes. The per-kernel functions for tests and benchmarks are
// bindings_kernels.cpp's.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "bindings_common.h"
#include "kernels/formats.h"
#include "kernels/kernels.h"
#include "kernels/q8.h"
#include "runtime/model.h"

namespace rt = gptj::runtime;
using namespace gptj::bindings;

namespace {

// The model plus the Python objects its weight views point into.
struct PyModel {
    std::unique_ptr<rt::Model> model;
    std::vector<py::object> keep_alive;
};

struct PyCache {
    std::unique_ptr<rt::KVCache> cache;
};

py::object weight_entry(const py::dict& weights, const std::string& key) {
    if (!weights.contains(key)) throw py::value_error("missing weight " + key);
    return weights[py::str(key)];
}

py::array as_array(const py::object& obj, const std::string& what) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(what + " is a " + std::string(py::str(py::type::of(obj).attr("__name__"))) +
                             ", expected a numpy.ndarray");
    return obj.cast<py::array>();
}

// How a model's linear weights are made ready: the thread count, and what to call with each stored array
// a level has packed into its own layout (release: e.g. hand a mapped file's pages back; may be None).
struct PackOptions {
    int threads = 1;
    py::object release;
};

// W (out, in) as a LinearWeight view in the format formats[name] names ("f32" when absent): weights[name]
// is the array for f32, the pair (values, scales) for a block format. With the bias when bias_name is given.
// Packed for the level in use when its kernel reads a layout of its own.
rt::LinearWeight linear_view(const py::dict& weights, const py::dict& formats, const std::string& name,
                             const std::string& bias_name, int64_t out, int64_t in, std::vector<py::object>& keep,
                             const PackOptions& pack) {
    rt::LinearWeight w;
    w.format = &k::weight_format(formats.contains(name) ? formats[py::str(name)].cast<std::string>() : "f32");
    w.out = out;
    w.in = in;
    py::object entry = weight_entry(weights, name);
    keep.push_back(entry);
    if (w.format->block > 1) {
        if (!py::isinstance<py::tuple>(entry) || py::len(entry) != 2)
            throw py::type_error("weight " + name + " is stored as " + w.format->name +
                                 ": pass the pair (values, scales)");
        const py::tuple pair = entry.cast<py::tuple>();
        w.data = weight_data(*w.format, as_array(pair[0], "weight " + name), pair[1], out, in, name);
        bool packed = false;
        with_threads(pack.threads, [&] { packed = rt::pack_for_level(w, k::isa()); });
        if (packed && !pack.release.is_none()) {
            pack.release(pair[0]);
            pack.release(pair[1]);
        }
    } else {
        w.data = weight_data(*w.format, as_array(entry, "weight " + name), py::none(), out, in, name);
    }
    if (!bias_name.empty()) {
        py::object bias = weight_entry(weights, bias_name);
        keep.push_back(bias);
        w.bias = in_ptr<float>(as_array(bias, "weight " + bias_name), "weight " + bias_name, {out});
    }
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

PyModel make_model(const py::dict& weights, const py::dict& formats, const py::array& sin, const py::array& cos,
                   const rt::Config& c, int threads, const py::object& release) {
    const std::string bad = c.check();
    if (!bad.empty()) throw py::value_error("inconsistent model sizes: " + bad);
    PyModel pm;
    auto& keep = pm.keep_alive;
    const PackOptions pack{std::max(1, threads), release};
    rt::Weights w;
    const int64_t E = c.n_embd, F = c.d_ff, V = c.n_vocab;
    const std::string wte = "transformer.wte.weight";
    const std::string wte_format = formats.contains(wte) ? formats[py::str(wte)].cast<std::string>() : "f32";
    if (wte_format == "q8") {  // int8 embedding rows (native file version 2), dequantized on lookup
        if (E % k::kQ8Block != 0) throw py::value_error("an int8 embedding needs n_embd to be a multiple of 32");
        py::object entry = weight_entry(weights, wte);
        if (!py::isinstance<py::tuple>(entry) || py::len(entry) != 2)
            throw py::type_error("weight " + wte + " is stored as q8: pass the pair (values, scales)");
        keep.push_back(entry);
        const py::tuple pair = entry.cast<py::tuple>();
        w.wte_q8 = in_ptr<int8_t>(as_array(pair[0], "int8 embedding"), "int8 embedding", {V, E});
        w.wte_q8_scale = in_ptr<uint16_t>(as_array(pair[1], "embedding scales"),
                                          "embedding scales (float16 viewed as uint16)", {V, E / k::kQ8Block});
    } else if (wte_format == "f32") {
        w.wte = vector_view(weights, wte, {V, E}, keep);
    } else {
        throw py::value_error("the embedding is stored as " + wte_format + "; the C++ model reads it as f32 or q8");
    }
    for (int64_t l = 0; l < c.n_layer; ++l) {
        const std::string p = "transformer.h." + std::to_string(l) + ".";
        rt::LayerWeights L;
        L.ln_g = vector_view(weights, p + "ln_1.weight", {E}, keep);
        L.ln_b = vector_view(weights, p + "ln_1.bias", {E}, keep);
        L.q = linear_view(weights, formats, p + "attn.q_proj.weight", "", E, E, keep, pack);
        L.k = linear_view(weights, formats, p + "attn.k_proj.weight", "", E, E, keep, pack);
        L.v = linear_view(weights, formats, p + "attn.v_proj.weight", "", E, E, keep, pack);
        L.out = linear_view(weights, formats, p + "attn.out_proj.weight", "", E, E, keep, pack);
        L.fc_in = linear_view(weights, formats, p + "mlp.fc_in.weight", p + "mlp.fc_in.bias", F, E, keep, pack);
        L.fc_out = linear_view(weights, formats, p + "mlp.fc_out.weight", p + "mlp.fc_out.bias", E, F, keep, pack);
        w.layers.push_back(L);
    }
    w.ln_f_g = vector_view(weights, "transformer.ln_f.weight", {E}, keep);
    w.ln_f_b = vector_view(weights, "transformer.ln_f.bias", {E}, keep);
    w.lm_head = linear_view(weights, formats, "lm_head.weight", "lm_head.bias", V, E, keep, pack);
    w.sin = in_ptr<float>(sin, "rotary sin table", {c.n_ctx, c.n_rot / 2});
    w.cos = in_ptr<float>(cos, "rotary cos table", {c.n_ctx, c.n_rot / 2});
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
    if (kv.n_layer() != c.n_layer || kv.n_head() != c.n_head || kv.d_head() != c.d_head() || kv.max_tokens() > c.n_ctx)
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
    py::array_t<float> logits({n_rows, c.n_vocab});
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
    m.doc() =
        "gptj_ref C++ core: the GPT-J runtime over a table of weight formats (f32, q8, q4) x CPU levels "
        "(scalar, avx2, avxvnni, avx512, amx), and its kernels one by one";

    // CPU levels and the formats table ----------------------------------------------------------
    m.def(
        "available_isas",
        [] {
            std::vector<std::string> names;
            for (int l = 0; l < k::kIsaCount; ++l)
                if (k::isa_supported(k::Isa(l))) names.push_back(k::isa_name(k::Isa(l)));
            return names;
        },
        "The CPU levels this build can run on this CPU, from the portable to the fastest");
    m.def(
        "set_isa", [](const std::string& name) { k::set_isa(parse_isa(name)); }, py::arg("isa"),
        "Use the kernels of this level from now on (process-wide): 'scalar', 'avx2', 'avxvnni', 'avx512' or 'amx'");
    m.def("isa", [] { return std::string(k::isa_name(k::isa())); }, "The CPU level in use");
    m.def(
        "weight_formats",
        [] {
            py::list out;
            for (const k::WeightFormat* f : k::weight_formats()) {
                std::vector<std::string> levels, packing;
                for (int l = 0; l < k::kIsaCount; ++l) {
                    if (f->linear[l].fn) levels.push_back(k::isa_name(k::Isa(l)));
                    if (f->linear[l].pack) packing.push_back(k::isa_name(k::Isa(l)));
                }
                py::dict d;
                d["name"] = f->name;
                d["version"] = f->version;
                d["block"] = f->block;
                d["bits"] = f->bits;
                d["levels"] = levels;
                d["packing_levels"] = packing;
                out.append(d);
            }
            return out;
        },
        "The formats table: per format its name, layout version, block, bits, the levels with a kernel of "
        "their own (built in; the CPU may lack some) and those of them whose kernel reads a layout of its own");

    bind_kernels(m);

    py::class_<rt::Config>(m, "Config", "Model sizes, with the reference's short names")
        .def(py::init([](int64_t n_vocab, int64_t n_ctx, int64_t n_embd, int64_t n_layer, int64_t n_head, int64_t n_rot,
                         int64_t d_ff, float eps) {
                 rt::Config c{n_vocab, n_ctx, n_embd, n_layer, n_head, n_rot, d_ff, eps};
                 const std::string bad = c.check();
                 if (!bad.empty()) throw py::value_error("inconsistent model sizes: " + bad);
                 return c;
             }),
             py::kw_only(), py::arg("n_vocab"), py::arg("n_ctx"), py::arg("n_embd"), py::arg("n_layer"),
             py::arg("n_head"), py::arg("n_rot"), py::arg("d_ff"), py::arg("eps"))
        .def_readonly("n_vocab", &rt::Config::n_vocab)
        .def_readonly("n_ctx", &rt::Config::n_ctx)
        .def_readonly("n_embd", &rt::Config::n_embd)
        .def_readonly("n_layer", &rt::Config::n_layer)
        .def_readonly("n_head", &rt::Config::n_head)
        .def_readonly("n_rot", &rt::Config::n_rot)
        .def_readonly("d_ff", &rt::Config::d_ff)
        .def_readonly("eps", &rt::Config::eps);

    // The model -------------------------------------------------------------------------------
    py::class_<PyCache>(m, "KVCache", "Keys and values of `batch` independent sequences")
        .def(
            py::init([](const PyModel& pm, int64_t batch, int64_t max_tokens, const std::string& dtype) {
                const rt::Config& c = pm.model->config();
                if (batch < 1 || max_tokens < 1 || max_tokens > c.n_ctx)
                    throw py::value_error("a cache needs batch >= 1 and 1 <= max_tokens <= " + std::to_string(c.n_ctx));
                if (dtype != "float32" && dtype != "float16")
                    throw py::value_error("a cache's dtype is 'float32' or 'float16', got '" + dtype + "'");
                const auto precision = dtype == "float16" ? rt::KVPrecision::F16 : rt::KVPrecision::F32;
                return PyCache{std::make_unique<rt::KVCache>(c, batch, max_tokens, precision)};
            }),
            py::arg("model"), py::arg("batch"), py::arg("max_tokens"), py::arg("dtype") = "float32")
        .def_property_readonly(
            "dtype",
            [](const PyCache& pc) {
                return std::string(pc.cache->precision() == rt::KVPrecision::F16 ? "float16" : "float32");
            },
            "Precision of the stored keys and values")
        .def_property_readonly(
            "nbytes", [](const PyCache& pc) { return pc.cache->nbytes(); },
            "Bytes of keys and values, all slots (pages are mapped as tokens are written)")
        .def_property_readonly("batch", [](const PyCache& pc) { return pc.cache->batch(); })
        .def_property_readonly("max_tokens", [](const PyCache& pc) { return pc.cache->max_tokens(); })
        .def_property_readonly("n_layer", [](const PyCache& pc) { return pc.cache->n_layer(); })
        .def_property_readonly("n_head", [](const PyCache& pc) { return pc.cache->n_head(); })
        .def_property_readonly("head_dim", [](const PyCache& pc) { return pc.cache->d_head(); })
        .def_property_readonly(
            "lengths",
            [](const PyCache& pc) {
                std::vector<int64_t> out(size_t(pc.cache->batch()));
                for (int64_t r = 0; r < pc.cache->batch(); ++r) out[size_t(r)] = pc.cache->length(r);
                return out;
            },
            "Tokens held by each row")
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
                const int64_t H = c.n_head(), n = c.length(row), dh = c.d_head(), S = c.max_tokens();
                const bool half = c.precision() == rt::KVPrecision::F16;
                py::array out(py::dtype(half ? "float16" : "float32"), std::vector<int64_t>{H, n, dh});
                auto copy = [&](const auto* block) {  // the row's (n_head, max_tokens, d_head) block
                    auto* dst =
                        static_cast<std::remove_const_t<std::remove_pointer_t<decltype(block)>>*>(out.mutable_data());
                    for (int64_t h = 0; h < H; ++h)
                        std::copy(block + h * S * dh, block + (h * S + n) * dh, dst + h * n * dh);
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
                const int64_t H = c.n_head(), dh = c.d_head(), S = c.max_tokens();
                auto copy = [&](auto* from, auto* to) {  // one (n_head, max_tokens, d_head) block per row
                    for (int64_t h = 0; h < H; ++h)
                        std::copy(from + h * S * dh, from + (h * S + n) * dh, to + h * S * dh);
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

    py::class_<PyModel>(m, "Model", "GPT-J over views of the given weight arrays")
        .def(py::init(&make_model), py::arg("weights"), py::arg("formats"), py::arg("sin").noconvert(),
             py::arg("cos").noconvert(), py::arg("config"), py::arg("threads"), py::arg("release") = py::none(),
             "weights: name -> array (f32) or (values, scales) (a block format); formats: linear weight name -> "
             "format name ('f32' when absent); sin, cos (n_ctx, n_rot/2) float32; release: called with each "
             "stored array the level in use packs into a layout of its own, or None")
        .def_property(
            "threads", [](const PyModel& pm) { return pm.model->threads(); },
            [](PyModel& pm, int t) {
                if (t < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(t));
                pm.model->set_threads(t);
            })
        .def(
            "forward",
            [](PyModel& pm, const py::array& ids, const py::array& counts, PyCache& cache,
               const py::object& logit_rows) {
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
