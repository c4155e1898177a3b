// Pairwise squared Euclidean distances of feature vectors:
// D[i][j] = |a_i|^2 + |b_j|^2 - 2 a_i . b_j, for rows a_i of a (n_a x F) and
// b_j of b (n_b x F), or of a with itself (b null: the symmetric case).
// Output: a caller-owned, C-contiguous (n_a, n_b) double matrix.
// Header-only; no Python headers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/detail/microkernels.hpp"
#include "microtex/parallel.hpp"

namespace microtex::detail {

#ifdef MICROTEX_HAVE_AVX2_CLONE
#define MICROTEX_HAVE_AVX512_TILE 1
namespace avx512 {

// acc[r * ldc + q] (+)= sum_k a[r][k * NR] * B[k * NR + q] for a 12 x 2NR tile
// whose columns are two packed micro-panels B0 and B1 (NR = 64 / sizeof(T):
// one 512-bit register per panel and position), as gram_panel_tile does for
// 6 x NR with 256-bit registers: the same products and sums per lane, so the
// results are those of the AVX2 tile bit for bit (both use FMA).
template <class T>
__attribute__((target("avx512f,fma"))) void pairwise_tile(const T* const* __restrict a, const T* __restrict B0,
                                                          const T* __restrict B1, long kc, double* __restrict acc,
                                                          long ldc, bool overwrite) {
    typedef T V __attribute__((vector_size(64)));
    typedef double D __attribute__((vector_size(64)));
    constexpr int NR = 64 / sizeof(T), MR = 12;
    const T* rows[MR];
    for (int r = 0; r < MR; ++r) rows[r] = a[r];
    V c[MR][2];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = V{};
    for (long k = 0; k < kc; ++k) {
        V b0, b1;
        __builtin_memcpy(&b0, B0 + k * NR, 64);
        __builtin_memcpy(&b1, B1 + k * NR, 64);
        const long o = k * NR;
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            const T x = rows[r][o];
            c[r][0] += x * b0;
            c[r][1] += x * b1;
        }
    }
    for (int r = 0; r < MR; ++r) {
        for (int h = 0; h < 2; ++h) {
            double* d = acc + r * ldc + h * NR;
            D part[sizeof(T) == 4 ? 2 : 1];
            if constexpr (sizeof(T) == 4) {
                typedef float H __attribute__((vector_size(32)));
                const H lo = __builtin_shufflevector(c[r][h], c[r][h], 0, 1, 2, 3, 4, 5, 6, 7);
                const H hi = __builtin_shufflevector(c[r][h], c[r][h], 8, 9, 10, 11, 12, 13, 14, 15);
                part[0] = __builtin_convertvector(lo, D);
                part[1] = __builtin_convertvector(hi, D);
            } else {
                part[0] = c[r][h];
            }
            for (std::size_t p = 0; p < sizeof(part) / sizeof(D); ++p) {
                D v = part[p];
                if (!overwrite) {
                    D old;
                    __builtin_memcpy(&old, d + 8 * p, 64);
                    v += old;
                }
                __builtin_memcpy(d + 8 * p, &v, 64);
            }
        }
    }
}

}  // namespace avx512
#endif

// The dot products are the Gram kernel's (pooling/gram.hpp) with vectors for
// channels and features for positions: per chunk of KC features, the rows of
// a block are packed into k-major micro-panels of NR = 2W rows, and each
// 6 x NR tile is a sum of outer products over the chunk (gram_panel_tile):
// products and sums in T over the chunk, then added to double accumulators.
// The norms are the same sums (panel_sq_norms), so a row's norm equals its dot
// product with itself bit for bit and equal rows are exactly 0 apart.
//
// The work is split into output blocks of `block` x `block` rows (only
// I <= J in the symmetric case), claimed by threads one at a time. A block
// keeps its accumulator (block^2 doubles) and packs its two row blocks chunk
// by chunk, so memory stays a few hundred KiB per thread whatever F is, and a
// row is read once per block it meets, never as an N x N x F tensor.
template <class T>
class PairwiseDistances {
  public:
    static constexpr std::ptrdiff_t NR = PanelShape<T>::NR;  // rows per packed micro-panel
    static constexpr std::ptrdiff_t MR = PanelShape<T>::MR;  // rows per tile
    // features per chunk: float products summed over at most 256 terms before
    // they reach a double (relative error ~1e-5 of |a||b| in float32)
    static constexpr std::ptrdiff_t KC = 256;

