// Mixed-radix Stockham FFT over lanes: L transforms of length n at once, each
// point a run of L contiguous values (split real / imaginary arrays). Radices
// 4, 2, 3 and 5 have their own butterflies; other primes up to kMaxDftRadix run
// an R-point DFT (O(n R) per transform); a length with a larger prime factor
// is computed by Bluestein's chirp-z algorithm as a convolution of 2,3,5-smooth
// length, so every length costs O(n log n). Header-only, no Python.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
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

// Largest prime factor run as a plain R-point DFT; beyond it, Bluestein.
constexpr int kMaxDftRadix = 64;

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
        const std::vector<int> factors = fft_factors(n);
        if (!factors.empty() && factors.back() > kMaxDftRadix) {
            init_bluestein();
            return;
        }
        long Ns = 1;
        for (int R : factors) {
            std::vector<T> tr(Ns * R), ti(Ns * R), dr, di;
            for (long k = 0; k < Ns; ++k)
                for (int r = 0; r < R; ++r) {
                    const double a = sign * two_pi * double(k * r) / double(Ns * R);
                    tr[k * R + r] = T(std::cos(a));
                    ti[k * R + r] = T(std::sin(a));
                }
            if (R > 5) {
                dr.resize(std::size_t(R) * R), di.resize(std::size_t(R) * R);
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
        if (conv_fwd_) return run_bluestein(re, im, L, ld);
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
    // X_k = c_k sum_j (x_j c_j) conj(c_{k-j}) with c_m = exp(sign i pi m^2 / n):
    // a convolution, computed cyclically at a smooth length M >= 2n - 1.
    void init_bluestein() {
        const long M = next_smooth(2 * n_ - 1);
        const double pi = 3.141592653589793238462643383279;
        chirp_re_.resize(n_), chirp_im_.resize(n_);
        std::vector<T> b_re(M, T(0)), b_im(M, T(0));
        for (long j = 0; j < n_; ++j) {
            // j^2 mod 2n keeps the angle exact for large j
            const long long q = (static_cast<long long>(j) * j) % (2LL * n_);
            const double a = sign_ * pi * double(q) / double(n_);
            chirp_re_[j] = T(std::cos(a));
            chirp_im_[j] = T(std::sin(a));
            b_re[j] = chirp_re_[j], b_im[j] = -chirp_im_[j];
            if (j > 0) b_re[M - j] = chirp_re_[j], b_im[M - j] = -chirp_im_[j];
        }
        conv_fwd_ = std::make_unique<FftPlan>(M, -1);
        conv_inv_ = std::make_unique<FftPlan>(M, +1);
        std::vector<T> w_re(M), w_im(M), scratch(2 * std::size_t(conv_fwd_->max_radix()));
        conv_fwd_->run(b_re.data(), b_im.data(), w_re.data(), w_im.data(), 1, 1, scratch.data());
        const T scale = T(1) / T(M);  // the inverse transform's 1/M, folded in here
        for (long m = 0; m < M; ++m) b_re[m] *= scale, b_im[m] *= scale;
        kernel_re_ = std::move(b_re), kernel_im_ = std::move(b_im);
    }

    void run_bluestein(T* re, T* im, long L, long ld) const {
        const long M = conv_fwd_->size();
        std::vector<T> ar(std::size_t(M) * L, T(0)), ai(std::size_t(M) * L, T(0));
        std::vector<T> wr(std::size_t(M) * L), wi(std::size_t(M) * L);
        std::vector<T> scratch(2 * std::size_t(conv_fwd_->max_radix()) * L);
        for (long p = 0; p < n_; ++p) {
            const T cr = chirp_re_[p], ci = chirp_im_[p];
            const T *xr = re + p * ld, *xi = im + p * ld;
            T *yr = ar.data() + p * L, *yi = ai.data() + p * L;
            for (long l = 0; l < L; ++l) {
                yr[l] = xr[l] * cr - xi[l] * ci;
                yi[l] = xr[l] * ci + xi[l] * cr;
            }
        }
        conv_fwd_->run(ar.data(), ai.data(), wr.data(), wi.data(), L, L, scratch.data());
        for (long p = 0; p < M; ++p) {
            const T kr = kernel_re_[p], ki = kernel_im_[p];
            T *yr = ar.data() + p * L, *yi = ai.data() + p * L;
            for (long l = 0; l < L; ++l) {
                const T r = yr[l] * kr - yi[l] * ki;
                yi[l] = yr[l] * ki + yi[l] * kr;
                yr[l] = r;
            }
        }
        conv_inv_->run(ar.data(), ai.data(), wr.data(), wi.data(), L, L, scratch.data());
        for (long p = 0; p < n_; ++p) {
            const T cr = chirp_re_[p], ci = chirp_im_[p];
            const T *yr = ar.data() + p * L, *yi = ai.data() + p * L;
            T *xr = re + p * ld, *xi = im + p * ld;
            for (long l = 0; l < L; ++l) {
                xr[l] = yr[l] * cr - yi[l] * ci;
                xi[l] = yr[l] * ci + yi[l] * cr;
            }
        }
    }

    long n_;
    int sign_;
    std::unique_ptr<FftPlan> conv_fwd_, conv_inv_;  // Bluestein only
    std::vector<T> chirp_re_, chirp_im_, kernel_re_, kernel_im_;
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
