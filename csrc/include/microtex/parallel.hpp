// Minimal fork-join helper: run f(begin, end, thread_index) over [0, n) split
// into contiguous chunks. Header-only, no Python.
#pragma once

#include <algorithm>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace microtex::detail {

inline int resolve_threads(int n_threads) {
    if (n_threads > 0) return n_threads;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

// Calls f(begin, end, t) for t in [0, n_chunks) on n_chunks threads (the
// calling thread runs chunk 0). Exceptions are re-thrown on the caller.
template <class F>
void parallel_chunks(std::ptrdiff_t n, int n_chunks, F&& f) {
    if (n <= 0) return;
    n_chunks = static_cast<int>(std::max<std::ptrdiff_t>(1, std::min<std::ptrdiff_t>(n_chunks, n)));
    if (n_chunks == 1) {
        f(std::ptrdiff_t{0}, n, 0);
        return;
    }
    std::vector<std::exception_ptr> errors(n_chunks);
    std::vector<std::thread> workers;
    workers.reserve(n_chunks - 1);
    auto bounds = [&](int t) {
        std::ptrdiff_t lo = n * t / n_chunks, hi = n * (t + 1) / n_chunks;
        return std::pair<std::ptrdiff_t, std::ptrdiff_t>(lo, hi);
    };
    auto run = [&](int t) {
        try {
            auto [lo, hi] = bounds(t);
            f(lo, hi, t);
        } catch (...) {
            errors[t] = std::current_exception();
        }
    };
    for (int t = 1; t < n_chunks; ++t) workers.emplace_back(run, t);
    run(0);
    for (auto& w : workers) w.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace microtex::detail
