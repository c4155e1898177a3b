// Two-point statistics S_ab(r) = sum_x a(x) b(x + r) / norm(r) of phase
// fields, periodic or not, with an optional mask; the centred (2c+1)^2 window
// of offsets. Definitions: python/microtex/features/spectra.py.
//
// Per image: forward FFTs of the phases used (two real fields packed into one
// complex transform and told apart by Hermitian symmetry), the products
// conj(F_a) F_b, and inverse FFTs of two products at once (each result is
// real, so one lands in the real part, the other in the imaginary part). The
// inverse is pruned: after the pass over columns only the 2c+1 rows of the
// window are transformed further. A field with no partner (one image, one
// phase) takes the real-input path instead: its even and odd rows packed into
// one complex transform of half the length, and only half of the spectrum
// kept (the other half is its complex conjugate). Non-periodic fields are
// zero-padded to an even 2,3,5-smooth size >= H + c (offsets beyond c are
// never read, so padding by c suffices). Images are split across threads;
// each thread owns its buffers.
// Header-only, no Python.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
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

// A buffer left uninitialized: every element is written before it is read, and
// zero-filling the large buffers of a single big image (page faults on hundreds
// of MB) would cost more than its transforms.
template <class T>
class Buffer {
  public:
    void resize(std::size_t n) {
        data_.reset(new T[n]);
        size_ = n;
    }
    T* data() { return data_.get(); }
    const T* data() const { return data_.get(); }
    T* begin() { return data_.get(); }
    T& operator[](std::size_t i) { return data_[i]; }
    std::size_t size() const { return size_; }

  private:
    std::unique_ptr<T[]> data_;
    std::size_t size_ = 0;
};

template <class T>
class TwoPointEngine {
  public:
    // One field: value(y, x) = (base[(y W + x) stride] - center) * scale * (mask ? mask[y W + x] : 1)
    // (center and scale: the power spectrum's rescaling to [-1, 1]; 0 and 1 leave values exact)
    struct Field {
        const T* base;
        long stride;
        const T* mask;
        T center = T(0);
        T scale = T(1);
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
          P_(s.periodic ? s.H : next_smooth_even(s.H + s.c)),
          Q_(s.periodic ? s.W : next_smooth(s.W + s.c)),
          win_(2 * s.c + 1),
          fwd_p_(P_, -1),
          fwd_q_(Q_, -1),
          inv_q_(Q_, +1),
          inv_p_(P_, +1),
          half_fwd_(P_ % 2 == 0 ? P_ / 2 : 1, -1),
          half_inv_(P_ % 2 == 0 ? P_ / 2 : 1, +1) {
        if (P_ % 2 == 0) {
            const double two_pi = 6.283185307179586476925286766559;
            tw_re_.resize(P_ / 2 + 1), tw_im_.resize(P_ / 2 + 1);
            for (long k = 0; k <= P_ / 2; ++k) {  // exp(-2 pi i k / P)
                tw_re_[k] = T(std::cos(two_pi * double(k) / double(P_)));
                tw_im_[k] = T(-std::sin(two_pi * double(k) / double(P_)));
            }
        }
    }

    static long next_smooth_even(long n) {
        long m = next_smooth(n);
        while (m % 2) m = next_smooth(m + 1);
        return m;
    }

    // Threads inside each transform (split over lanes): for few, large images.
    void set_inner_threads(int n) { inner_threads_ = n < 1 ? 1 : n; }

    // Splits `threads` for n_groups units of work (one workspace of n_fields
    // spectra each): inside each transform when there are fewer groups than
    // threads, or when a thread's buffers are large (one set of buffers rather
    // than one per thread: 16 threads on 4096^2 float64 images would otherwise
    // hold 20 GB); else over the groups. Returns the threads over groups.
    int split_threads(long n_groups, std::size_t n_fields, int threads) {
        const double workspace_bytes = double(6 + 2 * n_fields) * double(P_) * double(Q_) * sizeof(T);
        const bool inner = n_groups < threads || workspace_bytes > 64.0 * (1 << 20);
        set_inner_threads(inner ? threads : 1);
        return inner ? 1 : threads;
    }
    long padded_rows() const { return P_; }
    long padded_cols() const { return Q_; }

