// Two-point statistics S_ab(r) = sum_x a(x) b(x + r) / norm(r) of phase
// fields, periodic or not, with an optional mask; the centred (2c+1)^2 window
// of offsets. Definitions: python/microtex/features/spectra.py.
//
// Per image: forward FFTs of the phases used (two real fields packed into one
// complex transform and told apart by Hermitian symmetry), the products
// conj(F_a) F_b, and inverse FFTs of two products at once (each result is
// real, so one lands in the real part, the other in the imaginary part). The
// inverse is pruned: after the pass over columns only the 2c+1 rows of the
// window are transformed further. Non-periodic fields are zero-padded to a
// 2,3,5-smooth size >= H + c (offsets beyond c are never read, so padding by
// c suffices). Images are split across threads; each thread owns its buffers.
// Header-only, no Python.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <utility>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/parallel.hpp"
#include "microtex/spectra/fft.hpp"

namespace microtex::detail {

struct TwoPointShape {
    long n, H, W, K;  // data (n, H, W, K), C-contiguous
    long c;           // cutoff: window (2c+1, 2c+1)
    bool periodic;
    long n_mask;  // 0 (no mask), 1 (shared) or n
};

// Smallest normalization kept: below it a masked offset has (almost) no valid
// pair and its value would be rounding noise divided by noise.
template <class T>
inline T tiny_norm(T largest) {
    return T(16) * std::numeric_limits<T>::epsilon() * largest;
}

template <class T>
class TwoPointEngine {
  public:
    // One field: value(y, x) = base[(y W + x) stride] * (mask ? mask[y W + x] : 1)
    struct Field {
        const T* base;
        long stride;
        const T* mask;
    };
    // One correlation of fields a and b; its window (2c+1)^2 goes to
    // out[(i (2c+1) + j) out_stride] divided by norm: norm_map[i (2c+1) + j]
    // when given, else the periodic H W or the non-periodic count of valid pairs.
    struct Corr {
        int a, b;
        T* out;
        long out_stride;
        const T* norm_map;
        bool raw;  // no division at all (the mask's own correlation)
    };

    explicit TwoPointEngine(const TwoPointShape& s)
        : s_(s),
          P_(s.periodic ? s.H : next_smooth(s.H + s.c)),
          Q_(s.periodic ? s.W : next_smooth(s.W + s.c)),
          win_(2 * s.c + 1),
          fwd_p_(P_, -1),
          fwd_q_(Q_, -1),
          inv_q_(Q_, +1),
          inv_p_(P_, +1) {}

    // Threads inside each transform (split over lanes): for few, large images.
    void set_inner_threads(int n) { inner_threads_ = n < 1 ? 1 : n; }
    long padded_rows() const { return P_; }
    long padded_cols() const { return Q_; }

    // Per-thread buffers.
    struct Workspace {
        std::vector<T> a_re, a_im, b_re, b_im, w_re, w_im, scratch, d_re, d_im;
        std::vector<std::vector<T>> spec_re, spec_im;  // one Q x P spectrum per field
    };

    Workspace workspace(std::size_t n_fields) const {
        Workspace ws;
        const std::size_t pq = std::size_t(P_) * Q_;
        const std::size_t lanes = std::size_t(std::max({P_, Q_, win_}));
        ws.a_re.resize(pq), ws.a_im.resize(pq), ws.b_re.resize(pq), ws.b_im.resize(pq);
        ws.w_re.resize(pq), ws.w_im.resize(pq);
        const int radix = std::max({fwd_p_.max_radix(), fwd_q_.max_radix(), 5});
        ws.scratch.resize(2 * std::size_t(radix) * lanes);
        ws.d_re.resize(std::size_t(win_) * P_), ws.d_im.resize(std::size_t(win_) * P_);
        ws.spec_re.assign(n_fields, std::vector<T>(pq));
        ws.spec_im.assign(n_fields, std::vector<T>(pq));
        return ws;
    }

