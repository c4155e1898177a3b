// Pooling kernels of DESIGN.md §4 over a batch of activations (n, c, h, w)
// given by a base pointer and byte strides. Header-only; no Python headers.
//
//   mean/max : per channel over the h*w positions (sum accumulated in double)
//   gram     : G = F F^T per sample (F is c x h*w), float tiles accumulated in
//              double; normalization sum | spatial (/M) | lubbers (/(2 c M));
//              layout full (c*c) or triu (c(c+1)/2, off-diagonal * sqrt 2)
//   vlad     : hard nearest-word assignment, v_k = sum (x - c_k); optional
//              intra-normalization, signed square root, global L2
//
// Outputs are written into caller-owned, C-contiguous (n, n_features) buffers.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "microtex/detail/microkernels.hpp"
#include "microtex/parallel.hpp"

namespace microtex::detail {

struct Activations {
    const char* data;
    std::ptrdiff_t n, c, h, w;      // shape
    std::ptrdiff_t sn, sc, sh, sw;  // byte strides
    std::ptrdiff_t positions() const { return h * w; }
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

inline int threads_for(double work, int n_threads) {
    // Below ~2 Mflop the cost of starting a thread is not worth it.
    return work < 2e6 ? 1 : resolve_threads(n_threads);
}

// ---------------------------------------------------------------- mean / max
template <class T>
void mean_max_pool(const Activations& a, T* mean_out, T* max_out, int n_threads) {
    check_activations(a);
    const auto mk = microkernels<T>();
    const std::ptrdiff_t M = a.positions();
    const bool contiguous_rows = a.sw == static_cast<std::ptrdiff_t>(sizeof(T));
    const bool contiguous_plane = contiguous_rows && a.sh == a.w * a.sw;
    const int nt = threads_for(double(a.n) * a.c * M, n_threads);
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

// ---------------------------------------------------------------- gram
enum class GramNormalization { sum, spatial, lubbers };

inline GramNormalization parse_gram_normalization(const std::string& s) {
    if (s == "sum") return GramNormalization::sum;
    if (s == "spatial") return GramNormalization::spatial;
    if (s == "lubbers") return GramNormalization::lubbers;
    throw std::invalid_argument("unknown Gram normalization '" + s +
                                "' (expected 'sum', 'spatial' or 'lubbers')");
}

inline std::ptrdiff_t gram_features(std::ptrdiff_t c, bool triu) {
    return triu ? c * (c + 1) / 2 : c * c;
}

template <class T>
class GramWorker {
  public:
    static constexpr std::ptrdiff_t MR = 4, NR = 3, W = generic::vec32<T>::lanes;

    explicit GramWorker(const Activations& a)
        : a_(a),
          mk_(microkernels<T>()),
          rows_(round_up(a.c, MR * NR)),
          kc_(choose_kc(a.c)),
          buffer_(a.c * kc_),
          zeros_(kc_, T(0)),
          ptrs_(rows_),
          tile_(MR * NR),
          acc_(rows_ * rows_) {}

    void zero() { std::fill(acc_.begin(), acc_.end(), 0.0); }
    const std::vector<double>& acc() const { return acc_; }
    std::vector<double>& acc() { return acc_; }
    std::ptrdiff_t stride() const { return rows_; }

    // acc += F[:, p0:p1] F[:, p0:p1]^T on the blocks touching the upper triangle
    void accumulate(std::ptrdiff_t s, std::ptrdiff_t p0, std::ptrdiff_t p1) {
        const std::ptrdiff_t c = a_.c;
        const bool plane = a_.sw == std::ptrdiff_t(sizeof(T)) && a_.sh == a_.w * a_.sw;
        for (std::ptrdiff_t k0 = p0; k0 < p1; k0 += kc_) {
            const std::ptrdiff_t kc = std::min(kc_, p1 - k0), kv = round_up(kc, W);
            if (plane && kv == kc) {  // read the channel rows in place
                for (std::ptrdiff_t ch = 0; ch < c; ++ch)
                    ptrs_[ch] = reinterpret_cast<const T*>(a_.data + s * a_.sn + ch * a_.sc) + k0;
            } else {  // strided or ragged tail: copy, zero-padded to the vector width
                for (std::ptrdiff_t ch = 0; ch < c; ++ch) {
                    T* dst = buffer_.data() + ch * kc_;
                    gather_positions<T>(a_, s, ch, k0, k0 + kc, dst);
                    std::fill(dst + kc, dst + kv, T(0));
                    ptrs_[ch] = dst;
                }
            }
            for (std::ptrdiff_t ch = c; ch < rows_; ++ch) ptrs_[ch] = zeros_.data();
            for (std::ptrdiff_t i0 = 0; i0 < c; i0 += MR) {
                for (std::ptrdiff_t j0 = i0 / NR * NR; j0 < c; j0 += NR) {
                    std::fill(tile_.begin(), tile_.end(), 0.0);
                    mk_.gram_tile(&ptrs_[i0], &ptrs_[j0], kv, tile_.data());
                    for (std::ptrdiff_t r = 0; r < MR; ++r)
                        for (std::ptrdiff_t q = 0; q < NR; ++q)
                            acc_[(i0 + r) * rows_ + j0 + q] += tile_[r * NR + q];
                }
            }
        }
    }

  private:
    static std::ptrdiff_t round_up(std::ptrdiff_t x, std::ptrdiff_t m) { return (x + m - 1) / m * m; }
    static std::ptrdiff_t choose_kc(std::ptrdiff_t c) {
        // 4 "A" rows of a chunk stay in L1 while the other rows stream from L2/L3;
        // long chunks amortise the per-tile reduction, bounded for accuracy
        (void)c;
        return 1024;
    }

    const Activations& a_;
    Microkernels<T> mk_;
    std::ptrdiff_t rows_, kc_;
    std::vector<T> buffer_, zeros_;
    std::vector<const T*> ptrs_;
    std::vector<double> tile_, acc_;
};

template <class T>
void write_gram(const std::vector<double>& acc, std::ptrdiff_t stride, std::ptrdiff_t c,
                std::ptrdiff_t M, GramNormalization norm, bool triu, T* out) {
    double scale = 1.0;
    if (norm == GramNormalization::spatial) scale = 1.0 / double(M);
    if (norm == GramNormalization::lubbers) scale = 1.0 / (2.0 * double(c) * double(M));
    const double off = triu ? std::sqrt(2.0) * scale : scale;
    std::ptrdiff_t idx = 0;
    for (std::ptrdiff_t i = 0; i < c; ++i) {
        if (triu) {
            out[idx++] = static_cast<T>(acc[i * stride + i] * scale);
            for (std::ptrdiff_t j = i + 1; j < c; ++j) out[idx++] = static_cast<T>(acc[i * stride + j] * off);
        } else {
            for (std::ptrdiff_t j = 0; j < c; ++j) {
                const double v = j >= i ? acc[i * stride + j] : acc[j * stride + i];
                out[i * c + j] = static_cast<T>(v * scale);
            }
        }
    }
}

template <class T>
void gram(const Activations& a, GramNormalization norm, bool triu, T* out, int n_threads) {
    check_activations(a);
    const std::ptrdiff_t M = a.positions(), F = gram_features(a.c, triu);
    const int nt = threads_for(double(a.n) * a.c * a.c * M, n_threads);
    if (a.n >= nt) {  // whole samples per thread
        parallel_chunks(a.n, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
            GramWorker<T> worker(a);
            for (std::ptrdiff_t s = lo; s < hi; ++s) {
                worker.zero();
                worker.accumulate(s, 0, M);
                write_gram(worker.acc(), worker.stride(), a.c, M, norm, triu, out + s * F);
            }
        });
        return;
    }
    // fewer samples than threads: split each sample's positions, then reduce
    std::vector<GramWorker<T>> workers;
    workers.reserve(nt);
    for (int t = 0; t < nt; ++t) workers.emplace_back(a);
    for (std::ptrdiff_t s = 0; s < a.n; ++s) {
        parallel_chunks(M, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int t) {
            workers[t].zero();
            workers[t].accumulate(s, lo, hi);
        });
        auto& total = workers[0].acc();
        const int used = static_cast<int>(std::min<std::ptrdiff_t>(nt, M));
        for (int t = 1; t < used; ++t)
            for (std::size_t i = 0; i < total.size(); ++i) total[i] += workers[t].acc()[i];
        write_gram(total, workers[0].stride(), a.c, M, norm, triu, out + s * F);
    }
}

// ---------------------------------------------------------------- vlad
struct VladOptions {
    bool intra_normalize = true;
    bool signed_sqrt = true;
    bool l2_normalize = true;
};

template <class T>
class VladWorker {
  public:
    static constexpr std::ptrdiff_t PB = 3 * generic::vec32<T>::lanes;  // pixels per panel