    // a: n_a rows of F items, row i at a + i * lda; likewise b (or null).
    PairwiseDistances(const T* a, std::ptrdiff_t n_a, std::ptrdiff_t lda, const T* b, std::ptrdiff_t n_b,
                      std::ptrdiff_t ldb, std::ptrdiff_t F)
        : a_(a), b_(b ? b : a), n_a_(n_a), n_b_(b ? n_b : n_a), lda_(lda), ldb_(b ? ldb : lda), F_(F),
          symmetric_(b == nullptr), mk_(microkernels<T>()) {
#ifdef MICROTEX_HAVE_AVX512_TILE
        wide_ = cpu_has_avx512f();
#endif
        if (n_a < 0 || n_b_ < 0 || F < 0) throw std::invalid_argument("negative size");
        if (lda < F || ldb_ < F) throw std::invalid_argument("row stride shorter than a row");
    }

    void run(double* out, int n_threads) {
        const double work = double(n_a_) * double(n_b_) * double(std::max<std::ptrdiff_t>(F_, 1));
        const int nt = threads_for(symmetric_ ? work / 2 : work, n_threads);
        block_ = choose_block(nt);
        const std::ptrdiff_t rows_a = blocks(n_a_), rows_b = blocks(n_b_);
        std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> tasks;
        for (std::ptrdiff_t I = 0; I < rows_a; ++I)
            for (std::ptrdiff_t J = symmetric_ ? I : 0; J < rows_b; ++J) tasks.emplace_back(I, J);
        norms_a_.assign(n_a_, 0.0);
        if (!symmetric_) norms_b_.assign(n_b_, 0.0);
        // 1. dot products of the blocks into out, norms as they go
        std::atomic<std::size_t> next{0};
        const int parts = static_cast<int>(std::min<std::size_t>(nt, tasks.size()));
        parallel_chunks(parts, parts, [&](std::ptrdiff_t, std::ptrdiff_t, int) {
            Scratch s(block_);
            for (std::size_t k; (k = next.fetch_add(1)) < tasks.size();)
                block_products(tasks[k].first, tasks[k].second, s, out);
        });
        check_norms(norms_a_, "a");
        if (!symmetric_) check_norms(norms_b_, "b");
        // 2. distances from the products and the norms (and the lower triangle)
        finish(out, nt);
    }

  private:
    struct Scratch {
        std::vector<T> pa, pb;  // packed chunks of the two row blocks
        std::vector<T> zeros;   // stands in for tile rows past the block's last panel
        std::vector<double> acc;  // zero-filled once: with F = 0 no chunk overwrites it
        explicit Scratch(std::ptrdiff_t block)
            : pa(block * KC), pb(block * KC), zeros(NR * KC, T(0)), acc(block * block) {}
    };

    std::ptrdiff_t blocks(std::ptrdiff_t n) const { return (n + block_ - 1) / block_; }

    // Rows per block: a multiple of the tile's rows and columns (48 for 6 x 16
    // or 6 x 8 tiles, 96 for 12 x 32 or 12 x 16), at most 192 (the two packed
    // chunks and the accumulator, ~0.7 MiB in float32, stay in L2), and small
    // enough that every thread gets about three blocks to claim.
    std::ptrdiff_t choose_block(int nt) const {
        const std::ptrdiff_t quantum = wide_ ? 96 : 48;
        std::ptrdiff_t block = 192;
        for (; block > quantum; block -= quantum) {
            const std::ptrdiff_t na = (n_a_ + block - 1) / block, nb = (n_b_ + block - 1) / block;
            const std::ptrdiff_t tasks = symmetric_ ? na * (na + 1) / 2 : na * nb;
            if (tasks >= 3 * nt) break;
        }
        return block;
    }

