// Bindings for the cached PixelCNN sampler. The weights come as the float32
// arrays of a PixelCNN weights file in pixelcnn_tensor_shapes order
// (microtex/generative/export.py checks names and shapes); this layer checks
// sizes it relies on and runs the sampler without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

#include "microtex/sampler.hpp"

namespace py = pybind11;
using microtex::detail::PixelCNNSampler;
using microtex::detail::PixelCNNShape;

namespace {

using Floats = py::array_t<float, py::array::c_style>;

class Sampler {
  public:
    Sampler(const std::vector<int>& sizes, const std::vector<Floats>& tensors) : keep_(tensors) {
        if (sizes.size() != 9) throw std::invalid_argument("PixelCNN sizes: 9 integers expected");
        shape_ = PixelCNNShape{sizes[0], sizes[1], sizes[2], sizes[3], sizes[4],
                               sizes[5], sizes[6], sizes[7], sizes[8]};
        microtex::detail::PixelCNNWeights w;
        for (const auto& t : keep_) w.tensors.push_back(t.data());
        sampler_ = std::make_unique<PixelCNNSampler>(shape_, w);
    }

    py::tuple run(const Floats& conditions, std::uint64_t seed, std::uint64_t first_sample,
                  double temperature, const py::object& forced, bool want_logits, int n_threads) {
        if (conditions.ndim() != 2 || conditions.shape(1) != shape_.n_conditions)
            throw std::invalid_argument("conditions must be (n, n_conditions) float32");
        const long n = conditions.shape(0), S = shape_.side;
        py::array_t<std::int64_t> indices({n, S, S});
        bool is_forced = !forced.is_none();
        if (is_forced) {
            auto given = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(forced);
            if (!given || given.ndim() != 3 || given.shape(0) != n || given.shape(1) != S ||
                given.shape(2) != S)
                throw std::invalid_argument("forced indices must be (n, side, side) int64");
            std::copy(given.data(), given.data() + n * S * S, indices.mutable_data());
        }
        py::array_t<float> logits(want_logits ? std::vector<py::ssize_t>{n, S, S, shape_.n_codes}
                                              : std::vector<py::ssize_t>{0});
        std::int64_t* idx = indices.mutable_data();
        float* lg = want_logits ? logits.mutable_data() : nullptr;
        const float* cond = conditions.data();
        {
            py::gil_scoped_release release;
            sampler_->run(int(n), cond, seed, first_sample, temperature, is_forced, idx, lg,
                          n_threads);
        }
        return py::make_tuple(indices, want_logits ? py::object(logits) : py::none());
    }

  private:
    std::vector<Floats> keep_;  // the arrays the sampler reads from
    PixelCNNShape shape_{};
    std::unique_ptr<PixelCNNSampler> sampler_;
};

}  // namespace

void register_sampler(py::module_& m) {
    py::class_<Sampler>(m, "PixelCNNSampler")
        .def(py::init<const std::vector<int>&, const std::vector<Floats>&>(), py::arg("sizes"),
             py::arg("tensors"))
        .def("run", &Sampler::run, py::arg("conditions"), py::arg("seed"), py::arg("first_sample"),
             py::arg("temperature"), py::arg("forced"), py::arg("want_logits"),
             py::arg("n_threads") = 0);
}
