// Gram pooling: G = F F^T per sample (F is c x h*w), float
// tiles accumulated in double; normalization sum | spatial (/M) | lubbers
// (/(2 c M)); layout full (c*c) or triu (c(c+1)/2, off-diagonal * sqrt 2).
// Outputs go to a caller-owned, C-contiguous (n, n_features) buffer.
// Header-only; no Python headers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/detail/microkernels.hpp"
#include "microtex/parallel.hpp"

namespace microtex::detail {

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
    static constexpr std::ptrdiff_t NR = PanelShape<T>::NR;  // channels per packed micro-panel
    static constexpr std::ptrdiff_t MR = PanelShape<T>::MR;  // rows per tile
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

}  // namespace microtex::detail