    // Packs rows [r0, r0 + n) of x (stride ld), features [k0, k0 + kc), into
    // panels: panel p holds rows [p NR, p NR + NR) at dst[p NR kc + k NR + r].
    void pack(const T* x, std::ptrdiff_t ld, std::ptrdiff_t r0, std::ptrdiff_t n, std::ptrdiff_t k0,
              std::ptrdiff_t kc, T* dst) const {
        const T* rows[NR];
        for (std::ptrdiff_t p0 = 0; p0 < n; p0 += NR) {
            const std::ptrdiff_t m = std::min(NR, n - p0);
            for (std::ptrdiff_t r = 0; r < m; ++r) rows[r] = x + (r0 + p0 + r) * ld + k0;
            mk_.pack_panel(rows, m, kc, dst + p0 * kc);
        }
    }

    // out[i][j] = a_i . b_j for the rows of block I of a and block J of b (in
    // the symmetric diagonal blocks, only tiles reaching j >= i). The norms of
    // a block are computed by one task each: (I, I) in the symmetric case,
    // (I, 0) for a and (0, J) for b otherwise.
    void block_products(std::ptrdiff_t I, std::ptrdiff_t J, Scratch& s, double* out) {
        const std::ptrdiff_t i_lo = I * block_, ni = std::min(block_, n_a_ - i_lo);
        const std::ptrdiff_t j_lo = J * block_, nj = std::min(block_, n_b_ - j_lo);
        const bool same = symmetric_ && I == J;
        const bool norms_a = symmetric_ ? same : J == 0;
        const bool norms_b = !symmetric_ && I == 0;
        const std::ptrdiff_t ldc = block_, panel_rows_i = (ni + NR - 1) / NR * NR;
        for (std::ptrdiff_t k0 = 0; k0 < F_; k0 += KC) {
            const std::ptrdiff_t kc = std::min(KC, F_ - k0);
            pack(a_, lda_, i_lo, ni, k0, kc, s.pa.data());
            const T* pb = s.pa.data();
            if (!same) {
                pack(b_, ldb_, j_lo, nj, k0, kc, s.pb.data());
                pb = s.pb.data();
            }
            const std::ptrdiff_t mr = wide_ ? 2 * MR : MR, nr = wide_ ? 2 * NR : NR;
            const std::ptrdiff_t panel_rows_j = (nj + NR - 1) / NR * NR;
            for (std::ptrdiff_t i0 = 0; i0 < ni; i0 += mr) {
                const T* rows[2 * MR];
                for (std::ptrdiff_t r = 0; r < mr; ++r) {
                    const std::ptrdiff_t i = i0 + r;
                    rows[r] = i < panel_rows_i ? s.pa.data() + (i / NR) * NR * kc + i % NR : s.zeros.data();
                }
                for (std::ptrdiff_t j0 = same ? i0 / nr * nr : 0; j0 < nj; j0 += nr) {
                    double* acc = s.acc.data() + i0 * ldc + j0;
#ifdef MICROTEX_HAVE_AVX512_TILE
                    if (wide_) {
                        const T* b1 = j0 + NR < panel_rows_j ? pb + (j0 + NR) * kc : s.zeros.data();
                        avx512::pairwise_tile<T>(rows, pb + j0 * kc, b1, kc, acc, ldc, k0 == 0);
                        continue;
                    }
#endif
                    mk_.gram_panel_tile(rows, pb + j0 * kc, kc, acc, ldc, k0 == 0);
                }
            }
            if (norms_a)
                for (std::ptrdiff_t p0 = 0; p0 < ni; p0 += NR) panel_norms(s.pa.data() + p0 * kc, kc, i_lo + p0, ni - p0, norms_a_);
            if (norms_b)
                for (std::ptrdiff_t p0 = 0; p0 < nj; p0 += NR) panel_norms(pb + p0 * kc, kc, j_lo + p0, nj - p0, norms_b_);
        }
        for (std::ptrdiff_t i = 0; i < ni; ++i) {
            const double* src = s.acc.data() + i * ldc;
            double* dst = out + (i_lo + i) * n_b_ + j_lo;
            const std::ptrdiff_t from = same ? i : 0;
            std::copy(src + from, src + nj, dst + from);
        }
    }

    // norms[row0 + r] += squared norm of panel row r over the chunk, r < min(NR, n)
    void panel_norms(const T* panel, std::ptrdiff_t kc, std::ptrdiff_t row0, std::ptrdiff_t n,
                     std::vector<double>& norms) const {
        double sums[NR] = {};
        mk_.panel_sq_norms(panel, kc, sums);
        for (std::ptrdiff_t r = 0; r < std::min(NR, n); ++r) norms[row0 + r] += sums[r];
    }

