// Bindings of the kernels one by one, for tests and benchmarks: each takes NumPy arrays in place and
// returns a new array; threads=None keeps the default team size. The model's binding is bindings.cpp.
#include <pybind11/stl.h>

#include <algorithm>
#include <type_traits>

#include "bindings_common.h"
#include "kernels/formats.h"
#include "kernels/q8.h"
#include "runtime/linear_weight.h"

namespace gptj::bindings {

namespace {

// A linear layer as a built model holds it (runtime/linear_weight.h), for benchmarks and tests of the
// packed layouts: packed once, when made, for the level then in use.
struct PyLinear {
    gptj::runtime::LinearWeight weight;
    py::object values, scales;  // the stored arrays the weight views
};

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

}  // namespace

void bind_kernels(py::module_& m) {
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
            static const k::WeightFormat& q8 = k::weight_format("q8");
            k::LinearInputs in;
            in.qx = qp, in.dx = dp, in.M = M, in.K = K;
            with_threads(threads, [&] { k::format_linear(yp, in, k::WeightData{wp, sp}, bp, N, q8); });
            return y;
        },
        py::arg("qx").noconvert(), py::arg("dx").noconvert(), py::arg("w").noconvert(), py::arg("scales").noconvert(),
        py::arg("b").noconvert() = py::none(), py::arg("threads") = py::none(),
        "y = x @ W.T + b on int8 blocks.  qx (M, K) int8, dx (M, K/32) float32, w (N, K) int8, "
        "scales (N, K/32) uint16 (float16 bits: pass scales.view(np.uint16)), b (N) or None -> y (M, N)");

    // Any row of the formats table ------------------------------------------------------------------
    m.def(
        "format_linear",
        [](const std::string& format, const py::array& x, const py::array& values, const py::object& scales,
           std::optional<py::array> b, std::optional<int> threads) {
            const k::WeightFormat& f = k::weight_format(format);
            const float* xp = in_ptr<float>(x, "x", {-1, -1});
            const int64_t M = x.shape(0), K = x.shape(1);
            const int64_t N = values.ndim() == 2 ? values.shape(0) : -1;
            const k::WeightData w = weight_data(f, values, scales, N, K, "w");
            const float* bp = b ? in_ptr<float>(*b, "b", {N}) : nullptr;
            py::array_t<float> y({M, N});
            float* yp = y.mutable_data();
            with_threads(threads, [&] {
                std::vector<int8_t> qx;
                std::vector<float> dx;
                k::LinearInputs in;
                in.x = xp, in.M = M, in.K = K;
                if (f.activations == k::Activations::Q8Blocks) {
                    qx.resize(size_t(M * K));
                    dx.resize(size_t(M * K / k::kQ8Block));
                    k::quantize_activations(qx.data(), dx.data(), xp, M, K);
                    in.qx = qx.data(), in.dx = dx.data();
                }
                k::format_linear(yp, in, w, bp, N, f);
            });
            return y;
        },
        py::arg("format"), py::arg("x").noconvert(), py::arg("values").noconvert(),
        py::arg("scales").noconvert() = py::none(), py::arg("b").noconvert() = py::none(),
        py::arg("threads") = py::none(),
        "y = x @ W.T + b with the kernel the formats table resolves for `format` at the level in use (activations "
        "prepared as the format reads them).  x (M, K) float32; values, scales as stored (scales as uint16 bits); "
        "b (N) or None -> y (M, N)");
    py::class_<PyLinear>(m, "Linear",
                         "y = x @ W.T for one weight held as a model holds it: packed once, when made, for the "
                         "level then in use if its kernel reads a layout of its own")
        .def(py::init([](const std::string& format, const py::array& values, const py::object& scales) {
                 PyLinear l;
                 gptj::runtime::LinearWeight& w = l.weight;
                 w.format = &k::weight_format(format);
                 if (values.ndim() != 2) throw py::value_error("values must be 2-D: (N, a row as stored)");
                 w.out = values.shape(0);
                 w.in = values.shape(1) * 8 * int64_t(values.itemsize()) / w.format->bits;  // values per row
                 w.data = weight_data(*w.format, values, scales, w.out, w.in, "w");
                 l.values = values;
                 l.scales = scales;
                 gptj::runtime::pack_for_level(w, k::isa());
                 return l;
             }),
             py::arg("format"), py::arg("values").noconvert(), py::arg("scales").noconvert() = py::none())
        .def_property_readonly("packed_level",
                               [](const PyLinear& l) -> std::optional<std::string> {
                                   if (!l.weight.packed.storage) return std::nullopt;
                                   return std::string(k::isa_name(l.weight.packed_level));
                               })
        .def(
            "__call__",
            [](const PyLinear& l, const py::array& x, std::optional<int> threads) {
                const float* xp = in_ptr<float>(x, "x", {-1, l.weight.in});
                const int64_t M = x.shape(0);
                py::array_t<float> y({M, l.weight.out});
                float* yp = y.mutable_data();
                with_threads(threads, [&] {
                    gptj::runtime::LinearInput in;
                    in.set(xp, M, l.weight.in);
                    gptj::runtime::apply_linear(yp, in, l.weight);
                });
                return y;
            },
            py::arg("x").noconvert(), py::arg("threads") = py::none(), "x (M, K) float32 -> y (M, N)");
    m.def(
        "resolve_level",
        [](const std::string& format, const std::string& isa, int64_t M) {
            return std::string(k::isa_name(k::resolve_level(k::weight_format(format), parse_isa(isa), M)));
        },
        py::arg("format"), py::arg("isa"), py::arg("tokens"),
        "The level whose kernel runs `tokens` tokens of `format` when `isa` is in use");
}

}  // namespace gptj::bindings