    // Per-thread buffers.
    struct Workspace {
        Buffer<T> a_re, a_im, b_re, b_im, w_re, w_im, scratch, d_re, d_im;
        std::vector<Buffer<T>> spec_re, spec_im;  // one Q x P spectrum per field
    };

    Workspace workspace(std::size_t n_fields) const {
        Workspace ws;
        const std::size_t pq = std::size_t(P_) * Q_;
        const std::size_t lanes = std::size_t(std::max({P_, Q_, win_}));
        ws.a_re.resize(pq), ws.a_im.resize(pq), ws.b_re.resize(pq), ws.b_im.resize(pq);
        ws.w_re.resize(pq), ws.w_im.resize(pq);
        const int radix = std::max({fwd_p_.max_radix(), fwd_q_.max_radix(), half_fwd_.max_radix(), 5});
        ws.scratch.resize(2 * std::size_t(radix) * lanes);
        ws.d_re.resize(std::size_t(win_) * P_), ws.d_im.resize(std::size_t(win_) * P_);
        ws.spec_re.resize(n_fields), ws.spec_im.resize(n_fields);
        for (std::size_t f = 0; f < n_fields; ++f) ws.spec_re[f].resize(pq), ws.spec_im[f].resize(pq);
        return ws;
    }

    // Spectra of all fields, then every correlation; ws must hold fields.size() spectra.
    void run(const std::vector<Field>& fields, const std::vector<Corr>& corrs, Workspace& ws) const {
        if (fields.size() == 1 && P_ % 2 == 0) {  // one real field: every correlation is (0, 0)
            forward_real(fields[0], ws);
            for (const Corr& corr : corrs) inverse_real(corr, ws);
            return;
        }
        for (std::size_t f = 0; f < fields.size(); f += 2)
            forward(fields[f], f + 1 < fields.size() ? &fields[f + 1] : nullptr, ws, int(f));
        for (std::size_t k = 0; k < corrs.size(); k += 2)
            inverse(corrs[k], k + 1 < corrs.size() ? &corrs[k + 1] : nullptr, ws);
    }

    // The 2-D DFT of f0 + i f1 (f1 null: of f0 alone), zero-padded to P x Q, left in
    // ws.b_re / ws.b_im with layout [kq][kp] (column frequency major: Q rows of P).
    // The spectra of the two real fields follow from Hermitian symmetry,
    // F0(k) = (Z(k) + conj Z(-k)) / 2 and F1(k) = (Z(k) - conj Z(-k)) / 2i.
    void transform(const Field& f0, const Field* f1, Workspace& ws) const {
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
    }

    // The spectrum of one real field, rows kp = 0 .. P/2 only (the others are
    // F(P - kp, -kq) conjugated), left in ws.spec_re[0] / ws.spec_im[0] with
    // layout [kq][kp], P/2 + 1 lanes: half the work of transform(f, nullptr).
    // Needs P even and a workspace of at least one spectrum.
    void transform_real(const Field& f, Workspace& ws) const {
        if (P_ % 2 != 0 || ws.spec_re.empty()) throw std::logic_error("transform_real needs P even and a spectrum");
        forward_real(f, ws);
    }

