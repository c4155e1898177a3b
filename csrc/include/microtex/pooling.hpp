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

// ---------------------------------------------------------------- mean / max
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

// Accumulates G = F F^T over a range of positions into a caller-owned double
// matrix (stride `rows()`, upper triangle), BLIS-style: per chunk of KC
// positions the channel rows are packed into k-major micro-panels of NR = 2W
// channels (8 x 8 in-register transposes), then every 6 x NR tile on or above
// the diagonal is a sum of outer products over the chunk (gram_panel_tile):
// one packed panel (KC x NR, in L1) against six rows read from the packed
// panels at stride NR (streamed from L2). Float sums over a chunk go to double.
//
// With many channels the double accumulator (2 MiB at 512) does not stay in
// cache, and streaming it in and out per chunk costs as much as the tiles at
// VGG's deeper layers. There, `pack_all` packs every chunk first (threads
// sharing a sample pack a share each) and `strips` finishes the triangle in
// strips of kStripRows rows, each accumulated over all chunks in a small
// accumulator and handed on for output while it is still in cache.
template <class T>
class GramWorker {
  public:
    static constexpr std::ptrdiff_t W = generic::vec32<T>::lanes;
    static constexpr std::ptrdiff_t NR = 2 * W;  // channels per packed micro-panel
    static constexpr std::ptrdiff_t MR = 6;      // rows per tile
    static constexpr std::ptrdiff_t KC = 256;    // positions per chunk: a 16 KiB float panel
    static constexpr std::ptrdiff_t kStripRows = 8 * MR;

    // `scratch` holds scratch_size(c, positions) items (contents irrelevant):
    // packed panels for `positions` positions (KC for chunk-by-chunk
    // accumulation, all of them for strips), then one zero panel that stands
    // in for rows past the last panel.
    GramWorker(const Activations& a, T* scratch, std::ptrdiff_t positions)
        : a_(a),
          mk_(microkernels<T>()),
          panel_rows_((a.c + NR - 1) / NR * NR),
          rows_(padded_rows(a.c)),
          packed_(scratch),
          zeros_(scratch + panel_rows_ * positions),
          src_(panel_rows_, nullptr) {
        std::fill(zeros_, zeros_ + KC * NR, T(0));
    }

    static std::ptrdiff_t scratch_size(std::ptrdiff_t c, std::ptrdiff_t positions) {
        return (c + NR - 1) / NR * NR * positions + NR * KC;
    }
    // accumulator side: a multiple of MR and NR, so that tiles never leave it
    static std::ptrdiff_t padded_rows(std::ptrdiff_t c) { return (c + 47) / 48 * 48; }
    // Strips pay off when the accumulator would leave L2 and the packed
    // positions stay modest (at most a few MiB).
    static bool use_strips(std::ptrdiff_t c, std::ptrdiff_t M) { return padded_rows(c) >= 384 && M <= 8 * KC; }

    // acc (+)= F F^T over positions [p_begin, p_end) of sample s, for the rows
    // [i_begin, i_end) of the upper triangle (i_begin a multiple of MR); the
    // first chunk overwrites when `overwrite` (no need to zero acc).
    void accumulate(std::ptrdiff_t s, std::ptrdiff_t p_begin, std::ptrdiff_t p_end, double* acc, bool overwrite,
                    std::ptrdiff_t i_begin = 0, std::ptrdiff_t i_end = -1) {
        if (i_end < 0) i_end = a_.c;
        for (std::ptrdiff_t k0 = p_begin; k0 < p_end; k0 += KC) {
            const std::ptrdiff_t kc = std::min(KC, p_end - k0);
            pack_chunk(s, k0, kc, i_begin / NR * NR, a_.c, packed_);
            tiles(packed_, kc, i_begin, i_end, acc, 0, overwrite && k0 == p_begin);
        }
    }

    // Packs channels [j_begin, j_end) (multiples of NR, or c) of all of
    // sample s's positions, chunk after chunk, for strips(). Workers made on
    // the same scratch may pack disjoint channel ranges at once.
    void pack_all(std::ptrdiff_t s, std::ptrdiff_t j_begin, std::ptrdiff_t j_end) {
        const std::ptrdiff_t M = a_.positions();
        for (std::ptrdiff_t k0 = 0; k0 < M; k0 += KC)
            pack_chunk(s, k0, std::min(KC, M - k0), j_begin, j_end, packed_ + panel_rows_ * k0);
    }

