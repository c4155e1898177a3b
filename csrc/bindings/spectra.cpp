// Bindings for the two-point statistics and power spectrum kernels. Input
// checks (shapes, dtype policy, NaN, cutoff, mask range, frequency bins) live in
// microtex/features/spectra.py; this layer checks what it relies on, dispatches
// on dtype and runs without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "microtex/spectra/power_spectrum.hpp"
#include "microtex/spectra/two_point.hpp"

namespace py = pybind11;

namespace {

template <class T>
py::object two_point_typed(const py::array& data, const std::vector<std::pair<int, int>>& pairs,
                           bool periodic, long cutoff, const py::object& mask_obj, int n_threads) {
    microtex::detail::TwoPointShape s{data.shape(0), data.shape(1), data.shape(2), data.shape(3),
                                      cutoff, periodic, 0};
    const T* mask = nullptr;
    py::array mask_arr;
    if (!mask_obj.is_none()) {
        mask_arr = py::array::ensure(mask_obj);
        if (!mask_arr || !mask_arr.dtype().equal(data.dtype()) || mask_arr.ndim() != 3 ||
            !(mask_arr.flags() & py::array::c_style) || mask_arr.shape(1) != s.H ||
            mask_arr.shape(2) != s.W || (mask_arr.shape(0) != 1 && mask_arr.shape(0) != s.n))
            throw std::invalid_argument("mask must be C-contiguous (1 or n, H, W) of the data's dtype");
        s.n_mask = mask_arr.shape(0);
        mask = static_cast<const T*>(mask_arr.data());
    }
    for (const auto& p : pairs)
        if (p.first < 0 || p.second < 0 || p.first >= s.K || p.second >= s.K)
            throw std::invalid_argument("correlation phase index out of range");
    if (pairs.empty()) throw std::invalid_argument("no correlations asked for");
    const long win = 2 * cutoff + 1;
    py::array_t<T> out({s.n, win, win, static_cast<long>(pairs.size())});
    T* out_ptr = out.mutable_data();
    const T* in = static_cast<const T*>(data.data());
    {
        py::gil_scoped_release release;
        microtex::detail::two_point<T>(in, s, pairs, mask, out_ptr, n_threads);
    }
    return out;
}

py::object two_point(const py::array& data, const py::array_t<long long>& pair_array, bool periodic,
                     long cutoff, const py::object& mask, int n_threads) {
    if (data.ndim() != 4 || !(data.flags() & py::array::c_style))
        throw std::invalid_argument("phase data must be C-contiguous (n, H, W, n_phases)");
    if (pair_array.ndim() != 2 || pair_array.shape(1) != 2)
        throw std::invalid_argument("correlations must be an (n_pairs, 2) array");
    std::vector<std::pair<int, int>> pairs;
    auto p = pair_array.unchecked<2>();
    for (py::ssize_t i = 0; i < p.shape(0); ++i) pairs.emplace_back(int(p(i, 0)), int(p(i, 1)));
    if (data.dtype().equal(py::dtype::of<float>()))
        return two_point_typed<float>(data, pairs, periodic, cutoff, mask, n_threads);
    if (data.dtype().equal(py::dtype::of<double>()))
        return two_point_typed<double>(data, pairs, periodic, cutoff, mask, n_threads);
    throw py::type_error("unsupported phase data dtype " + std::string(py::str(data.dtype())) +
                         " (expected float32 or float64)");
}

template <class T>
py::object power_spectrum_typed(const py::array& images, bool rescale, const int* bins, long n_bins,
                                int n_threads) {
    const microtex::detail::PowerSpectrumShape s{images.shape(0), images.shape(1), images.shape(2),
                                                 rescale, bins, n_bins};
    py::array_t<T> out = bins ? py::array_t<T>({s.n, n_bins}) : py::array_t<T>({s.n, s.H, s.W});
    T* out_ptr = out.mutable_data();
    const T* in = static_cast<const T*>(images.data());
    {
        py::gil_scoped_release release;
        microtex::detail::power_spectrum<T>(in, s, out_ptr, n_threads);
    }
    return out;
}

// bins: None (the full shifted spectrum) or C-contiguous int32 (H, W) labels in [-1, n_bins).
py::object power_spectrum(const py::array& images, bool rescale, const py::object& bins_obj, long n_bins,
                          int n_threads) {
    if (images.ndim() != 3 || !(images.flags() & py::array::c_style))
        throw std::invalid_argument("images must be C-contiguous (n, H, W)");
    const int* bins = nullptr;
    py::array bins_arr;
    if (!bins_obj.is_none()) {
        bins_arr = py::array::ensure(bins_obj);
        if (!bins_arr || !bins_arr.dtype().equal(py::dtype::of<std::int32_t>()) || bins_arr.ndim() != 2 ||
            !(bins_arr.flags() & py::array::c_style) || bins_arr.shape(0) != images.shape(1) ||
            bins_arr.shape(1) != images.shape(2))
            throw std::invalid_argument("bins must be C-contiguous int32 (H, W)");
        bins = static_cast<const int*>(bins_arr.data());
    }
    if (images.dtype().equal(py::dtype::of<float>()))
        return power_spectrum_typed<float>(images, rescale, bins, n_bins, n_threads);
    if (images.dtype().equal(py::dtype::of<double>()))
        return power_spectrum_typed<double>(images, rescale, bins, n_bins, n_threads);
    throw py::type_error("unsupported image dtype " + std::string(py::str(images.dtype())) +
                         " (expected float32 or float64)");
}

}  // namespace

void register_spectra(py::module_& m) {
    m.def("two_point", &two_point, py::arg("data"), py::arg("pairs"), py::arg("periodic"),
          py::arg("cutoff"), py::arg("mask"), py::arg("n_threads") = 0);
    m.def("power_spectrum", &power_spectrum, py::arg("images"), py::arg("rescale"), py::arg("bins"),
          py::arg("n_bins"), py::arg("n_threads") = 0);
}