  private:
    // plan.run over L lanes (row stride L), a block of lanes at a time: a block's
    // points (about 256 KB of each buffer) stay in cache through all the stages,
    // where whole rows of a large image would stream from memory at every stage.
    // Blocks are split across threads when the engine has inner threads.
    void pass(const FftPlan<T>& plan, T* re, T* im, long L, Workspace& ws) const {
        const long fit = (256 * 1024 / long(sizeof(T))) / std::max(1L, plan.size());
        const long B = std::min(L, std::max(8L, fit / 8 * 8));
        const long blocks = (L + B - 1) / B;
        const long radix = plan.max_radix();
        auto run_blocks = [&](long lo, long hi) {
            for (long b = lo; b < hi; ++b) {
                const long l0 = b * B, l1 = std::min(L, l0 + B);
                plan.run(re + l0, im + l0, ws.w_re.data() + l0, ws.w_im.data() + l0, l1 - l0, L,
                         ws.scratch.data() + 2 * radix * l0);
            }
        };
        const int nt = int(std::min<long>(inner_threads_, blocks));
        if (nt <= 1) return run_blocks(0, blocks);
        parallel_chunks(blocks, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) { run_blocks(lo, hi); });
    }

    void fill(const Field& f, T* dst) const {
        const long H = s_.H, W = s_.W;
        const bool plain = f.center == T(0) && f.scale == T(1);
        for (long y = 0; y < H; ++y) {
            T* row = dst + y * W;
            const T* src = f.base + y * W * f.stride;
            if (f.mask) {
                const T* m = f.mask + y * W;
                for (long x = 0; x < W; ++x) row[x] = (src[x * f.stride] - f.center) * f.scale * m[x];
            } else if (plain) {
                for (long x = 0; x < W; ++x) row[x] = src[x * f.stride];
            } else {
                for (long x = 0; x < W; ++x) row[x] = (src[x * f.stride] - f.center) * f.scale;
            }
        }
        std::fill(dst + H * W, dst + P_ * W, T(0));
    }