    // Rows [i_begin, i_end) of the triangle of the sample last packed by
    // pack_all (channels from i_begin / NR * NR on), in strips: for each,
    // acc (kStripRows x rows(), overwritten) holds rows [i0, i1) and
    // done(acc, i0, i1) is called.
    template <class Done>
    void strips(double* acc, std::ptrdiff_t i_begin, std::ptrdiff_t i_end, Done&& done) {
        const std::ptrdiff_t M = a_.positions();
        for (std::ptrdiff_t i0 = i_begin; i0 < i_end; i0 += kStripRows) {
            const std::ptrdiff_t i1 = std::min(i0 + kStripRows, i_end);
            for (std::ptrdiff_t k0 = 0; k0 < M; k0 += KC)
                tiles(packed_ + panel_rows_ * k0, std::min(KC, M - k0), i0, i1, acc, i0, k0 == 0);
            done(static_cast<const double*>(acc), i0, i1);
        }
    }

  private:
    // Channel rows [j_begin, j_end) of positions [k0, k0 + kc), packed: panel
    // jb holds channels [jb NR, jb NR + NR) at dst[jb NR kc + k NR + r].
    void pack_chunk(std::ptrdiff_t s, std::ptrdiff_t k0, std::ptrdiff_t kc, std::ptrdiff_t j_begin,
                    std::ptrdiff_t j_end, T* dst) {
        if (!a_.contiguous_planes(sizeof(T)) && stage_.empty()) stage_.resize(a_.c * KC);
        channel_rows<T>(a_, s, k0, kc, j_begin, j_end, src_.data() + j_begin, stage_.data(), KC);
        for (std::ptrdiff_t j0 = j_begin; j0 < j_end; j0 += NR)
            mk_.pack_panel(src_.data() + j0, std::min(NR, j_end - j0), kc, dst + j0 * kc);
    }

    // Tiles on or above the diagonal for rows [i_begin, i_end) of one packed
    // chunk: six rows (in L1) against the packed panels to their right, one
    // sequential stream from L2. Row i goes to acc row i - acc_row0.
    void tiles(const T* packed, std::ptrdiff_t kc, std::ptrdiff_t i_begin, std::ptrdiff_t i_end, double* acc,
               std::ptrdiff_t acc_row0, bool overwrite) {
        const std::ptrdiff_t c = a_.c;
        for (std::ptrdiff_t i0 = i_begin; i0 < i_end; i0 += MR) {
            const T* rows[MR];
            for (std::ptrdiff_t r = 0; r < MR; ++r) {
                const std::ptrdiff_t i = i0 + r;
                rows[r] = i < panel_rows_ ? packed + (i / NR) * NR * kc + i % NR : zeros_;
            }
            for (std::ptrdiff_t j0 = i0 / NR * NR; j0 < c; j0 += NR)
                mk_.gram_panel_tile(rows, packed + j0 * kc, kc, acc + (i0 - acc_row0) * rows_ + j0, rows_, overwrite);
        }
    }

    const Activations& a_;
    Microkernels<T> mk_;
    std::ptrdiff_t panel_rows_, rows_;
    T* packed_;
    T* zeros_;
    std::vector<T> stage_;
    std::vector<const T*> src_;
};

