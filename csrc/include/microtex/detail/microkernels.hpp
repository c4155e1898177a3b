// Two builds of the inner loops: baseline and AVX2/FMA, chosen at run time.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "microtex/cpu.hpp"

namespace microtex::detail {

namespace generic {
#define MICROTEX_TARGET
#include "microtex/detail/microkernels.inc"
#undef MICROTEX_TARGET
}  // namespace generic

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MICROTEX_HAVE_AVX2_CLONE 1
namespace avx2 {
#define MICROTEX_TARGET __attribute__((target("avx2,fma")))
#include "microtex/detail/microkernels.inc"
#undef MICROTEX_TARGET
}  // namespace avx2
#endif

// The packed layout gram_panel_tile, pack_panel and panel_sq_norms work in:
// k-major micro-panels of NR = 2W rows (W lanes of a 32-byte vector), tiles of
// MR = 6 rows against one panel. Every caller that packs or tiles uses these.
template <class T>
struct PanelShape {
    static constexpr std::ptrdiff_t W = generic::vec32<T>::lanes;
    static constexpr std::ptrdiff_t NR = 2 * W;
    static constexpr std::ptrdiff_t MR = 6;
};

template <class T>
struct Microkernels {
    void (*pack_panel)(const T* const*, long, long, T*);
    void (*gram_panel_tile)(const T* const*, const T*, long, double*, long, bool);
    void (*vlad_tile)(const T*, const T*, long, long, T*);
    void (*vlad_argmin)(const T*, const T*, long, T*);
    void (*sum_run)(const T*, long, double*);
    void (*max_run)(const T*, long, T*, T*);
    void (*vlad_residual_stats)(const double*, const T*, long, double, double*);
    void (*vlad_residual_write)(const double*, const T*, long, double, double, double, bool, T*);
    double (*sum_squares)(const T*, long);
    void (*panel_row_sums)(const T*, const std::ptrdiff_t*, long, T*);
    void (*panel_sq_norms)(const T*, long, double*);
};

template <class T>
inline Microkernels<T> microkernels() {
#ifdef MICROTEX_HAVE_AVX2_CLONE
    if (cpu_has_avx2_fma())
        return {&avx2::pack_panel<T>,          &avx2::gram_panel_tile<T>,     &avx2::vlad_tile<T>,
                &avx2::vlad_argmin<T>,         &avx2::sum_run<T>,             &avx2::max_run<T>,
                &avx2::vlad_residual_stats<T>, &avx2::vlad_residual_write<T>, &avx2::sum_squares<T>,
                &avx2::panel_row_sums<T>,      &avx2::panel_sq_norms<T>};
#endif
    return {&generic::pack_panel<T>,          &generic::gram_panel_tile<T>,     &generic::vlad_tile<T>,
            &generic::vlad_argmin<T>,         &generic::sum_run<T>,             &generic::max_run<T>,
            &generic::vlad_residual_stats<T>, &generic::vlad_residual_write<T>, &generic::sum_squares<T>,
            &generic::panel_row_sums<T>,      &generic::panel_sq_norms<T>};
}

}  // namespace microtex::detail
