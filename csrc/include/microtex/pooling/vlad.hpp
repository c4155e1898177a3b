// VLAD pooling: hard nearest-word assignment,
// v_k = sum (x - c_k); optional intra-normalization, signed square root,
// global L2. Outputs go to a caller-owned, C-contiguous (n, K*c) buffer.
// Header-only; no Python headers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/detail/microkernels.hpp"
#include "microtex/parallel.hpp"

namespace microtex::detail {

struct VladOptions {
    bool intra_normalize = true;
    bool signed_sqrt = true;
    bool l2_normalize = true;
};

// VLAD sums for one sample over a range of positions, in chunks of CH:
//  1. per panel of PB pixels: dot products with all words (vlad_tile) and the
//     nearest word (vlad_argmin);
//  2. positions of the chunk counting-sorted by word;
//  3. per word, its positions summed over a block of channel rows at once
//     (float sums over at most CH positions, then added to the double
//     totals): no read-modify-write chain per pixel. With many channels the
//     rows are first transposed to position-major.
template <class T>
class VladWorker {
  public:
    static constexpr std::ptrdiff_t PB = 3 * generic::vec32<T>::lanes;  // pixels per panel
    static constexpr std::ptrdiff_t CH = 64 * PB;                        // positions per chunk
    static constexpr std::ptrdiff_t kChannelBlock = 128;

    // Points the worker at a call's activations and packed words; buffers only
    // grow, so a worker kept by the calling thread allocates nothing per call.
    void prepare(const Activations& a, const T* words_packed, const T* word_norms, std::ptrdiff_t K,
                 std::ptrdiff_t Kpad) {
        a_ = a;
        mk_ = microkernels<T>();
        wp_ = words_packed;
        wn_ = word_norms;
        K_ = K;
        Kpad_ = Kpad;
        panel_.resize(a.c * PB);
        dots_.resize(Kpad * PB);
        best_.resize(PB);
        row_.resize(std::max(kRows, NR) * CH);
        if (a.c >= kPackedChannels) tpanel_.resize(NR * CH);
        assign_.resize(CH);
        order_.resize(CH);
        start_.resize(K + 1);
        sums_.resize(a.c * K);
        counts_.resize(K);
    }

    std::vector<double>& sums() { return sums_; }      // (K, c): sum of assigned x
    std::vector<double>& counts() { return counts_; }  // (K,)

