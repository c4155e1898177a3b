// Mean and max pooling: per channel over the h*w positions,
// the sum accumulated in double. Outputs go to caller-owned, C-contiguous
// (n, c) buffers. Header-only; no Python headers.
#pragma once

#include <cstddef>
#include <limits>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/detail/microkernels.hpp"
#include "microtex/parallel.hpp"

namespace microtex::detail {

template <class T>
void mean_max_pool(const Activations& a, T* mean_out, T* max_out, int n_threads) {
    check_activations(a);
    const auto mk = microkernels<T>();
    const std::ptrdiff_t M = a.positions();
    const bool contiguous_rows = a.sw == static_cast<std::ptrdiff_t>(sizeof(T));
    const bool contiguous_plane = a.contiguous_planes(sizeof(T));
    // a streaming pass: worth a second thread from ~250k values (the pool wakes in microseconds)
    const int nt = threads_for(8.0 * double(a.n) * a.c * M, n_threads);
    parallel_chunks(a.n * a.c, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
        std::vector<T> row;
        if (!contiguous_rows) row.resize(a.w);
        for (std::ptrdiff_t item = lo; item < hi; ++item) {
            const std::ptrdiff_t s = item / a.c, ch = item % a.c;
            const char* base = a.data + s * a.sn + ch * a.sc;
            double sum = 0.0;
            T mx = -std::numeric_limits<T>::infinity(), bad = 0;
            auto run = [&](const T* src, std::ptrdiff_t len) {
                if (mean_out) mk.sum_run(src, len, &sum);
                if (max_out) mk.max_run(src, len, &mx, &bad);
            };
            if (contiguous_plane) {
                run(reinterpret_cast<const T*>(base), M);
            } else {
                for (std::ptrdiff_t y = 0; y < a.h; ++y) {
                    if (contiguous_rows) {
                        run(reinterpret_cast<const T*>(base + y * a.sh), a.w);
                    } else {
                        gather_positions<T>(a, s, ch, y * a.w, (y + 1) * a.w, row.data());
                        run(row.data(), a.w);
                    }
                }
            }
            if (mean_out) mean_out[item] = static_cast<T>(sum / double(M));
            if (max_out) max_out[item] = bad == 0 ? mx : std::numeric_limits<T>::quiet_NaN();
        }
    });
}

}  // namespace microtex::detail