    // Spectra of all fields, then every correlation; ws must hold fields.size() spectra.
    void run(const std::vector<Field>& fields, const std::vector<Corr>& corrs, Workspace& ws) const {
        for (std::size_t f = 0; f < fields.size(); f += 2)
            forward(fields[f], f + 1 < fields.size() ? &fields[f + 1] : nullptr, ws, int(f));
        for (std::size_t k = 0; k < corrs.size(); k += 2)
            inverse(corrs[k], k + 1 < corrs.size() ? &corrs[k + 1] : nullptr, ws);
    }

  private:
    // plan.run over L lanes (row stride L), split into blocks of lanes across threads
    void pass(const FftPlan<T>& plan, T* re, T* im, long L, Workspace& ws) const {
        const int nt = int(std::min<long>(inner_threads_, L / 16));
        if (nt <= 1) {
            plan.run(re, im, ws.w_re.data(), ws.w_im.data(), L, L, ws.scratch.data());
            return;
        }
        const long blocks = (L + 7) / 8;  // whole vectors per thread
        parallel_chunks(blocks, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
            const long l0 = lo * 8, l1 = std::min<long>(hi * 8, L);
            T* scratch = ws.scratch.data() + 2 * long(plan.max_radix()) * l0;
            plan.run(re + l0, im + l0, ws.w_re.data() + l0, ws.w_im.data() + l0, l1 - l0, L, scratch);
        });
    }

    void fill(const Field& f, T* dst) const {
        const long H = s_.H, W = s_.W;
        for (long y = 0; y < H; ++y) {
            T* row = dst + y * W;
            const T* src = f.base + y * W * f.stride;
            if (f.mask) {
                const T* m = f.mask + y * W;
                for (long x = 0; x < W; ++x) row[x] = src[x * f.stride] * m[x];
            } else {
                for (long x = 0; x < W; ++x) row[x] = src[x * f.stride];
            }
        }
        std::fill(dst + H * W, dst + P_ * W, T(0));
    }

    void forward(const Field& f0, const Field* f1, Workspace& ws, int slot) const {
        const long W = s_.W, P = P_, Q = Q_;
        fill(f0, ws.a_re.data());
        if (f1)
            fill(*f1, ws.a_im.data());
        else
            std::fill(ws.a_im.begin(), ws.a_im.begin() + P * W, T(0));
        // along the rows' axis: P points, one lane per image column (zero columns need none)
        pass(fwd_p_, ws.a_re.data(), ws.a_im.data(), W, ws);
        transpose(ws.a_re.data(), P, W, W, ws.b_re.data(), P);
        transpose(ws.a_im.data(), P, W, W, ws.b_im.data(), P);
        std::fill(ws.b_re.begin() + W * P, ws.b_re.begin() + Q * P, T(0));
        std::fill(ws.b_im.begin() + W * P, ws.b_im.begin() + Q * P, T(0));
        pass(fwd_q_, ws.b_re.data(), ws.b_im.data(), P, ws);
        // spectrum layout [kq][kp]
        T* s0r = ws.spec_re[slot].data();
        T* s0i = ws.spec_im[slot].data();
        const T* zr = ws.b_re.data();
        const T* zi = ws.b_im.data();
        if (!f1) {
            std::copy(zr, zr + P * Q, s0r);
            std::copy(zi, zi + P * Q, s0i);
            return;
        }
        T* s1r = ws.spec_re[slot + 1].data();
        T* s1i = ws.spec_im[slot + 1].data();
        for (long kq = 0; kq < Q; ++kq) {
            const long nq = kq == 0 ? 0 : Q - kq;
            for (long kp = 0; kp < P; ++kp) {
                const long np = kp == 0 ? 0 : P - kp;
                const long i = kq * P + kp, j = nq * P + np;
                const T ar = zr[i], ai = zi[i], br = zr[j], bi = zi[j];
                s0r[i] = T(0.5) * (ar + br);
                s0i[i] = T(0.5) * (ai - bi);
                s1r[i] = T(0.5) * (ai + bi);
                s1i[i] = T(0.5) * (br - ar);
            }
        }
    }

