// Power spectra S(q) = |FFT2(phi)|^2 / (H W) of images, zero frequency at
// (H/2, W/2) as numpy.fft.fftshift puts it, or their averages over bins of
// frequencies (rings, sectors) given as a label map. Definitions, the rescaling
// of phi and the bins: python/microtex/features/spectra.py.
//
// Two images share one complex transform (TwoPointEngine::transform): with
// Z = FFT2(phi_a + i phi_b), |F_a(k)|^2 = |Z(k) + conj Z(-k)|^2 / 4 and
// |F_b(k)|^2 = |Z(k) - conj Z(-k)|^2 / 4, so neither spectrum is formed. An
// image without a partner (one image, the last of an odd batch) of even H
// takes the real-input path instead (TwoPointEngine::transform_real: half the
// spectrum, the rest mirrored, S(-k) = S(k)). Pairs of images are split
// across threads (or, for one pair, the lanes of each transform); each thread
// owns its buffers. Ring and sector sums add runs of equal labels in four
// partial sums: the frequencies of one bin are mostly neighbours, and one
// running sum per bin would wait on the previous add at every frequency.
// Header-only, no Python.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/parallel.hpp"
#include "microtex/spectra/two_point.hpp"

namespace microtex::detail {

struct PowerSpectrumShape {
    long n, H, W;     // images (n, H, W), C-contiguous
    bool rescale;     // per image: min -> -1, max -> +1 (a constant image -> 0)
    const int* bins;  // null: the full spectrum; else (H, W) labels in [-1, n_bins) of the shifted spectrum
    long n_bins;
};

// images (n, H, W); out (n, H, W), or (n, n_bins) with bins: the mean of S over
// the frequencies labelled b (NaN for a label no frequency has; -1: left out).
template <class T>
void power_spectrum(const T* images, const PowerSpectrumShape& s, T* out, int n_threads) {
    if (s.n <= 0 || s.H <= 0 || s.W <= 0) throw std::invalid_argument("empty images");
    if (s.bins && s.n_bins <= 0) throw std::invalid_argument("no frequency bins");
    using Engine = TwoPointEngine<T>;
    const long H = s.H, W = s.W, HW = H * W;
    Engine engine(TwoPointShape{s.n, H, W, 1, 0, true, 0});

    // the labels of the frequencies in the engine's layout [kq][kp] as runs
    // (start, end, label) of equal labels; frequency (kp, kq) sits at
    // (kp + H/2) % H, (kq + W/2) % W of the shifted spectrum
    struct Run {
        long start, end;
        int label;
    };
    std::vector<Run> runs;
    std::vector<double> counts;
    if (s.bins) {
        counts.assign(std::size_t(s.n_bins), 0.0);
        for (long kq = 0; kq < W; ++kq)
            for (long kp = 0; kp < H; ++kp) {
                const int b = s.bins[((kp + H / 2) % H) * W + (kq + W / 2) % W];
                if (b < -1 || b >= s.n_bins) throw std::invalid_argument("frequency bin label out of range");
                if (b < 0) continue;
                const long i = kq * H + kp;
                if (!runs.empty() && runs.back().label == b && runs.back().end == i)
                    ++runs.back().end;
                else
                    runs.push_back({i, i + 1, b});
                counts[b] += 1;
            }
    }
    const bool real_path = s.n % 2 == 1 && H % 2 == 0;  // the unpaired image: half a transform

    const long n_pairs = (s.n + 1) / 2;
    const int outer = engine.split_threads(n_pairs, 0, threads_for(double(s.n) * double(HW) * 20.0, n_threads));
    const T norm = T(1) / T(double(H) * double(W));
    const long hp = H - H / 2, hq = W - W / 2;  // frequencies 0 .. hp-1 go to rows H/2 .. H-1

    parallel_chunks(n_pairs, outer, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
        auto ws = engine.workspace(real_path ? 1 : 0);
        std::vector<double> sums(s.bins ? std::size_t(s.n_bins) : 0);
        auto field = [&](long img) {
            typename Engine::Field f{images + img * HW, 1, nullptr};
            if (s.rescale) {
                const T* x = images + img * HW;
                T low = x[0], high = x[0];
                for (long i = 1; i < HW; ++i) low = std::min(low, x[i]), high = std::max(high, x[i]);
                f.center = T(0.5 * (double(low) + double(high)));
                f.scale = high > low ? T(2.0 / (double(high) - double(low))) : T(0);
            }
            return f;
        };
        // S in layout [kq][kp]; to out[img] shifted (and transposed), or binned
        auto emit = [&](const T* S, long img) {
            if (!s.bins) {
                T* dst = out + img * HW;
                auto quadrant = [&](long q0, long nq, long p0, long np, long row0, long col0) {
                    if (nq > 0 && np > 0) transpose(S + q0 * H + p0, nq, np, H, dst + row0 * W + col0, W);
                };
                quadrant(0, hq, 0, hp, H / 2, W / 2);
                quadrant(0, hq, hp, H / 2, 0, W / 2);
                quadrant(hq, W / 2, 0, hp, H / 2, 0);
                quadrant(hq, W / 2, hp, H / 2, 0, 0);
                return;
            }
            std::fill(sums.begin(), sums.end(), 0.0);
            for (const Run& run : runs) {
                double part[4] = {0.0, 0.0, 0.0, 0.0};
                long i = run.start;
                for (; i + 4 <= run.end; i += 4)
                    for (int u = 0; u < 4; ++u) part[u] += double(S[i + u]);
                for (; i < run.end; ++i) part[0] += double(S[i]);
                sums[run.label] += (part[0] + part[1]) + (part[2] + part[3]);
            }
            T* dst = out + img * s.n_bins;
            for (long b = 0; b < s.n_bins; ++b)
                dst[b] = counts[b] > 0 ? T(sums[b] / counts[b]) : std::numeric_limits<T>::quiet_NaN();
        };
        for (std::ptrdiff_t g = lo; g < hi; ++g) {
            const long a = 2 * g;
            const bool pair = a + 1 < s.n;
            const typename Engine::Field fa = field(a);
            const typename Engine::Field fb = pair ? field(a + 1) : fa;
            T *sa = ws.a_re.data(), *sb = ws.a_im.data();
            if (!pair && real_path) {
                engine.transform_real(fa, ws);
                const long P2 = H / 2 + 1;
                const T *fr = ws.spec_re[0].data(), *fi = ws.spec_im[0].data();  // [kq][kp <= H/2]
                for (long kq = 0; kq < W; ++kq) {
                    const T *xr = fr + kq * P2, *xi = fi + kq * P2;
                    T* row = sa + kq * H;
                    for (long kp = 0; kp < P2; ++kp) row[kp] = (xr[kp] * xr[kp] + xi[kp] * xi[kp]) * norm;
                }
                for (long kq = 0; kq < W; ++kq) {  // S(kp, kq) = S(H - kp, -kq) for kp > H/2
                    const T* mirror = sa + (kq == 0 ? 0 : W - kq) * H;
                    T* row = sa + kq * H;
                    for (long kp = P2; kp < H; ++kp) row[kp] = mirror[H - kp];
                }
                emit(sa, a);
                continue;
            }
            engine.transform(fa, pair ? &fb : nullptr, ws);
            const T *zr = ws.b_re.data(), *zi = ws.b_im.data();  // [kq][kp]
            if (!pair) {  // odd H: the full complex transform of the image alone
                for (long i = 0; i < HW; ++i) sa[i] = (zr[i] * zr[i] + zi[i] * zi[i]) * norm;
                emit(sa, a);
                continue;
            }
            const T quarter = norm * T(0.25);
            for (long kq = 0; kq < W; ++kq) {
                const long i = kq * H, j = (kq == 0 ? 0 : W - kq) * H;  // rows of k and -k
                for (long kp = 0; kp < H; ++kp) {
                    const long np = kp == 0 ? 0 : H - kp;
                    const T ar = zr[i + kp], ai = zi[i + kp], br = zr[j + np], bi = zi[j + np];
                    sa[i + kp] = ((ar + br) * (ar + br) + (ai - bi) * (ai - bi)) * quarter;
                    sb[i + kp] = ((ai + bi) * (ai + bi) + (br - ar) * (br - ar)) * quarter;
                }
            }
            emit(sa, a);
            emit(sb, a + 1);
        }
    });
}

}  // namespace microtex::detail