    VladWorker(const Activations& a, const T* words_packed, const T* word_norms, std::ptrdiff_t K,
               std::ptrdiff_t Kpad)
        : a_(a),
          mk_(microkernels<T>()),
          wp_(words_packed),
          wn_(word_norms),
          K_(K),
          Kpad_(Kpad),
          panel_(a.c * PB),
          dots_(Kpad * PB),
          best_(PB),
          assign_(PB),
          sums_(4 * a.c * K),
          counts_(K) {}

    void zero() {
        std::fill(sums_.begin(), sums_.end(), 0.0);
        std::fill(counts_.begin(), counts_.end(), 0.0);
    }
    std::vector<double>& sums() { return sums_; }      // (c, K): sum of assigned x
    std::vector<double>& counts() { return counts_; }  // (K,)

    void accumulate(std::ptrdiff_t s, std::ptrdiff_t p0, std::ptrdiff_t p1) {
        const std::ptrdiff_t c = a_.c;
        for (std::ptrdiff_t q0 = p0; q0 < p1; q0 += PB) {
            const std::ptrdiff_t np = std::min(PB, p1 - q0);
            for (std::ptrdiff_t ch = 0; ch < c; ++ch) {
                T* dst = panel_.data() + ch * PB;
                gather_positions<T>(a_, s, ch, q0, q0 + np, dst);
                std::fill(dst + np, dst + PB, T(0));
            }
            for (std::ptrdiff_t kb = 0; kb < Kpad_ / 4; ++kb)
                mk_.vlad_tile(wp_ + kb * c * 4, panel_.data(), c, dots_.data() + kb * 4 * PB);
            mk_.vlad_argmin(dots_.data(), wn_, K_, best_.data());
            for (std::ptrdiff_t j = 0; j < np; ++j) {
                assign_[j] = static_cast<std::ptrdiff_t>(best_[j]);
                counts_[assign_[j]] += 1.0;
            }
            // four partial sum tables break the add chains of neighbouring
            // pixels that share a word (they usually do)
            for (std::ptrdiff_t ch = 0; ch < c; ++ch) {
                const T* row = panel_.data() + ch * PB;
                double* s0 = sums_.data() + ch * K_;
                double* s1 = s0 + c * K_;
                double* s2 = s1 + c * K_;
                double* s3 = s2 + c * K_;
                std::ptrdiff_t j = 0;
                for (; j + 4 <= np; j += 4) {
                    s0[assign_[j]] += row[j];
                    s1[assign_[j + 1]] += row[j + 1];
                    s2[assign_[j + 2]] += row[j + 2];
                    s3[assign_[j + 3]] += row[j + 3];
                }
                for (; j < np; ++j) s0[assign_[j]] += row[j];
            }
        }
    }