    void inverse(const Corr& c0, const Corr* c1, Workspace& ws) const {
        const long P = P_, Q = Q_, c = s_.c, win = win_;
        T* gr = ws.b_re.data();
        T* gi = ws.b_im.data();
        const long pq = P * Q;
        {
            const T *far = ws.spec_re[c0.a].data(), *fai = ws.spec_im[c0.a].data();
            const T *fbr = ws.spec_re[c0.b].data(), *fbi = ws.spec_im[c0.b].data();
            for (long i = 0; i < pq; ++i) {  // conj(Fa) Fb
                gr[i] = far[i] * fbr[i] + fai[i] * fbi[i];
                gi[i] = far[i] * fbi[i] - fai[i] * fbr[i];
            }
        }
        if (c1) {  // + i conj(Fa') Fb'
            const T *far = ws.spec_re[c1->a].data(), *fai = ws.spec_im[c1->a].data();
            const T *fbr = ws.spec_re[c1->b].data(), *fbi = ws.spec_im[c1->b].data();
            for (long i = 0; i < pq; ++i) {
                gr[i] -= far[i] * fbi[i] - fai[i] * fbr[i];
                gi[i] += far[i] * fbr[i] + fai[i] * fbi[i];
            }
        }
        pass(inv_q_, gr, gi, P, ws);  // [dq][kp]
        // the window's 2c+1 column offsets, then along the rows' axis with those as lanes
        for (long d = -c; d <= c; ++d) {
            const long row = ((d % Q) + Q) % Q;
            std::copy(gr + row * P, gr + row * P + P, ws.a_re.data() + (d + c) * P);
            std::copy(gi + row * P, gi + row * P + P, ws.a_im.data() + (d + c) * P);
        }
        transpose(ws.a_re.data(), win, P, P, ws.d_re.data(), win);  // [kp][dq]
        transpose(ws.a_im.data(), win, P, P, ws.d_im.data(), win);
        pass(inv_p_, ws.d_re.data(), ws.d_im.data(), win, ws);
        const T scale = T(1) / T(double(P) * double(Q));
        write(c0, ws.d_re.data(), scale);
        if (c1) write(*c1, ws.d_im.data(), scale);
    }

    void write(const Corr& corr, const T* full, T scale) const {
        const long P = P_, c = s_.c, win = win_;
        T largest = 0;
        if (corr.norm_map)
            for (long i = 0; i < win * win; ++i) largest = std::max(largest, corr.norm_map[i]);
        const T floor = tiny_norm(largest);
        for (long dp = -c; dp <= c; ++dp) {
            const T* src = full + (((dp % P) + P) % P) * win;
            for (long dq = -c; dq <= c; ++dq) {
                const long i = (dp + c) * win + (dq + c);
                T v = src[dq + c] * scale;
                if (!corr.raw) {
                    T norm;
                    if (corr.norm_map)
                        norm = corr.norm_map[i];
                    else if (s_.periodic)
                        norm = T(double(s_.H) * double(s_.W));
                    else
                        norm = T(double(s_.H - std::labs(dp)) * double(s_.W - std::labs(dq)));
                    v = norm > floor ? v / norm : std::numeric_limits<T>::quiet_NaN();
                }
                corr.out[i * corr.out_stride] = v;
            }
        }
    }

    TwoPointShape s_;
    long P_, Q_, win_;
    FftPlan<T> fwd_p_, fwd_q_, inv_q_, inv_p_;
    int inner_threads_ = 1;
};

