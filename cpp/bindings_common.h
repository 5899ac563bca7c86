// What both binding files share: taking NumPy arrays in place, with errors that say what was expected
// and what was found (never a silent conversion of gigabytes), and running C++ with the GIL released.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/formats.h"
#include "kernels/kernels.h"

namespace gptj::bindings {

namespace py = pybind11;
namespace k = gptj::kernels;

inline std::string shape_str(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "(";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << (shape.size() == 1 ? ",)" : ")");
    return s.str();
}

inline std::vector<int64_t> shape_of(const py::array& a) {
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

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
    const int before = k::num_threads();
    if (threads) k::set_num_threads(*threads);
    {
        py::gil_scoped_release release;
        f();
    }
    k::set_num_threads(before);
}

inline k::Isa parse_isa(const std::string& name) {
    for (int l = 0; l < k::kIsaCount; ++l)
        if (name == k::isa_name(k::Isa(l))) return k::Isa(l);
    throw py::value_error("unknown kernel ISA '" + name + "'; expected scalar, avx2, avxvnni, avx512 or amx");
}

// A weight W (N, K) stored in `format`: values (N, K * bits / 8) of float32 (32 bits), int8 (8) or uint8
// (4: two values a byte), and for block formats scales (N, K / block) uint16 (float16 bits). N < 0: any.
inline k::WeightData weight_data(const k::WeightFormat& f, const py::array& values, const py::object& scales, int64_t N,
                                 int64_t K, const std::string& what) {
    const std::string name = std::string(f.name) + " weight " + what;
    if (f.block > 1 && K % f.block != 0)
        throw py::value_error(name + " has " + std::to_string(K) + " inputs, not a multiple of its block " +
                              std::to_string(f.block));
    k::WeightData w;
    if (f.bits == 32)
        w.values = in_ptr<float>(values, name, {N, K});
    else if (f.bits == 8)
        w.values = in_ptr<int8_t>(values, name, {N, K});
    else if (f.bits == 4)
        w.values = in_ptr<uint8_t>(values, name + " (two 4-bit values a byte)", {N, K / 2});
    else
        throw py::value_error("format " + std::string(f.name) + " has no binding for " + std::to_string(f.bits) +
                              "-bit values");
    if (f.block > 1) {
        if (!py::isinstance<py::array>(scales)) throw py::value_error(name + " needs its block scales as an array");
        const int64_t rows = values.shape(0);
        w.scales = in_ptr<uint16_t>(py::reinterpret_borrow<py::array>(scales),
                                    "scales of " + name + " (float16 viewed as uint16)", {rows, f.scales_per_row(K)});
    }
    return w;
}

// The per-kernel functions (bindings_kernels.cpp), for tests and benchmarks.
void bind_kernels(py::module_& m);

}  // namespace gptj::bindings
