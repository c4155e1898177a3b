// Bindings for the pairwise distance kernel. Input policy (dtype conversion,
// contiguity, streaming row blocks from files) lives in
// microtex/analysis/distances.py; this layer checks what the kernel relies on,
// dispatches on dtype and runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "microtex/pairwise.hpp"

namespace py = pybind11;

namespace {

std::string shape_of(const py::array& x) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < x.ndim(); ++d) s += (d ? ", " : "") + std::to_string(x.shape(d));
    return s + (x.ndim() == 1 ? ",)" : ")");
}

// Rows of `x` as (n, F) with contiguous features; the row stride in items.
py::ssize_t row_stride(const py::array& x, const char* name) {
    if (x.ndim() != 2)
        throw std::invalid_argument(std::string(name) + " must be 2-D (n_vectors, n_features); got shape " +
                                    shape_of(x));
    const py::ssize_t item = x.itemsize();
    if (x.size() == 0) return x.shape(1);  // empty arrays have arbitrary strides
    if ((x.shape(1) > 1 && x.strides(1) != item) || x.strides(0) % item != 0 ||
        (x.shape(0) > 1 && x.strides(0) < x.shape(1) * item))
        throw std::invalid_argument(std::string(name) + " must have C-contiguous rows");
    return x.shape(0) > 1 ? x.strides(0) / item : x.shape(1);
}

template <class T>
py::array_t<double> run(const py::array& a, const py::object& b_obj, int n_threads) {
    const py::ssize_t lda = row_stride(a, "a");
    const T* a_ptr = static_cast<const T*>(a.data());
    const T* b_ptr = nullptr;
    py::ssize_t n_b = a.shape(0), ldb = lda;
    if (!b_obj.is_none()) {
        const py::array b = b_obj.cast<py::array>();
        ldb = row_stride(b, "b");
        if (b.shape(1) != a.shape(1))
            throw std::invalid_argument("a and b must have the same number of features; got " +
                                        std::to_string(a.shape(1)) + " and " + std::to_string(b.shape(1)));
        b_ptr = static_cast<const T*>(b.data());
        n_b = b.shape(0);
    }
    py::array_t<double> out({a.shape(0), n_b});
    double* out_ptr = out.mutable_data();
    {
        py::gil_scoped_release release;
        microtex::detail::pairwise_sq_distances<T>(a_ptr, a.shape(0), lda, b_ptr, n_b, ldb, a.shape(1), out_ptr,
                                                   n_threads);
    }
    return out;
}

py::array_t<double> pairwise_sq_distances(const py::array& a, const py::object& b, int n_threads) {
    if (!b.is_none()) {
        if (!py::isinstance<py::array>(b)) throw py::type_error("b must be a NumPy array or None");
        const py::array b_arr = b.cast<py::array>();
        if (!b_arr.dtype().equal(a.dtype()))
            throw py::type_error("a and b must have the same dtype; got " + std::string(py::str(a.dtype())) +
                                 " and " + std::string(py::str(b_arr.dtype())));
    }
    if (a.dtype().equal(py::dtype::of<float>())) return run<float>(a, b, n_threads);
    if (a.dtype().equal(py::dtype::of<double>())) return run<double>(a, b, n_threads);
    throw py::type_error("unsupported feature dtype " + std::string(py::str(a.dtype())) +
                         " (expected float32 or float64)");
}

}  // namespace

void register_pairwise(py::module_& m) {
    m.def("pairwise_sq_distances", &pairwise_sq_distances, py::arg("a"), py::arg("b"),
          py::arg("n_threads") = 0);
}
