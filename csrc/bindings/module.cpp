// microtex._kernels: the compiled kernels. Each area registers its functions.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_pooling(py::module_& m);
void register_spectra(py::module_& m);
void register_sampler(py::module_& m);
void register_pairwise(py::module_& m);

PYBIND11_MODULE(_kernels, m) {
    m.doc() = "microtex compiled kernels (use the Python wrappers in microtex.*)";
    register_pooling(m);
    register_spectra(m);
    register_sampler(m);
    register_pairwise(m);
}
