// Bindings for the pooling kernels. Input checks (rank, dtype policy, NaN,
// sizes) live in microtex/features/pooling.py and vlad.py; this layer only dispatches on dtype,
// reads pointers with the GIL held and runs the kernel without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/cpu.hpp"
#include "microtex/pooling/gram.hpp"
#include "microtex/pooling/mean_max.hpp"
#include "microtex/pooling/vlad.hpp"

namespace py = pybind11;
using microtex::detail::Activations;

namespace {

Activations view_activations(const py::array& x) {
    if (x.ndim() != 4) throw std::invalid_argument("activations must be 4-D (n, c, h, w)");
    return Activations{static_cast<const char*>(x.data()), x.shape(0), x.shape(1), x.shape(2),
                       x.shape(3), x.strides(0), x.strides(1), x.strides(2), x.strides(3)};
}

template <class F>
py::object dispatch(const py::array& x, F&& f) {
    if (x.dtype().equal(py::dtype::of<float>())) return f(float{});
    if (x.dtype().equal(py::dtype::of<double>())) return f(double{});
    throw py::type_error("unsupported activation dtype " + std::string(py::str(x.dtype())) +
                         " (expected float32 or float64)");
}

py::object mean_max_pool(const py::array& x, bool want_mean, bool want_max, int n_threads) {
    const Activations a = view_activations(x);
    return dispatch(x, [&](auto tag) -> py::object {
        using T = decltype(tag);
        py::array_t<T> mean(want_mean ? std::vector<py::ssize_t>{a.n, a.c} : std::vector<py::ssize_t>{0});
        py::array_t<T> mx(want_max ? std::vector<py::ssize_t>{a.n, a.c} : std::vector<py::ssize_t>{0});
        T* mean_ptr = want_mean ? mean.mutable_data() : nullptr;
        T* max_ptr = want_max ? mx.mutable_data() : nullptr;
        {
            py::gil_scoped_release release;
            microtex::detail::mean_max_pool<T>(a, mean_ptr, max_ptr, n_threads);
        }
        return py::make_tuple(want_mean ? py::object(mean) : py::none(),
                              want_max ? py::object(mx) : py::none());
    });
}

py::object gram(const py::array& x, const std::string& normalization, const std::string& layout,
                int n_threads) {
    const Activations a = view_activations(x);
    const auto norm = microtex::detail::parse_gram_normalization(normalization);
    if (layout != "full" && layout != "triu")
        throw std::invalid_argument("unknown Gram layout '" + layout + "' (expected 'full' or 'triu')");
    const bool triu = layout == "triu";
    return dispatch(x, [&](auto tag) -> py::object {
        using T = decltype(tag);
        py::array_t<T> out({a.n, microtex::detail::gram_features(a.c, triu)});
        T* ptr = out.mutable_data();
        {
            py::gil_scoped_release release;
            microtex::detail::gram<T>(a, norm, triu, ptr, n_threads);
        }
        return out;
    });
}

py::object vlad(const py::array& x, const py::array& words, bool intra_normalize, bool signed_sqrt,
                bool l2_normalize, int n_threads) {
    const Activations a = view_activations(x);
    if (words.ndim() != 2 || words.shape(1) != a.c)
        throw std::invalid_argument("VLAD dictionary must have shape (n_words, n_channels)");
    if (!words.dtype().equal(x.dtype()))
        throw py::type_error("VLAD dictionary dtype must match the activations' dtype");
    if (!(words.flags() & py::array::c_style))
        throw std::invalid_argument("VLAD dictionary must be C-contiguous");
    const microtex::detail::VladOptions opt{intra_normalize, signed_sqrt, l2_normalize};
    const std::ptrdiff_t K = words.shape(0);
    return dispatch(x, [&](auto tag) -> py::object {
        using T = decltype(tag);
        py::array_t<T> out({a.n, static_cast<py::ssize_t>(K * a.c)});
        T* ptr = out.mutable_data();
        const T* w = static_cast<const T*>(words.data());
        {
            py::gil_scoped_release release;
            microtex::detail::vlad<T>(a, w, K, opt, ptr, n_threads);
        }
        return out;
    });
}

}  // namespace

void register_pooling(py::module_& m) {
    m.def("mean_max_pool", &mean_max_pool, py::arg("x"), py::arg("want_mean"), py::arg("want_max"),
          py::arg("n_threads") = 0);
    m.def("gram", &gram, py::arg("x"), py::arg("normalization"), py::arg("layout"),
          py::arg("n_threads") = 0);
    m.def("vlad", &vlad, py::arg("x"), py::arg("words"), py::arg("intra_normalize"),
          py::arg("signed_sqrt"), py::arg("l2_normalize"), py::arg("n_threads") = 0);
    m.def("simd_level", [] { return microtex::detail::cpu_has_avx2_fma() ? "avx2+fma" : "baseline"; });
}