// Writes rows [i_begin, i_end) of the normalized Gram matrix of one sample
// from the upper triangles of one or more partial double accumulators
// (summed), whose first row is row `acc_row0`. The full layout goes in
// B x B tiles, each written as is and then, transposed in a small buffer,
// at its mirror position (both as contiguous row pieces), so that neither
// the reads nor the mirrored writes stride across the whole matrix.
template <class T>
void write_gram(const std::vector<const double*>& accs, std::ptrdiff_t stride, std::ptrdiff_t acc_row0,
                std::ptrdiff_t c, std::ptrdiff_t M, GramNormalization norm, bool triu, T* out,
                std::ptrdiff_t i_begin = 0, std::ptrdiff_t i_end = -1) {
    if (i_end < 0) i_end = c;
    double scale = 1.0;
    if (norm == GramNormalization::spatial) scale = 1.0 / double(M);
    if (norm == GramNormalization::lubbers) scale = 1.0 / (2.0 * double(c) * double(M));
    // dst[j - j0] = f * G[i][j] for j in [j0, j1)
    auto row_piece = [&](std::ptrdiff_t i, std::ptrdiff_t j0, std::ptrdiff_t j1, double f, T* dst) {
        const std::ptrdiff_t base = (i - acc_row0) * stride;
        const double* a0 = accs[0] + base;
        if (accs.size() == 1) {
            for (std::ptrdiff_t j = j0; j < j1; ++j) dst[j - j0] = static_cast<T>(a0[j] * f);
            return;
        }
        if (accs.size() == 2) {
            const double* a1 = accs[1] + base;
            for (std::ptrdiff_t j = j0; j < j1; ++j) dst[j - j0] = static_cast<T>((a0[j] + a1[j]) * f);
            return;
        }
        for (std::ptrdiff_t j = j0; j < j1; ++j) {
            double v = a0[j];
            for (std::size_t t = 1; t < accs.size(); ++t) v += accs[t][base + j];
            dst[j - j0] = static_cast<T>(v * f);
        }
    };
    if (triu) {
        const double off = std::sqrt(2.0) * scale;
        std::ptrdiff_t idx = i_begin * c - i_begin * (i_begin - 1) / 2;  // where row i_begin starts
        for (std::ptrdiff_t i = i_begin; i < i_end; ++i) {
            row_piece(i, i, i + 1, scale, out + idx);
            row_piece(i, i + 1, c, off, out + idx + 1);
            idx += c - i;
        }
        return;
    }
    constexpr std::ptrdiff_t B = 32;
    T flip[B][B];
    for (std::ptrdiff_t i0 = i_begin; i0 < i_end; i0 += B) {
        const std::ptrdiff_t i1 = std::min(i0 + B, i_end);
        for (std::ptrdiff_t j0 = i0; j0 < c; j0 += B) {
            const std::ptrdiff_t j1 = std::min(j0 + B, c);
            // upper part of the tile, G[i][j] for j >= i, then its transpose
            for (std::ptrdiff_t i = i0; i < i1; ++i) {
                const std::ptrdiff_t from = std::max(i, j0);
                if (from >= j1) continue;
                T* row = out + i * c;
                row_piece(i, from, j1, scale, row + from);
                for (std::ptrdiff_t j = from; j < j1; ++j) flip[j - j0][i - i0] = row[j];
            }
            // the mirror: G[j][i] = G[i][j] for i in [i0, min(i1, j + 1))
            for (std::ptrdiff_t j = j0; j < j1; ++j) {
                const std::ptrdiff_t n = std::min(i1, j + 1) - i0;
                T* dst = out + j * c + i0;
                for (std::ptrdiff_t i = 0; i < n; ++i) dst[i] = flip[j - j0][i];
            }
        }
    }
}

// Grow-only scratch memory of the calling thread for gram(): accumulators and
// packed panels of each part. Allocating and first touching megabytes per
// call cost as much as the arithmetic at the deeper VGG layers.
template <class T>
struct GramScratch {
    std::vector<double> acc;
    std::vector<T> panels;
    void reserve(std::size_t acc_items, std::size_t panel_items) {
        if (acc.size() < acc_items) acc.resize(acc_items);
        if (panels.size() < panel_items) panels.resize(panel_items);
    }
};

// Row boundaries (multiples of MR, then c) splitting the upper triangle's
// tiles into `parts` runs of about equal work.
inline std::vector<std::ptrdiff_t> gram_row_split(std::ptrdiff_t c, std::ptrdiff_t MR, std::ptrdiff_t NR, int parts) {
    std::vector<double> work;
    double total = 0;
    for (std::ptrdiff_t i0 = 0; i0 < c; i0 += MR) total += work.emplace_back(double(c - i0 / NR * NR));
    std::vector<std::ptrdiff_t> bounds{0};
    double run = 0;
    for (std::size_t g = 0; g < work.size(); ++g) {
        run += work[g];
        if (static_cast<int>(bounds.size()) < parts && run >= total * double(bounds.size()) / parts)
            bounds.push_back(std::min<std::ptrdiff_t>(c, std::ptrdiff_t(g + 1) * MR));
    }
    while (static_cast<int>(bounds.size()) <= parts) bounds.push_back(c);
    return bounds;  // parts + 1 entries, non-decreasing
}

