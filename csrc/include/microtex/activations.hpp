// The activations a kernel reads, a batch (n, c, h, w) given by a base pointer
// and byte strides, and the helpers the kernels share to read them.
// Header-only; no Python headers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <stdexcept>

#include "microtex/parallel.hpp"

namespace microtex::detail {

struct Activations {
    const char* data;
    std::ptrdiff_t n, c, h, w;      // shape
    std::ptrdiff_t sn, sc, sh, sw;  // byte strides
    std::ptrdiff_t positions() const { return h * w; }
    // Every channel plane is one contiguous run of h*w items of size `item`, at
    // item-aligned channel strides: kernels may then read channel rows in place.
    bool contiguous_planes(std::size_t item) const {
        const auto size = static_cast<std::ptrdiff_t>(item);
        return sw == size && sh == w * sw && sc % size == 0;
    }
};

inline void check_activations(const Activations& a) {
    if (a.n < 0 || a.c <= 0 || a.h <= 0 || a.w <= 0)
        throw std::invalid_argument("activations must have n >= 0 and c, h, w >= 1");
}

// Copy positions [p0, p1) of channel `ch` of sample `s` into dst (contiguous).
template <class T>
inline void gather_positions(const Activations& a, std::ptrdiff_t s, std::ptrdiff_t ch,
                             std::ptrdiff_t p0, std::ptrdiff_t p1, T* dst) {
    const char* base = a.data + s * a.sn + ch * a.sc;
    std::ptrdiff_t p = p0;
    while (p < p1) {
        std::ptrdiff_t y = p / a.w, x = p % a.w;
        std::ptrdiff_t run = std::min<std::ptrdiff_t>(a.w - x, p1 - p);
        const char* row = base + y * a.sh + x * a.sw;
        if (a.sw == static_cast<std::ptrdiff_t>(sizeof(T))) {
            std::memcpy(dst, row, run * sizeof(T));
        } else {
            for (std::ptrdiff_t i = 0; i < run; ++i)
                std::memcpy(dst + i, row + i * a.sw, sizeof(T));
        }
        dst += run;
        p += run;
    }
}

// rows[j - j_begin] = channel j of sample s over positions [k0, k0 + kc), for
// j in [j_begin, j_end): read in place when the planes are contiguous, else
// gathered into stage, ld items per row (stage is not touched otherwise).
template <class T>
inline void channel_rows(const Activations& a, std::ptrdiff_t s, std::ptrdiff_t k0, std::ptrdiff_t kc,
                         std::ptrdiff_t j_begin, std::ptrdiff_t j_end, const T** rows, T* stage,
                         std::ptrdiff_t ld) {
    const bool in_place = a.contiguous_planes(sizeof(T));
    for (std::ptrdiff_t j = j_begin; j < j_end; ++j) {
        if (in_place) {
            rows[j - j_begin] = reinterpret_cast<const T*>(a.data + s * a.sn + j * a.sc) + k0;
        } else {
            T* dst = stage + (j - j_begin) * ld;
            gather_positions<T>(a, s, j, k0, k0 + kc, dst);
            rows[j - j_begin] = dst;
        }
    }
}

// State a kernel keeps per calling thread between calls (grow-only buffers).
// Bind the returned reference to a local before a parallel section: a lambda
// run by a pool thread that named a thread_local would get its own instance.
template <class S>
S& calling_thread_state() {
    thread_local S state;
    return state;
}

inline int threads_for(double work, int n_threads) {
    // Below ~2 Mflop the cost of starting a thread is not worth it.
    return work < 2e6 ? 1 : resolve_threads(n_threads);
}

}  // namespace microtex::detail