    void forward(const Field& f0, const Field* f1, Workspace& ws, int slot) const {
        const long P = P_, Q = Q_;
        transform(f0, f1, ws);
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

    // Spectrum of one real field, rows kp = 0 .. P/2 only: layout [kq][kp], P/2 + 1 lanes.
    void forward_real(const Field& f, Workspace& ws) const {
        const long W = s_.W, Q = Q_, h = P_ / 2, P2 = h + 1;
        fill(f, ws.b_re.data());  // [P][W]
        for (long y = 0; y < h; ++y) {  // z = even rows + i odd rows
            std::copy(ws.b_re.data() + 2 * y * W, ws.b_re.data() + (2 * y + 1) * W, ws.a_re.data() + y * W);
            std::copy(ws.b_re.data() + (2 * y + 1) * W, ws.b_re.data() + (2 * y + 2) * W,
                      ws.a_im.data() + y * W);
        }
        pass(half_fwd_, ws.a_re.data(), ws.a_im.data(), W, ws);  // Z[k][x], k < P/2
        // F[k] = E[k] + w^k O[k], E = (Z[k] + conj Z[-k]) / 2, O = (Z[k] - conj Z[-k]) / 2i
        T* fr = ws.b_re.data();  // [P2][W]
        T* fi = ws.b_im.data();
        for (long k = 0; k <= h; ++k) {
            const T *zr = ws.a_re.data() + (k % h) * W, *zi = ws.a_im.data() + (k % h) * W;
            const T *mr = ws.a_re.data() + ((h - k) % h) * W, *mi = ws.a_im.data() + ((h - k) % h) * W;
            const T wr = tw_re_[k], wi = tw_im_[k];
            T *outr = fr + k * W, *outi = fi + k * W;
            for (long x = 0; x < W; ++x) {
                const T er = T(0.5) * (zr[x] + mr[x]), ei = T(0.5) * (zi[x] - mi[x]);
                const T orr = T(0.5) * (zi[x] + mi[x]), oi = T(0.5) * (mr[x] - zr[x]);
                outr[x] = er + wr * orr - wi * oi;
                outi[x] = ei + wr * oi + wi * orr;
            }
        }
        transpose(fr, P2, W, W, ws.a_re.data(), P2);  // [W][P2]
        transpose(fi, P2, W, W, ws.a_im.data(), P2);
        std::fill(ws.a_re.begin() + W * P2, ws.a_re.begin() + Q * P2, T(0));
        std::fill(ws.a_im.begin() + W * P2, ws.a_im.begin() + Q * P2, T(0));
        pass(fwd_q_, ws.a_re.data(), ws.a_im.data(), P2, ws);
        std::copy(ws.a_re.data(), ws.a_re.data() + Q * P2, ws.spec_re[0].data());
        std::copy(ws.a_im.data(), ws.a_im.data() + Q * P2, ws.spec_im[0].data());
    }

    // The autocorrelation of the field forward_real transformed, from half its spectrum.
    void inverse_real(const Corr& corr, Workspace& ws) const {
        const long P = P_, Q = Q_, c = s_.c, win = win_, h = P_ / 2, P2 = h + 1;
        T* gr = ws.b_re.data();
        T* gi = ws.b_im.data();
        const T *fr = ws.spec_re[0].data(), *fi = ws.spec_im[0].data();
        for (long i = 0; i < Q * P2; ++i) {
            gr[i] = fr[i] * fr[i] + fi[i] * fi[i];
            gi[i] = T(0);
        }
        pass(inv_q_, gr, gi, P2, ws);  // [dq][kp]
        for (long d = -c; d <= c; ++d) {
            const long row = ((d % Q) + Q) % Q;
            std::copy(gr + row * P2, gr + row * P2 + P2, ws.a_re.data() + (d + c) * P2);
            std::copy(gi + row * P2, gi + row * P2 + P2, ws.a_im.data() + (d + c) * P2);
        }
        transpose(ws.a_re.data(), win, P2, P2, ws.d_re.data(), win);  // X: [kp][dq], kp <= P/2
        transpose(ws.a_im.data(), win, P2, P2, ws.d_im.data(), win);
        // Z[k] = E[k] + i O[k], E = (X[k] + conj X[h-k]) / 2, O = (X[k] - conj X[h-k]) w^-k / 2
        for (long k = 0; k < h; ++k) {
            const T *xr = ws.d_re.data() + k * win, *xi = ws.d_im.data() + k * win;
            const T *yr = ws.d_re.data() + (h - k) * win, *yi = ws.d_im.data() + (h - k) * win;
            const T wr = tw_re_[k], wi = -tw_im_[k];  // w^-k = exp(+2 pi i k / P)
            T *zr = ws.a_re.data() + k * win, *zi = ws.a_im.data() + k * win;
            for (long l = 0; l < win; ++l) {
                const T er = T(0.5) * (xr[l] + yr[l]), ei = T(0.5) * (xi[l] - yi[l]);
                const T dr = T(0.5) * (xr[l] - yr[l]), di = T(0.5) * (xi[l] + yi[l]);
                const T orr = dr * wr - di * wi, oi = dr * wi + di * wr;
                zr[l] = er - oi;
                zi[l] = ei + orr;
            }
        }
        pass(half_inv_, ws.a_re.data(), ws.a_im.data(), win, ws);  // (even + i odd rows) / 2
        T* rows = ws.d_re.data();  // [P][win], real
        for (long y = 0; y < h; ++y)
            for (long l = 0; l < win; ++l) {
                rows[(2 * y) * win + l] = ws.a_re[y * win + l];
                rows[(2 * y + 1) * win + l] = ws.a_im[y * win + l];
            }
        write(corr, rows, T(2) / T(double(P) * double(Q)));
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
    FftPlan<T> half_fwd_, half_inv_;  // length P/2, the real-input path (P even)
    std::vector<T> tw_re_, tw_im_;     // exp(-2 pi i k / P), k = 0 .. P/2
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

    const int outer = engine.split_threads(n_groups, std::size_t(u * per_group), threads_for(work, n_threads));

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