    // fold the four partial tables into the first
    void finish() {
        const std::size_t n = a_.c * K_;
        for (std::size_t i = 0; i < n; ++i) sums_[i] += sums_[n + i] + sums_[2 * n + i] + sums_[3 * n + i];
        for (std::size_t i = n; i < sums_.size(); ++i) sums_[i] = 0.0;
    }

  private:
    const Activations& a_;
    Microkernels<T> mk_;
    const T* wp_;
    const T* wn_;
    std::ptrdiff_t K_, Kpad_;
    std::vector<T> panel_, dots_, best_;
    std::vector<std::ptrdiff_t> assign_;
    std::vector<double> sums_, counts_;
};

template <class T>
void write_vlad(const std::vector<double>& sums, const std::vector<double>& counts, const T* words,
                std::ptrdiff_t K, std::ptrdiff_t c, const VladOptions& opt, T* out) {
    for (double x : sums) {
        if (!std::isfinite(x)) {  // NaN/inf activations: flag the sample, let Python report it
            std::fill(out, out + K * c, std::numeric_limits<T>::quiet_NaN());
            return;
        }
    }
    std::vector<double> v(K * c);
    // A residual at rounding level (e.g. a word whose only member is the word
    // itself) is exactly zero in exact arithmetic; keep it zero so that
    // intra-normalization does not blow rounding noise up to a unit vector.
    const double tol = 100.0 * std::numeric_limits<T>::epsilon();
    for (std::ptrdiff_t k = 0; k < K; ++k) {
        double ss = 0, s_norm = 0, c_norm = 0;
        for (std::ptrdiff_t ch = 0; ch < c; ++ch) {
            const double sk = sums[ch * K + k], ck = words[k * c + ch];
            const double r = sk - counts[k] * ck;
            v[k * c + ch] = r;
            ss += r * r;
            s_norm += sk * sk;
            c_norm += ck * ck;
        }
        const double scale = std::sqrt(s_norm) + counts[k] * std::sqrt(c_norm);
        if (std::sqrt(ss) <= tol * scale)
            for (std::ptrdiff_t ch = 0; ch < c; ++ch) v[k * c + ch] = 0.0;
    }
    if (opt.intra_normalize) {
        for (std::ptrdiff_t k = 0; k < K; ++k) {
            double ss = 0;
            for (std::ptrdiff_t ch = 0; ch < c; ++ch) ss += v[k * c + ch] * v[k * c + ch];
            if (ss > 0) {
                const double inv = 1.0 / std::sqrt(ss);
                for (std::ptrdiff_t ch = 0; ch < c; ++ch) v[k * c + ch] *= inv;
            }
        }
    }
    if (opt.signed_sqrt)
        for (auto& x : v) x = std::copysign(std::sqrt(std::fabs(x)), x);
    if (opt.l2_normalize) {
        double ss = 0;
        for (double x : v) ss += x * x;
        if (ss > 0) {
            const double inv = 1.0 / std::sqrt(ss);
            for (auto& x : v) x *= inv;
        }
    }
    for (std::ptrdiff_t i = 0; i < K * c; ++i) out[i] = static_cast<T>(v[i]);
}

// words: (K, c) C-contiguous dictionary; out: (n, K*c)
template <class T>
void vlad(const Activations& a, const T* words, std::ptrdiff_t K, const VladOptions& opt, T* out,
          int n_threads) {
    check_activations(a);
    if (K <= 0) throw std::invalid_argument("VLAD dictionary must have at least one word");
    const std::ptrdiff_t c = a.c, M = a.positions(), Kpad = (K + 3) / 4 * 4;
    // pack words four at a time, channel-major, and precompute |c_k|^2
    std::vector<T> packed(Kpad * c, T(0)), norms(Kpad, std::numeric_limits<T>::infinity());
    for (std::ptrdiff_t k = 0; k < K; ++k) {
        double nn = 0;
        for (std::ptrdiff_t ch = 0; ch < c; ++ch) {
            const T v = words[k * c + ch];
            packed[((k / 4) * c + ch) * 4 + k % 4] = v;
            nn += double(v) * v;
        }
        norms[k] = static_cast<T>(nn);
    }
    const int nt = threads_for(double(a.n) * K * c * M * 2, n_threads);
    const std::ptrdiff_t F = K * c;
    if (a.n >= nt) {
        parallel_chunks(a.n, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
            VladWorker<T> worker(a, packed.data(), norms.data(), K, Kpad);
            for (std::ptrdiff_t s = lo; s < hi; ++s) {
                worker.zero();
                worker.accumulate(s, 0, M);
                worker.finish();
                write_vlad(worker.sums(), worker.counts(), words, K, c, opt, out + s * F);
            }
        });
        return;
    }
    std::vector<VladWorker<T>> workers;
    workers.reserve(nt);
    for (int t = 0; t < nt; ++t) workers.emplace_back(a, packed.data(), norms.data(), K, Kpad);
    for (std::ptrdiff_t s = 0; s < a.n; ++s) {
        parallel_chunks(M, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int t) {
            workers[t].zero();
            workers[t].accumulate(s, lo, hi);
            workers[t].finish();
        });
        const int used = static_cast<int>(std::min<std::ptrdiff_t>(nt, M));
        for (int t = 1; t < used; ++t) {
            for (std::size_t i = 0; i < std::size_t(a.c * K); ++i) workers[0].sums()[i] += workers[t].sums()[i];
            for (std::size_t i = 0; i < workers[0].counts().size(); ++i)
                workers[0].counts()[i] += workers[t].counts()[i];
        }
        write_vlad(workers[0].sums(), workers[0].counts(), words, K, c, opt, out + s * F);
    }
}

}  // namespace microtex::detail