template <class T>
void gram(const Activations& a, GramNormalization norm, bool triu, T* out, int n_threads) {
    using Worker = GramWorker<T>;
    check_activations(a);
    const std::ptrdiff_t c = a.c, M = a.positions(), F = gram_features(c, triu);
    const std::ptrdiff_t rows = Worker::padded_rows(c);
    const int nt = threads_for(double(a.n) * c * c * M, n_threads);
    // Three ways to share the work:
    //  * whole samples per thread (at least as many samples as threads);
    //  * rows of one sample's triangle per thread, each packing the panels it
    //    reads (few positions per channel: packing is cheap next to the tiles);
    //  * positions of one sample per thread, each with an accumulator of its
    //    own, summed on output (many positions: packing is not repeated).
    // The first two go strip by strip when Worker::use_strips says so.
    enum { samples, rows_of_sample, positions_of_sample } mode =
        a.n >= nt ? samples : (M <= 2 * c ? rows_of_sample : positions_of_sample);
    const bool strips = mode != positions_of_sample && Worker::use_strips(c, M);
    const int parts = mode == positions_of_sample ? static_cast<int>(std::min<std::ptrdiff_t>(nt, M)) : nt;
    const int accs_needed = mode == rows_of_sample && !strips ? 1 : parts;
    const std::ptrdiff_t A = (strips ? Worker::kStripRows : rows) * rows;  // items per accumulator
    const std::ptrdiff_t P = Worker::scratch_size(c, strips ? M : Worker::KC);
    // packed panels: one set shared by all parts when they split one sample's strips
    const bool shared_panels = strips && mode == rows_of_sample;
    auto& scratch = calling_thread_state<GramScratch<T>>();
    scratch.reserve(std::size_t(accs_needed * A), std::size_t((shared_panels ? 1 : parts) * P));
    std::vector<Worker> workers;
    workers.reserve(parts);
    for (int t = 0; t < parts; ++t)
        workers.emplace_back(a, scratch.panels.data() + (shared_panels ? 0 : t) * P, strips ? M : Worker::KC);
    std::vector<const double*> accs;
    for (int t = 0; t < accs_needed; ++t) accs.push_back(scratch.acc.data() + t * A);
    // rows [i_begin, i_end) of sample s by worker t, in its own accumulator
    auto part_of_sample = [&](std::ptrdiff_t s, int t, std::ptrdiff_t i_begin, std::ptrdiff_t i_end) {
        double* acc = scratch.acc.data() + (accs_needed == 1 ? 0 : t) * A;
        if (strips) {
            workers[t].strips(acc, i_begin, i_end, [&](const double* strip, std::ptrdiff_t i0, std::ptrdiff_t i1) {
                write_gram<T>({strip}, rows, i0, c, M, norm, triu, out + s * F, i0, i1);
            });
        } else {
            workers[t].accumulate(s, 0, M, acc, true, i_begin, i_end);
            write_gram<T>({acc}, rows, 0, c, M, norm, triu, out + s * F, i_begin, i_end);
        }
    };
    if (mode == samples) {
        parallel_chunks(a.n, parts, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int t) {
            for (std::ptrdiff_t s = lo; s < hi; ++s) {
                if (strips) workers[t].pack_all(s, 0, c);
                part_of_sample(s, t, 0, c);
            }
        });
        return;
    }
    const auto bounds = gram_row_split(c, Worker::MR, Worker::NR, parts);
    for (std::ptrdiff_t s = 0; s < a.n; ++s) {
        if (mode == rows_of_sample) {
            if (shared_panels) {  // every part packs a share of the panels, then all read them
                const std::ptrdiff_t panels = (c + Worker::NR - 1) / Worker::NR;
                parallel_chunks(panels, parts, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int t) {
                    workers[t].pack_all(s, lo * Worker::NR, std::min(c, hi * Worker::NR));
                });
            }
            parallel_chunks(parts, parts, [&](std::ptrdiff_t, std::ptrdiff_t, int t) {
                if (bounds[t] < bounds[t + 1]) part_of_sample(s, t, bounds[t], bounds[t + 1]);
            });
        } else {
            parallel_chunks(M, parts, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int t) {
                workers[t].accumulate(s, lo, hi, scratch.acc.data() + t * A, true);
            });
            parallel_chunks(parts, parts, [&](std::ptrdiff_t, std::ptrdiff_t, int t) {
                write_gram(accs, rows, 0, c, M, norm, triu, out + s * F, bounds[t], bounds[t + 1]);
            });
        }
    }
}

// ---------------------------------------------------------------- vlad
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
                // arithmetic (batch 8, activations from memory: 1.17-1.25x at
                // 128-512 channels; batch 1, from cache: 0.96-1.11x on two
                // threads, 0.91-1.05x on one).
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
    static constexpr std::ptrdiff_t NR = 2 * generic::vec32<T>::lanes;
    // From this many channels the word sums read rows transposed to
    // position-major. A/B in separate processes, one thread, best of 6-8
    // rounds, three times: 1.06-1.25x at batch 8 for 256x3136 and 512x784
    // (activations from memory), 0.98-1.15x at batch 1 (from cache); at 64
    // channels 0.86-0.93x, the extra pass costing more than it saves.
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