    // Sums of positions [p0, p1) of sample s, added to the totals, or
    // replacing them when `overwrite` (no separate zeroing pass).
    void accumulate(std::ptrdiff_t s, std::ptrdiff_t p0, std::ptrdiff_t p1, bool overwrite) {
        const std::ptrdiff_t c = a_.c;
        if (overwrite) std::fill(counts_.begin(), counts_.end(), 0.0);
        if (overwrite && p0 >= p1) std::fill(sums_.begin(), sums_.end(), 0.0);
        const bool plane = a_.contiguous_planes(sizeof(T));
        for (std::ptrdiff_t c0 = p0; c0 < p1; c0 += CH) {
            const std::ptrdiff_t cn = std::min(CH, p1 - c0);
            const bool first = overwrite && c0 == p0;
            // 1. nearest word of every position of the chunk
            for (std::ptrdiff_t q0 = 0; q0 < cn; q0 += PB) {
                const std::ptrdiff_t np = std::min(PB, cn - q0);
                const T* P;
                std::ptrdiff_t ldp;
                if (plane && np == PB) {  // read the panel in place, channel stride M
                    P = reinterpret_cast<const T*>(a_.data + s * a_.sn) + c0 + q0;
                    ldp = a_.sc / std::ptrdiff_t(sizeof(T));
                } else {
                    for (std::ptrdiff_t ch = 0; ch < c; ++ch) {
                        T* dst = panel_.data() + ch * PB;
                        gather_positions<T>(a_, s, ch, c0 + q0, c0 + q0 + np, dst);
                        std::fill(dst + np, dst + PB, T(0));
                    }
                    P = panel_.data();
                    ldp = PB;
                }
                // channel blocks keep the panel slice in L1 across the word blocks.
                // The next panel, when read in place, is prefetched into L2 a slice
                // of rows per word block, so its load overlaps this panel's
                // arithmetic: a gain when the activations stream from memory,
                // about neutral when they are already in cache.
                const T* next = plane && q0 + 2 * PB <= p1 - c0 ? P + PB : nullptr;
                const std::ptrdiff_t word_blocks = Kpad_ / 4;
                std::fill(dots_.begin(), dots_.end(), T(0));
                for (std::ptrdiff_t cb = 0; cb < c; cb += kChannelBlock) {
                    const std::ptrdiff_t nc = std::min(kChannelBlock, c - cb);
                    for (std::ptrdiff_t kb = 0; kb < word_blocks; ++kb) {
                        if (next)
                            prefetch_rows(next, ldp, cb + kb * nc / word_blocks, cb + (kb + 1) * nc / word_blocks);
                        mk_.vlad_tile(wp_ + (kb * c + cb) * 4, P + cb * ldp, ldp, nc, dots_.data() + kb * 4 * PB);
                    }
                }
                mk_.vlad_argmin(dots_.data(), wn_, K_, best_.data());
                for (std::ptrdiff_t j = 0; j < np; ++j) assign_[q0 + j] = static_cast<std::ptrdiff_t>(best_[j]);
            }
            // 2. counting sort of the chunk's positions by word
            std::fill(start_.begin(), start_.end(), 0);
            for (std::ptrdiff_t j = 0; j < cn; ++j) ++start_[assign_[j] + 1];
            for (std::ptrdiff_t k = 0; k < K_; ++k) {
                counts_[k] += double(start_[k + 1]);
                start_[k + 1] += start_[k];
            }
            next_.assign(start_.begin(), start_.end() - 1);
            for (std::ptrdiff_t j = 0; j < cn; ++j) order_[next_[assign_[j]]++] = j;
            // 3. per word: sum of its positions, a block of channel rows at a time
            if (c >= kPackedChannels)
                word_sums_packed(s, c0, cn, first);
            else
                word_sums_rows(s, c0, cn, plane, first);
        }
    }

  private:
    static constexpr std::ptrdiff_t kRows = 8;
    static constexpr std::ptrdiff_t NR = PanelShape<T>::NR;
    // From this many channels the word sums read rows transposed to
    // position-major (word_sums_packed); with fewer, the extra transposing
    // pass costs more than the scattered reads it saves.
    static constexpr std::ptrdiff_t kPackedChannels = 128;

    // Rows [r0, r1) of a panel of PB positions, ld apart, into L2 (not L1,
    // where the current panel's rows already fill the sets they map to).
    static void prefetch_rows(const T* panel, std::ptrdiff_t ld, std::ptrdiff_t r0, std::ptrdiff_t r1) {
        for (std::ptrdiff_t r = r0; r < r1; ++r) {
            __builtin_prefetch(panel + r * ld, 0, 2);
            __builtin_prefetch(panel + r * ld + PB - 1, 0, 2);
        }
    }

    // The chunk [c0, c0 + cn)'s rows, R at a time (8 when the rows fit in
    // half of L1, else 4), members of each word read in place.
    void word_sums_rows(std::ptrdiff_t s, std::ptrdiff_t c0, std::ptrdiff_t cn, bool plane, bool first) {
        const std::ptrdiff_t c = a_.c;
        const std::ptrdiff_t R = cn * std::ptrdiff_t(sizeof(T)) * kRows <= 16384 ? kRows : kRows / 2;
        for (std::ptrdiff_t ch0 = 0; ch0 < c; ch0 += R) {
            const std::ptrdiff_t nr = std::min(R, c - ch0);
            const T* rows;  // nr rows of the chunk's positions, ld apart
            std::ptrdiff_t ld;
            if (plane) {
                rows = reinterpret_cast<const T*>(a_.data + s * a_.sn + ch0 * a_.sc) + c0;
                ld = a_.sc / std::ptrdiff_t(sizeof(T));
            } else {
                for (std::ptrdiff_t r = 0; r < nr; ++r)
                    gather_positions<T>(a_, s, ch0 + r, c0, c0 + cn, row_.data() + r * CH);
                rows = row_.data();
                ld = CH;
            }
            if (nr == kRows)
                add_word_sums<kRows>(rows, ld, ch0, first);
            else if (nr == kRows / 2)
                add_word_sums<kRows / 2>(rows, ld, ch0, first);
            else
                for (std::ptrdiff_t r = 0; r < nr; ++r) add_word_sums<1>(rows + r * ld, ld, ch0 + r, first);
        }
    }

