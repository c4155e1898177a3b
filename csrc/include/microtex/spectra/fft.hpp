// Mixed-radix Stockham FFT over lanes: L transforms of length n at once, each
// point a run of L contiguous values (split real / imaginary arrays). Radices
// 4, 2 and 3 have their own butterflies; any other prime factor runs an
// R-point DFT (O(n R) per transform: slow for a large prime, still exact).
// Header-only, no Python.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <utility>
#include <vector>

#include "microtex/cpu.hpp"

namespace microtex::detail {

template <class T>
struct Stage {
    int radix;
    long stride;  // Ns: product of the radices of the stages before
    const T* tw_re;
    const T* tw_im;  // [k * radix + r], k < stride
    const T* dft_re;
    const T* dft_im;  // [q * radix + r]: exp(sign 2 pi i q r / radix), other radices only
};

namespace fft_generic {
#define MICROTEX_TARGET
#include "microtex/spectra/fft_lanes.inc"
#undef MICROTEX_TARGET
}  // namespace fft_generic

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MICROTEX_HAVE_AVX2_FFT 1
namespace fft_avx2 {
#define MICROTEX_TARGET __attribute__((target("avx2,fma")))
#include "microtex/spectra/fft_lanes.inc"
#undef MICROTEX_TARGET
}  // namespace fft_avx2
#endif

// Smallest m >= n whose only prime factors are 2, 3 and 5.
inline long next_smooth(long n) {
    for (long m = n < 1 ? 1 : n;; ++m) {
        long r = m;
        for (long p : {2L, 3L, 5L})
            while (r % p == 0) r /= p;
        if (r == 1) return m;
    }
}

inline std::vector<int> fft_factors(long n) {
    std::vector<int> f;
    while (n % 4 == 0) f.push_back(4), n /= 4;
    for (long p : {2L, 3L})
        while (n % p == 0) f.push_back(int(p)), n /= p;
    for (long p = 5; n > 1; p += 2)
        while (n % p == 0) f.push_back(int(p)), n /= p;
    return f;
}

// Twiddles of one transform length and direction.
template <class T>
class FftPlan {
  public:
    FftPlan(long n, int sign) : n_(n), sign_(sign) {
        if (n < 1) throw std::invalid_argument("FFT length must be positive");
        const double two_pi = 6.283185307179586476925286766559;
        long Ns = 1;
        for (int R : fft_factors(n)) {
            std::vector<T> tr(Ns * R), ti(Ns * R), dr, di;
            for (long k = 0; k < Ns; ++k)
                for (int r = 0; r < R; ++r) {
                    const double a = sign * two_pi * double(k * r) / double(Ns * R);
                    tr[k * R + r] = T(std::cos(a));
                    ti[k * R + r] = T(std::sin(a));
                }
            if (R > 5) {
                dr.resize(R * R), di.resize(R * R);
                for (int q = 0; q < R; ++q)
                    for (int r = 0; r < R; ++r) {
                        const double a = sign * two_pi * double((long(q) * r) % R) / double(R);
                        dr[q * R + r] = T(std::cos(a));
                        di[q * R + r] = T(std::sin(a));
                    }
            }
            radix_.push_back(R), stride_.push_back(Ns);
            tw_.push_back({std::move(tr), std::move(ti)});
            dft_.push_back({std::move(dr), std::move(di)});
            Ns *= R;
        }
    }
    long size() const { return n_; }
    int max_radix() const {
        int m = 1;
        for (int r : radix_) m = r > m ? r : m;
        return m;
    }

    // Transforms L lanes in place: point p of lane l at re[p * ld + l] (ld >= L);
    // work_re / work_im are laid out alike, scratch holds 2 * max_radix() * L.
    void run(T* re, T* im, T* work_re, T* work_im, long L, long ld, T* scratch) const {
        T *ar = re, *ai = im, *br = work_re, *bi = work_im;
        for (std::size_t s = 0; s < radix_.size(); ++s) {
            const Stage<T> st{radix_[s],       stride_[s],       tw_[s].first.data(),
                              tw_[s].second.data(), dft_[s].first.data(), dft_[s].second.data()};
#ifdef MICROTEX_HAVE_AVX2_FFT
            if (cpu_has_avx2_fma())
                fft_avx2::fft_stage<T>(ar, ai, br, bi, n_, L, ld, st, sign_, scratch);
            else
#endif
                fft_generic::fft_stage<T>(ar, ai, br, bi, n_, L, ld, st, sign_, scratch);
            std::swap(ar, br), std::swap(ai, bi);
        }
        if (ar != re)
            for (long p = 0; p < n_; ++p) {
                std::memcpy(re + p * ld, ar + p * ld, sizeof(T) * L);
                std::memcpy(im + p * ld, ai + p * ld, sizeof(T) * L);
            }
    }

  private:
    long n_;
    int sign_;
    std::vector<int> radix_;
    std::vector<long> stride_;
    std::vector<std::pair<std::vector<T>, std::vector<T>>> tw_, dft_;
};

template <class T>
inline void transpose(const T* in, long rows, long cols, long ld_in, T* out, long ld_out) {
#ifdef MICROTEX_HAVE_AVX2_FFT
    if (cpu_has_avx2_fma()) return fft_avx2::transpose<T>(in, rows, cols, ld_in, out, ld_out);
#endif
    fft_generic::transpose<T>(in, rows, cols, ld_in, out, ld_out);
}

}  // namespace microtex::detail