    // A NaN or an infinity anywhere in a row makes its norm non-finite; so does
    // a float32 square (or chunk sum) beyond float32's range.
    static void check_norms(const std::vector<double>& norms, const char* which) {
        for (std::size_t i = 0; i < norms.size(); ++i)
            if (!std::isfinite(norms[i]))
                throw std::invalid_argument(
                    std::string(which) + " row " + std::to_string(i) + " has a non-finite value (NaN or inf)" +
                    (sizeof(T) == 4 ? " or values whose squares overflow float32" : ""));
    }

    // out[i][j] = max(|a_i|^2 + |b_j|^2 - 2 out[i][j], 0); in the symmetric
    // case the upper triangle is mirrored and the diagonal is 0, in TB x TB
    // tiles so that the mirrored writes do not stride across the whole matrix.
    void finish(double* out, int nt) const {
        const std::vector<double>& nb = symmetric_ ? norms_a_ : norms_b_;
        if (!symmetric_) {
            parallel_chunks(n_a_, std::min<std::ptrdiff_t>(nt, std::max<std::ptrdiff_t>(1, n_a_ * n_b_ / 65536)),
                            [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
                                for (std::ptrdiff_t i = lo; i < hi; ++i) {
                                    double* row = out + i * n_b_;
                                    const double ni = norms_a_[i];
                                    for (std::ptrdiff_t j = 0; j < n_b_; ++j)
                                        row[j] = std::max(ni + nb[j] - 2.0 * row[j], 0.0);
                                }
                            });
            return;
        }
        constexpr std::ptrdiff_t TB = 64;
        const std::ptrdiff_t n = n_a_, tiles = (n + TB - 1) / TB;
        std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> pairs;
        for (std::ptrdiff_t I = 0; I < tiles; ++I)
            for (std::ptrdiff_t J = I; J < tiles; ++J) pairs.emplace_back(I, J);
        const std::ptrdiff_t parts = std::min<std::ptrdiff_t>(nt, std::max<std::ptrdiff_t>(1, n * n / 131072));
        parallel_chunks(std::ptrdiff_t(pairs.size()), static_cast<int>(parts),
                        [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
                            for (std::ptrdiff_t p = lo; p < hi; ++p) {
                                const std::ptrdiff_t i0 = pairs[p].first * TB, j0 = pairs[p].second * TB;
                                const std::ptrdiff_t i1 = std::min(i0 + TB, n), j1 = std::min(j0 + TB, n);
                                for (std::ptrdiff_t i = i0; i < i1; ++i) {
                                    double* row = out + i * n;
                                    const double ni = norms_a_[i];
                                    for (std::ptrdiff_t j = std::max(j0, i + 1); j < j1; ++j)
                                        row[j] = std::max(ni + nb[j] - 2.0 * row[j], 0.0);
                                    if (i >= j0 && i < j1) row[i] = 0.0;
                                }
                                for (std::ptrdiff_t j = j0; j < j1; ++j) {
                                    double* dst = out + j * n;
                                    for (std::ptrdiff_t i = i0; i < std::min(i1, j); ++i) dst[i] = out[i * n + j];
                                }
                            }
                        });
    }

    const T* a_;
    const T* b_;
    std::ptrdiff_t n_a_, n_b_, lda_, ldb_, F_;
    bool symmetric_;
    Microkernels<T> mk_;
    bool wide_ = false;  // 12 x 2NR tiles in 512-bit registers (AVX-512F) instead of 6 x NR
    std::ptrdiff_t block_ = 192;
    std::vector<double> norms_a_, norms_b_;
};

template <class T>
void pairwise_sq_distances(const T* a, std::ptrdiff_t n_a, std::ptrdiff_t lda, const T* b, std::ptrdiff_t n_b,
                           std::ptrdiff_t ldb, std::ptrdiff_t F, double* out, int n_threads) {
    PairwiseDistances<T>(a, n_a, lda, b, n_b, ldb, F).run(out, n_threads);
}

}  // namespace microtex::detail
