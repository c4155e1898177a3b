// The cached sampler of the conditional gated PixelCNN
// (python/microtex/generative/pixelcnn.py): fills index maps position by
// position in raster order, computing at each step only what the new
// position needs.
//
// What the network reads (half = kernel // 2, layer l reads layer l-1's stacks,
// layer 0 the embedded indices):
//   vertical stack row r, column c:   rows r-half .. r, columns c-half .. c+half
//   link into the horizontal stack:   the vertical convolution one row up
//   horizontal stack at (i, j):       row i, columns j-half .. j-1 (layer 0) or .. j
// So once row i-1 is complete, one convolution per layer and column gives both
// the vertical stack of row i-1 and the link for row i ("row step"); then each
// position of row i needs only its horizontal stack, layer by layer, and the
// head ("position step"). Every activation computed is cached and reused, the
// idea of Ramachandran et al. (2017, fast PixelCNN++) for gated masked
// convolutions.
//
// Layouts: activations [row][column][sample][channel] (channels innermost, so
// every matrix-vector product runs along output channels with unit stride and
// vectorizes for one sample as for many); weights transposed to
// [input][output] at construction. Random numbers and the categorical draw are
// those of microtex.generative.sample (SplitMix64 counters, float64 CDF).
// Header-only, no Python.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "microtex/activations.hpp"
#include "microtex/cpu.hpp"
#include "microtex/parallel.hpp"