    // sums[k][ch0 + r] (+)= sum over word k's positions of rows[r * ld + j],
    // for r < R: R float sums per word (at most CH terms), then double.
    template <int R>
    void add_word_sums(const T* rows, std::ptrdiff_t ld, std::ptrdiff_t ch0, bool overwrite) {
        for (std::ptrdiff_t k = 0; k < K_; ++k) {
            const std::ptrdiff_t* idx = order_.data() + start_[k];
            const std::ptrdiff_t n = start_[k + 1] - start_[k];
            T t[R] = {};
            for (std::ptrdiff_t i = 0; i < n; ++i) {
                const T* x = rows + idx[i];
                for (int r = 0; r < R; ++r) t[r] += x[r * ld];
            }
            store_word_sums(k, ch0, t, R, overwrite);
        }
    }

    // The chunk's rows NR at a time, first transposed into a position-major
    // micro-panel: one member of a word is then two vector loads, not NR
    // scattered scalars. Same sums, in the same order, as word_sums_rows.
    void word_sums_packed(std::ptrdiff_t s, std::ptrdiff_t c0, std::ptrdiff_t cn, bool first) {
        const std::ptrdiff_t c = a_.c;
        T t[NR];
        for (std::ptrdiff_t ch0 = 0; ch0 < c; ch0 += NR) {
            const std::ptrdiff_t nr = std::min(NR, c - ch0);
            const T* rows[NR];
            channel_rows<T>(a_, s, c0, cn, ch0, ch0 + nr, rows, row_.data(), CH);
            mk_.pack_panel(rows, nr, cn, tpanel_.data());
            for (std::ptrdiff_t k = 0; k < K_; ++k) {
                mk_.panel_row_sums(tpanel_.data(), order_.data() + start_[k], start_[k + 1] - start_[k], t);
                store_word_sums(k, ch0, t, nr, first);
            }
        }
    }

    void store_word_sums(std::ptrdiff_t k, std::ptrdiff_t ch0, const T* t, std::ptrdiff_t nr, bool overwrite) {
        double* dst = sums_.data() + k * a_.c + ch0;
        if (overwrite)
            for (std::ptrdiff_t r = 0; r < nr; ++r) dst[r] = t[r];
        else
            for (std::ptrdiff_t r = 0; r < nr; ++r) dst[r] += t[r];
    }

    Activations a_{};
    Microkernels<T> mk_{};
    const T* wp_ = nullptr;
    const T* wn_ = nullptr;
    std::ptrdiff_t K_ = 0, Kpad_ = 0;
    std::vector<T> panel_, dots_, best_, row_, tpanel_;
    std::vector<std::ptrdiff_t> assign_, order_, start_, next_;
    std::vector<double> sums_, counts_;
};

// The VLAD vector of one sample from its per-word sums (K, c) and counts, in
// two passes over words (each pass may be split across threads):
//  1. per word: residual norms, hence the word's scale under the chosen
//     normalizations, and its share of the squared global norm;
//  2. per word: each residual once, transformed and scaled.
struct VladWordStats {
    double scale = 0;  // multiplies the residual (0 for a residual at rounding level)
    double share = 0;  // contribution to the squared norm after scaling and signed sqrt
    bool finite = true;
};

// The dictionary as the kernels read it: words packed four at a time,
// channel-major, and their squared norms (+inf for the padding words).
template <class T>
struct VladWords {
    const T* words = nullptr;  // (K, c) C-contiguous
    std::ptrdiff_t K = 0, Kpad = 0, c = 0;
    std::vector<T> packed, norms, copy;  // copy: the words last packed