// data (n, H, W, K); pairs (n_pairs) of phase indices; mask (n_mask, H, W) or
// null; out (n, 2c+1, 2c+1, n_pairs).
template <class T>
void two_point(const T* data, const TwoPointShape& s, const std::vector<std::pair<int, int>>& pairs,
               const T* mask, T* out, int n_threads) {
    if (s.n <= 0 || s.H <= 0 || s.W <= 0 || s.K <= 0) throw std::invalid_argument("empty phase data");
    if (s.c < 0 || 2 * s.c + 1 > std::min(s.H, s.W)) throw std::invalid_argument("cutoff out of range");
    using Engine = TwoPointEngine<T>;
    Engine engine(s);
    const long win = 2 * s.c + 1, n_pairs = long(pairs.size());
    const long HW = s.H * s.W;

    // the phases that take part, and where each one's spectrum goes
    std::vector<int> used;
    for (const auto& p : pairs)
        for (int ph : {p.first, p.second})
            if (std::find(used.begin(), used.end(), ph) == used.end()) used.push_back(ph);
    auto slot_of = [&](int ph) { return int(std::find(used.begin(), used.end(), ph) - used.begin()); };
    const long u = long(used.size());
    // an odd number of fields per image wastes half a transform: take images two at a time
    const long per_group = (u % 2 == 1 && s.n > 1) ? 2 : 1;
    const long n_groups = (s.n + per_group - 1) / per_group;
    const double work = double(s.n) * double(engine.padded_rows()) * double(engine.padded_cols()) *
                        double(u + n_pairs) * 20.0;

    // Threads inside each transform instead of over images when there are fewer
    // image groups than threads, or when a thread's buffers are large (one set
    // of buffers rather than one per thread: 16 threads on 4096^2 float64 images
    // would otherwise hold 20 GB).
    const int threads = threads_for(work, n_threads);
    const double workspace_bytes = double(6 + 2 * u * per_group) * double(engine.padded_rows()) *
                                   double(engine.padded_cols()) * sizeof(T);
    const bool inner = n_groups < threads || workspace_bytes > 64.0 * (1 << 20);
    engine.set_inner_threads(inner ? threads : 1);
    const int outer = inner ? 1 : threads;

    // masks: the valid-pair weight sum_x M(x) M(x + r) of each mask, once per mask
    std::vector<T> norms;
    if (mask) {
        norms.assign(std::size_t(s.n_mask) * win * win, T(0));
        const long mgroups = (s.n_mask + 1) / 2;
        parallel_chunks(mgroups, outer,
                        [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
            auto ws = engine.workspace(2);
            for (std::ptrdiff_t g = lo; g < hi; ++g) {
                std::vector<typename Engine::Field> fields;
                std::vector<typename Engine::Corr> corrs;
                for (long m = 2 * g; m < std::min(2 * g + 2, s.n_mask); ++m) {
                    const int slot = int(fields.size());
                    fields.push_back({mask + m * HW, 1, nullptr});
                    corrs.push_back({slot, slot, norms.data() + m * win * win, 1, nullptr, true});
                }
                engine.run(fields, corrs, ws);
            }
        });
    }

    parallel_chunks(n_groups, outer,
                    [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
        auto ws = engine.workspace(std::size_t(u * per_group));
        std::vector<typename Engine::Field> fields;
        std::vector<typename Engine::Corr> corrs;
        for (std::ptrdiff_t g = lo; g < hi; ++g) {
            fields.clear(), corrs.clear();
            for (long img = g * per_group; img < std::min((g + 1) * per_group, s.n); ++img) {
                const int base = int(fields.size());
                const T* m = mask ? mask + (s.n_mask == 1 ? 0 : img) * HW : nullptr;
                const T* norm = mask ? norms.data() + (s.n_mask == 1 ? 0 : img) * win * win : nullptr;
                for (int ph : used) fields.push_back({data + img * HW * s.K + ph, s.K, m});
                for (long q = 0; q < n_pairs; ++q)
                    corrs.push_back({base + slot_of(pairs[q].first), base + slot_of(pairs[q].second),
                                     out + img * win * win * n_pairs + q, n_pairs, norm, false});
            }
            engine.run(fields, corrs, ws);
        }
    });
}

}  // namespace microtex::detail