namespace microtex::detail {

struct PixelCNNShape {
    int n_codes, embedding_dim, hidden, n_layers, first_kernel, kernel, head, n_conditions, side;
};

// The weights in the state dict's layouts, in pixelcnn_tensor_shapes order.
struct PixelCNNWeights {
    std::vector<const float*> tensors;
};

inline std::uint64_t splitmix64(std::uint64_t z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

inline double counter_uniform(std::uint64_t seed, std::uint64_t sample, std::uint64_t position) {
    const std::uint64_t z = splitmix64(splitmix64(splitmix64(seed) + sample) + position);
    return double(z >> 11) * (1.0 / 9007199254740992.0);  // 2^-53
}

// The index drawn from softmax(logits / temperature) at uniform u (argmax at 0).
inline int draw_categorical(const float* logits, int K, double u, double temperature,
                            std::vector<double>& cdf) {
    if (temperature == 0.0) return int(std::max_element(logits, logits + K) - logits);
    double top = -INFINITY;
    for (int k = 0; k < K; ++k) top = std::max(top, double(logits[k]) / temperature);
    double total = 0.0;
    cdf.resize(K);
    for (int k = 0; k < K; ++k) {
        total += std::exp(double(logits[k]) / temperature - top);
        cdf[k] = total;
    }
    const double target = u * total;
    int index = 0;
    for (int k = 0; k < K; ++k) index += cdf[k] <= target;
    return std::min(index, K - 1);
}

#define MICROTEX_MATVEC_BODY                                                            \
    int i = 0;                                                                          \
    for (; i + 4 <= n_in; i += 4) {                                                     \
        const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];             \
        const float* __restrict r0 = wt + std::size_t(i) * n_out;                      \
        const float* __restrict r1 = r0 + n_out;                                        \
        const float* __restrict r2 = r1 + n_out;                                        \
        const float* __restrict r3 = r2 + n_out;                                        \
        for (int o = 0; o < n_out; ++o) y[o] += r0[o] * x0 + r1[o] * x1 + r2[o] * x2 + r3[o] * x3; \
    }                                                                                   \
    for (; i < n_in; ++i) {                                                             \
        const float xi = x[i];                                                          \
        const float* __restrict row = wt + std::size_t(i) * n_out;                     \
        for (int o = 0; o < n_out; ++o) y[o] += row[o] * xi;                            \
    }

inline void matvec_add_generic(const float* __restrict wt, const float* __restrict x, int n_in,
                               int n_out, float* __restrict y) {
    MICROTEX_MATVEC_BODY
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MICROTEX_HAVE_AVX2_SAMPLER 1
__attribute__((target("avx2,fma"))) inline void matvec_add_avx2(const float* __restrict wt,
                                                                const float* __restrict x, int n_in,
                                                                int n_out, float* __restrict y) {
    MICROTEX_MATVEC_BODY
}
#endif
#undef MICROTEX_MATVEC_BODY

// The gate tanh(a) sigmoid(b) of p channels, out[q] = tanh(a[q] + ca[q]) *
// sigmoid(b[q] + cb[q]) with a = pre[0 .. p), b = pre[p .. 2p), c the optional
// bias. exp by Cody-Waite reduction and a degree-6 polynomial (relative error
// about 2e-7, below float32 rounding of the logits' sums): libm's tanhf and expf
// do not vectorize, and with them the gates cost more than every product.
#define MICROTEX_GATE_BODY                                                                     \
    for (int q = 0; q < p; ++q) {                                                              \
        const float a = pre[q] + (bias ? bias[q] : 0.0f);                                      \
        const float b = pre[q + p] + (bias ? bias[q + p] : 0.0f);                              \
        float e[2] = {-2.0f * a, -b};                                                          \
        for (int t = 0; t < 2; ++t) {                                                          \
            float x = std::min(88.0f, std::max(-87.0f, e[t]));                                 \
            const float k = std::floor(x * 1.44269504088896341f + 0.5f);                       \
            const float r = (x - k * 0.693145751953125f) - k * 1.428606765330187e-6f;          \
            float poly = 1.0f / 720.0f;                                                        \
            poly = poly * r + 1.0f / 120.0f;                                                   \
            poly = poly * r + 1.0f / 24.0f;                                                    \
            poly = poly * r + 1.0f / 6.0f;                                                     \
            poly = poly * r + 0.5f;                                                            \
            poly = poly * r + 1.0f;                                                            \
            poly = poly * r + 1.0f;                                                            \
            const int bits = (int(k) + 127) << 23;                                             \
            float scale;                                                                       \
            __builtin_memcpy(&scale, &bits, 4);                                                \
            e[t] = poly * scale;                                                               \
        }                                                                                      \
        out[q] = (2.0f / (1.0f + e[0]) - 1.0f) / (1.0f + e[1]);                                \
    }

inline void gate_generic(const float* __restrict pre, const float* __restrict bias, int p,
                         float* __restrict out) {
    MICROTEX_GATE_BODY
}

#ifdef MICROTEX_HAVE_AVX2_SAMPLER
__attribute__((target("avx2,fma"))) inline void gate_avx2(const float* __restrict pre,
                                                          const float* __restrict bias, int p,
                                                          float* __restrict out) {
    MICROTEX_GATE_BODY
}
#endif
#undef MICROTEX_GATE_BODY

#ifdef MICROTEX_HAVE_AVX2_SAMPLER
// Y[b][o] += sum_i X[b][i] W[i][o] for 4 samples and 16 outputs per tile: each
// weight vector loaded once serves four samples, the 8 accumulators stay in
// registers over the whole input loop. Rows of X are ldx apart, of Y ldy apart.
__attribute__((target("avx2,fma"))) inline void matmat_add_avx2(const float* __restrict w,
                                                                const float* __restrict x, long ldx,
                                                                int n, int n_in, int n_out,
                                                                float* __restrict y, long ldy) {
    typedef float v8 __attribute__((vector_size(32)));
    int b = 0;
    for (; b + 4 <= n; b += 4) {
        int o = 0;
        for (; o + 16 <= n_out; o += 16) {
            v8 acc[4][2];
            for (int r = 0; r < 4; ++r) {
                __builtin_memcpy(&acc[r][0], y + (b + r) * ldy + o, 32);
                __builtin_memcpy(&acc[r][1], y + (b + r) * ldy + o + 8, 32);
            }
            for (int i = 0; i < n_in; ++i) {
                v8 w0, w1;
                __builtin_memcpy(&w0, w + std::size_t(i) * n_out + o, 32);
                __builtin_memcpy(&w1, w + std::size_t(i) * n_out + o + 8, 32);
                for (int r = 0; r < 4; ++r) {
                    const float xv = x[(b + r) * ldx + i];
                    const v8 xb = {xv, xv, xv, xv, xv, xv, xv, xv};
                    acc[r][0] += w0 * xb;
                    acc[r][1] += w1 * xb;
                }
            }
            for (int r = 0; r < 4; ++r) {
                __builtin_memcpy(y + (b + r) * ldy + o, &acc[r][0], 32);
                __builtin_memcpy(y + (b + r) * ldy + o + 8, &acc[r][1], 32);
            }
        }
        for (; o < n_out; ++o)
            for (int r = 0; r < 4; ++r) {
                float sum = y[(b + r) * ldy + o];
                for (int i = 0; i < n_in; ++i) sum += x[(b + r) * ldx + i] * w[std::size_t(i) * n_out + o];
                y[(b + r) * ldy + o] = sum;
            }
    }
    for (; b < n; ++b) matvec_add_avx2(w, x + b * ldx, n_in, n_out, y + b * ldy);
}
#endif

class PixelCNNSampler {
  public:
    PixelCNNSampler(const PixelCNNShape& s, const PixelCNNWeights& w) : s_(s) {
        if (s.n_layers < 1 || s.side < 1 || s.hidden < 1 || s.n_codes < 2)
            throw std::invalid_argument("PixelCNN sizes must be positive (and n_codes >= 2)");
        const int p = s.hidden, p2 = 2 * s.hidden, nc = s.n_conditions;
        std::size_t t = 0;
        auto next = [&]() {
            if (t >= w.tensors.size()) throw std::invalid_argument("too few PixelCNN tensors");
            return w.tensors[t++];
        };
        const float* embedding = next();
        embedding_.assign(embedding, embedding + std::size_t(s.n_codes) * s.embedding_dim);
        layers_.resize(s.n_layers);
        for (int l = 0; l < s.n_layers; ++l) {
            Layer& L = layers_[l];
            const bool first = l == 0, last = l == s.n_layers - 1;
            L.cin = first ? s.embedding_dim : p;
            L.k = first ? s.first_kernel : s.kernel;
            L.half = L.k / 2;
            L.width = first ? L.half : L.half + 1;
            L.last = last;
            // vertical (2p, cin, half+1, k) -> [kh][kw][ci][o]
            const float* wv = next();
            L.wv.resize(std::size_t(L.half + 1) * L.k * L.cin * p2);
            for (int o = 0; o < p2; ++o)
                for (int ci = 0; ci < L.cin; ++ci)
                    for (int kh = 0; kh <= L.half; ++kh)
                        for (int kw = 0; kw < L.k; ++kw)
                            L.wv[((std::size_t(kh) * L.k + kw) * L.cin + ci) * p2 + o] =
                                wv[((std::size_t(o) * L.cin + ci) * (L.half + 1) + kh) * L.k + kw];
            L.bv = copy(next(), p2);
            L.wvh = transpose(next(), p2, p2);  // (2p, 2p, 1, 1) -> [in][out]
            L.bvh = copy(next(), p2);
            // horizontal (2p, cin, 1, width) -> [w][ci][o]
            const float* wh = next();
            L.wh.resize(std::size_t(L.width) * L.cin * p2);
            for (int o = 0; o < p2; ++o)
                for (int ci = 0; ci < L.cin; ++ci)
                    for (int x = 0; x < L.width; ++x)
                        L.wh[(std::size_t(x) * L.cin + ci) * p2 + o] =
                            wh[(std::size_t(o) * L.cin + ci) * L.width + x];
            L.bh = copy(next(), p2);
            L.who = transpose(next(), p, p);
            L.bho = copy(next(), p);
            if (!last) {
                L.wvc = transpose(next(), p2, nc);
                L.bvc = copy(next(), p2);
            }
            L.whc = transpose(next(), p2, nc);
            L.bhc = copy(next(), p2);
        }
        whh_ = transpose(next(), s.head, p);
        bhh_ = copy(next(), s.head);
        wout_ = transpose(next(), s.n_codes, s.head);
        bout_ = copy(next(), s.n_codes);
        if (t != w.tensors.size()) throw std::invalid_argument("too many PixelCNN tensors");
    }

    // Samples [first, first + n): conditions (n, n_conditions); indices (n, side, side)
    // written (or, when `forced`, read: teacher forcing, logits of a given map);
    // logits (n, side, side, K) when not null.
    void run(int n, const float* conditions, std::uint64_t seed, std::uint64_t first_sample,
             double temperature, bool forced, std::int64_t* indices, float* logits,
             int n_threads) const {
        const double work = double(n) * s_.side * s_.side * s_.n_layers * s_.hidden * s_.hidden * 8.0;
        const int nt = threads_for(work, n_threads);
        if (n < nt) {  // few samples: threads share each row step's columns instead
            run_chunk(0, n, conditions, seed, first_sample, temperature, forced, indices, logits, nt);
            return;
        }
        parallel_chunks(n, nt, [&](std::ptrdiff_t lo, std::ptrdiff_t hi, int) {
            run_chunk(int(lo), int(hi - lo), conditions, seed, first_sample, temperature, forced,
                      indices, logits, 1);
        });
    }

  private:
    struct Layer {
        int cin, k, half, width;
        bool last;
        std::vector<float> wv, bv, wvh, bvh, wh, bh, who, bho, wvc, bvc, whc, bhc;
    };

    static std::vector<float> copy(const float* src, int n) { return std::vector<float>(src, src + n); }
    // (rows, cols) row-major -> (cols, rows): torch's (out, in) to [in][out]
    static std::vector<float> transpose(const float* src, int rows, int cols) {
        std::vector<float> out(std::size_t(rows) * cols);
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) out[std::size_t(c) * rows + r] = src[std::size_t(r) * cols + c];
        return out;
    }
    // y[o] += sum_i x[i] wt[i][o], o < n_out: four inputs per pass over y, so each
    // load and store of y carries four multiply-adds; an AVX2/FMA build is chosen
    // at run time (matvec_add_avx2 below).
    static void matvec_add(const float* wt, const float* x, int n_in, int n_out, float* y) {
#ifdef MICROTEX_HAVE_AVX2_SAMPLER
        if (cpu_has_avx2_fma()) return matvec_add_avx2(wt, x, n_in, n_out, y);
#endif
        matvec_add_generic(wt, x, n_in, n_out, y);
    }
    // Y[b] += X[b] W for the n samples of a chunk (rows ldx and ldy apart).
    static void matmat_add(const float* wt, const float* x, long ldx, int n, int n_in, int n_out,
                           float* y, long ldy) {
#ifdef MICROTEX_HAVE_AVX2_SAMPLER
        if (cpu_has_avx2_fma()) return matmat_add_avx2(wt, x, ldx, n, n_in, n_out, y, ldy);
#endif
        for (int b = 0; b < n; ++b) matvec_add_generic(wt, x + b * ldx, n_in, n_out, y + b * ldy);
    }
    static void gate(const float* pre, const float* bias, int p, float* out) {
#ifdef MICROTEX_HAVE_AVX2_SAMPLER
        if (cpu_has_avx2_fma()) return gate_avx2(pre, bias, p, out);
#endif
        gate_generic(pre, bias, p, out);
    }

    void run_chunk(int lo, int n, const float* conditions, std::uint64_t seed,
                   std::uint64_t first_sample, double temperature, bool forced,
                   std::int64_t* indices, float* logits, int row_threads) const {
        const int S = s_.side, p = s_.hidden, p2 = 2 * p, E = s_.embedding_dim, K = s_.n_codes;
        const int L = s_.n_layers, nc = s_.n_conditions;
        // caches, [row][col][sample][channel]
        std::vector<float> x0(std::size_t(S) * S * n * E, 0.0f);  // embedded indices so far
        std::vector<std::vector<float>> v(L);                    // vertical stacks (not the last)
        for (int l = 0; l + 1 < L; ++l) v[l].assign(std::size_t(S) * S * n * p, 0.0f);
        std::vector<std::vector<float>> link(L, std::vector<float>(std::size_t(S) * n * p2));  // row i
        std::vector<std::vector<float>> h(L, std::vector<float>(std::size_t(S) * n * p));      // row i
        // condition biases per layer and sample
        std::vector<std::vector<float>> vcond(L), hcond(L);
        for (int l = 0; l < L; ++l) {
            const Layer& Ly = layers_[l];
            hcond[l].resize(std::size_t(n) * p2);
            if (!Ly.last) vcond[l].resize(std::size_t(n) * p2);
            for (int b = 0; b < n; ++b) {
                const float* c = conditions + std::size_t(lo + b) * nc;
                float* hc = hcond[l].data() + std::size_t(b) * p2;
                std::copy(Ly.bhc.begin(), Ly.bhc.end(), hc);
                matvec_add(Ly.whc.data(), c, nc, p2, hc);
                if (!Ly.last) {
                    float* vc = vcond[l].data() + std::size_t(b) * p2;
                    std::copy(Ly.bvc.begin(), Ly.bvc.end(), vc);
                    matvec_add(Ly.wvc.data(), c, nc, p2, vc);
                }
            }
        }
        // per-sample scratch, [sample][channel]: loops run a weight block over every
        // sample of the chunk before the next block, so the block stays in cache
        std::vector<float> pre(std::size_t(n) * p2), gated(std::size_t(n) * p);
        std::vector<float> hidden(std::size_t(n) * s_.head), out(std::size_t(n) * K);
        std::vector<double> cdf(K);
        auto at = [&](int row, int col, int b, int channels) {
            return (((std::size_t(row) * S + col) * n + b) * channels);
        };
        constexpr int kHeadBlock = 16;  // rows of the output layer's weights per pass (32 KB at K=512)
        for (int i = 0; i < S; ++i) {
            // row step: vertical stacks of row i-1 and the links of row i; a layer's
            // columns are independent (the next layer waits for all of them)
            for (int l = 0; l < L; ++l) {
                const Layer& Ly = layers_[l];
                const std::vector<float>& in = l == 0 ? x0 : v[l - 1];
                auto columns = [&](std::ptrdiff_t c0, std::ptrdiff_t c1, int) {
                    std::vector<float> sl(std::size_t(n) * p2);
                    for (std::ptrdiff_t cp = c0; cp < c1; ++cp) {
                        const int c = int(cp);
                        for (int b = 0; b < n; ++b) std::copy(Ly.bv.begin(), Ly.bv.end(), sl.begin() + std::size_t(b) * p2);
                        for (int kh = 0; kh <= Ly.half; ++kh) {
                            const int r = i - 1 - Ly.half + kh;
                            if (r < 0) continue;
                            for (int kw = 0; kw < Ly.k; ++kw) {
                                const int cc = c - Ly.half + kw;
                                if (cc < 0 || cc >= S) continue;
                                const float* block = Ly.wv.data() + (std::size_t(kh) * Ly.k + kw) * Ly.cin * p2;
                                matmat_add(block, in.data() + at(r, cc, 0, Ly.cin), Ly.cin, n, Ly.cin,
                                           p2, sl.data(), p2);
                            }
                        }
                        for (int b = 0; b < n; ++b) {
                            const float* sb = sl.data() + std::size_t(b) * p2;
                            if (!Ly.last && i > 0) {
                                gate(sb, vcond[l].data() + std::size_t(b) * p2, p,
                                     v[l].data() + at(i - 1, c, b, p));
                            }
                            float* lk = link[l].data() + (std::size_t(c) * n + b) * p2;
                            std::copy(Ly.bvh.begin(), Ly.bvh.end(), lk);
                            matvec_add(Ly.wvh.data(), sb, p2, p2, lk);
                        }
                    }
                };
                if (row_threads > 1 && i > 0)
                    parallel_chunks(S, row_threads, columns);
                else
                    columns(0, S, 0);
            }
            // position steps
            for (int j = 0; j < S; ++j) {
                for (int l = 0; l < L; ++l) {
                    const Layer& Ly = layers_[l];
                    for (int b = 0; b < n; ++b) {
                        const float* lk = link[l].data() + (std::size_t(j) * n + b) * p2;
                        const float* hc = hcond[l].data() + std::size_t(b) * p2;
                        float* pb = pre.data() + std::size_t(b) * p2;
                        for (int o = 0; o < p2; ++o) pb[o] = Ly.bh[o] + lk[o] + hc[o];
                    }
                    for (int x = 0; x < Ly.width; ++x) {
                        const int cc = j - Ly.half + x;
                        if (cc < 0) continue;
                        const float* in = l == 0 ? x0.data() + at(i, cc, 0, E)
                                                 : h[l - 1].data() + std::size_t(cc) * n * p;
                        matmat_add(Ly.wh.data() + std::size_t(x) * Ly.cin * p2, in, Ly.cin, n,
                                   Ly.cin, p2, pre.data(), p2);
                    }
                    float* dst = h[l].data() + std::size_t(j) * n * p;  // (n, p) of column j
                    for (int b = 0; b < n; ++b) {
                        const float* pb = pre.data() + std::size_t(b) * p2;
                        gate(pb, nullptr, p, gated.data() + std::size_t(b) * p);
                        std::copy(Ly.bho.begin(), Ly.bho.end(), dst + std::size_t(b) * p);
                    }
                    matmat_add(Ly.who.data(), gated.data(), p, n, p, p, dst, p);
                    if (l > 0) {
                        const float* res = h[l - 1].data() + std::size_t(j) * n * p;
                        for (std::size_t q = 0; q < std::size_t(n) * p; ++q) dst[q] += res[q];
                    }
                }
                // the head
                for (int b = 0; b < n; ++b) {
                    std::copy(bhh_.begin(), bhh_.end(), hidden.begin() + std::size_t(b) * s_.head);
                    std::copy(bout_.begin(), bout_.end(), out.begin() + std::size_t(b) * K);
                }
                matmat_add(whh_.data(), h[L - 1].data() + std::size_t(j) * n * p, p, n, p, s_.head,
                           hidden.data(), s_.head);
                for (float& v_ : hidden) v_ = std::max(v_, 0.0f);
                for (int q0 = 0; q0 < s_.head; q0 += kHeadBlock) {  // output weights in cache-sized blocks
                    const int rows = std::min(kHeadBlock, s_.head - q0);
                    matmat_add(wout_.data() + std::size_t(q0) * K, hidden.data() + q0, s_.head, n,
                               rows, K, out.data(), K);
                }
                for (int b = 0; b < n; ++b) {
                    const float* ob = out.data() + std::size_t(b) * K;
                    const std::size_t pos = std::size_t(i) * S + j;
                    const std::size_t sample = std::size_t(lo + b);
                    if (logits) std::copy(ob, ob + K, logits + (sample * S * S + pos) * K);
                    std::int64_t& index = indices[sample * S * S + pos];
                    if (!forced) {
                        const double u = counter_uniform(seed, first_sample + sample, pos);
                        index = draw_categorical(ob, K, u, temperature, cdf);
                    }
                    if (index < 0 || index >= K) throw std::invalid_argument("index out of range");
                    std::copy(embedding_.begin() + index * E, embedding_.begin() + (index + 1) * E,
                              x0.begin() + at(i, j, b, E));
                }
            }
        }
    }

    PixelCNNShape s_;
    std::vector<float> embedding_;
    std::vector<Layer> layers_;
    std::vector<float> whh_, bhh_, wout_, bout_;
};

}  // namespace microtex::detail