    // Packs `w` unless it equals the words packed last time (the usual case:
    // one dictionary, many calls).
    void set(const T* w, std::ptrdiff_t n_words, std::ptrdiff_t n_channels, const Microkernels<T>& mk) {
        words = w;
        const std::size_t count = static_cast<std::size_t>(n_words * n_channels);
        if (K == n_words && c == n_channels && copy.size() == count &&
            std::memcmp(copy.data(), w, count * sizeof(T)) == 0)
            return;
        K = n_words;
        c = n_channels;
        Kpad = (K + 3) / 4 * 4;
        copy.assign(w, w + count);
        packed.assign(Kpad * c, T(0));
        norms.assign(Kpad, std::numeric_limits<T>::infinity());
        for (std::ptrdiff_t k = 0; k < K; ++k) {
            for (std::ptrdiff_t ch = 0; ch < c; ++ch) packed[((k / 4) * c + ch) * 4 + k % 4] = w[k * c + ch];
            norms[k] = static_cast<T>(mk.sum_squares(w + k * c, c));
        }
    }
};

template <class T>
void vlad_word_stats(const double* sums, const double* counts, const VladWords<T>& dict, std::ptrdiff_t k_begin,
                     std::ptrdiff_t k_end, const VladOptions& opt, const Microkernels<T>& mk, VladWordStats* stats) {
    // A residual at rounding level (e.g. a word whose only member is the word
    // itself) is exactly zero in exact arithmetic; keep it zero so that
    // intra-normalization does not blow rounding noise up to a unit vector.
    const double tol = 100.0 * std::numeric_limits<T>::epsilon();
    const std::ptrdiff_t c = dict.c;
    for (std::ptrdiff_t k = k_begin; k < k_end; ++k) {
        const double n = counts[k];
        double r[3];  // sum r^2, sum |r|, sum s^2
        mk.vlad_residual_stats(sums + k * c, dict.words + k * c, c, n, r);
        const double ss = r[0], abs_sum = r[1], s_norm = r[2];
        VladWordStats& st = stats[k];
        st.finite = std::isfinite(ss) && std::isfinite(s_norm);  // NaN/inf activations
        if (!st.finite || std::sqrt(ss) <= tol * (std::sqrt(s_norm) + n * std::sqrt(double(dict.norms[k])))) {
            st.scale = st.share = 0;
            continue;
        }
        st.scale = opt.intra_normalize ? 1.0 / std::sqrt(ss) : 1.0;
        // z = r * scale: the squared norm of sign(z) sqrt|z| is Σ|z|, of z itself Σ z²
        st.share = opt.signed_sqrt ? st.scale * abs_sum : st.scale * st.scale * ss;
    }
}

// Pass 2 for one sample, given every word's stats and the global 1/norm.
template <class T>
void vlad_write_words(const double* sums, const double* counts, const VladWords<T>& dict, std::ptrdiff_t k_begin,
                      std::ptrdiff_t k_end, const VladOptions& opt, const Microkernels<T>& mk,
                      const VladWordStats* stats, double inv_norm, T* out) {
    const std::ptrdiff_t c = dict.c;
    for (std::ptrdiff_t k = k_begin; k < k_end; ++k)
        mk.vlad_residual_write(sums + k * c, dict.words + k * c, c, counts[k], stats[k].scale, inv_norm,
                               opt.signed_sqrt, out + k * c);
}

// 1/(global norm) from every word's stats, or NaN when some word is not
// finite (the sample is then written as NaN; Python reports it).
inline double vlad_inverse_norm(const std::vector<VladWordStats>& stats, const VladOptions& opt) {
    double total = 0;
    for (const auto& st : stats) {
        if (!st.finite) return std::numeric_limits<double>::quiet_NaN();
        total += st.share;
    }
    return opt.l2_normalize && total > 0 ? 1.0 / std::sqrt(total) : 1.0;
}

// Both passes for one sample on one thread.
template <class T>
void write_vlad(const double* sums, const double* counts, const VladWords<T>& dict, const VladOptions& opt,
                const Microkernels<T>& mk, T* out, std::vector<VladWordStats>& stats) {
    stats.resize(dict.K);
    vlad_word_stats(sums, counts, dict, 0, dict.K, opt, mk, stats.data());
    const double inv = vlad_inverse_norm(stats, opt);
    if (std::isnan(inv)) {
        std::fill(out, out + dict.K * dict.c, std::numeric_limits<T>::quiet_NaN());
        return;
    }
    vlad_write_words(sums, counts, dict, 0, dict.K, opt, mk, stats.data(), inv, out);
}

template <class T>
struct VladState {
    VladWords<T> dict;
    std::vector<VladWorker<T>> workers;
    std::vector<VladWordStats> stats;
};

// words: (K, c) C-contiguous dictionary; out: (n, K*c)
template <class T>
void vlad(const Activations& a, const T* words, std::ptrdiff_t K, const VladOptions& opt, T* out,
          int n_threads) {
    check_activations(a);
    if (K <= 0) throw std::invalid_argument("VLAD dictionary must have at least one word");
    const std::ptrdiff_t c = a.c, M = a.positions();
    const int nt = threads_for(double(a.n) * K * c * M * 2, n_threads);
    const Microkernels<T> mk = microkernels<T>();
    // kept by the calling thread between calls: packed words, one worker per part
    auto& state = calling_thread_state<VladState<T>>();
    const VladWords<T>& dict = state.dict;
    auto& workers = state.workers;
    state.dict.set(words, K, c, mk);
    if (static_cast<int>(workers.size()) < nt) workers.resize(nt);
    for (int t = 0; t < nt; ++t) workers[t].prepare(a, dict.packed.data(), dict.norms.data(), K, dict.Kpad);
    const std::ptrdiff_t F = K * c;
    if (a.n >= nt) {  // whole samples per thread
        parallel_chunks(a.n, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int t) {
            std::vector<VladWordStats> stats;
            for (std::ptrdiff_t s = lo; s < hi; ++s) {
                workers[t].accumulate(s, 0, M, true);
                write_vlad(workers[t].sums().data(), workers[t].counts().data(), dict, opt, mk, out + s * F, stats);
            }
        });
        return;
    }
    // threads share a sample: ranges of its positions; then ranges of words
    // (partial sums added up, residual stats); then the normalized output
    // positions split at panel boundaries: no thread computes a padded panel
    // that a whole one would have covered
    constexpr std::ptrdiff_t PB = VladWorker<T>::PB;
    const std::ptrdiff_t panels = (M + PB - 1) / PB;
    const int used = static_cast<int>(std::min<std::ptrdiff_t>(nt, panels));
    auto& stats = state.stats;
    stats.resize(K);
    double* sums = workers[0].sums().data();
    double* counts = workers[0].counts().data();
    for (std::ptrdiff_t s = 0; s < a.n; ++s) {
        parallel_chunks(panels, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int t) {
            workers[t].accumulate(s, lo * PB, std::min(M, hi * PB), true);
        });
        parallel_chunks(K, nt, [&](std::ptrdiff_t k0, std::ptrdiff_t k1, int) {
            for (int t = 1; t < used; ++t) {
                const double* other = workers[t].sums().data();
                for (std::ptrdiff_t i = k0 * c; i < k1 * c; ++i) sums[i] += other[i];
                for (std::ptrdiff_t k = k0; k < k1; ++k) counts[k] += workers[t].counts()[k];
            }
            vlad_word_stats(sums, counts, dict, k0, k1, opt, mk, stats.data());
        });
        const double inv = vlad_inverse_norm(stats, opt);
        T* o = out + s * F;
        if (std::isnan(inv)) {
            std::fill(o, o + F, std::numeric_limits<T>::quiet_NaN());
            continue;
        }
        parallel_chunks(K, nt, [&](std::ptrdiff_t k0, std::ptrdiff_t k1, int) {
            vlad_write_words(sums, counts, dict, k0, k1, opt, mk, stats.data(), inv, o);
        });
    }
}

}  // namespace microtex::detail
