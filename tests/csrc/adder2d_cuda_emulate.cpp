// Host emulation of the adder2d CUDA kernels (no GPU, no torch).
//
// Runs the per-thread code of csrc/common/adder2d_cuda_tile.cuh for every
// thread of every block, phase by phase as the kernels do between barriers,
// and compares with direct loops over the formulas. It checks the tiling,
// the index math (stride classes, padding, dilation, groups, tails), that
// every output is written once, and the double-buffered pipeline (threads are
// stepped in both orders: a stage read and written in the same phase would
// give different results). The packed float16/bfloat16 kernels
// (adder2d_cuda_packed.cuh) are compared bit for bit with scalar loops doing
// their arithmetic in their order, and their 16-bit rounding helpers with the
// compiler's _Float16.
//
// Not built by setup.py (only *.cu are). tests/test_ops_cuda.py compiles and
// runs it:  g++ -O2 -std=c++17 -I csrc/common <this file> -o emu && ./emu
// Exit status 0 when every case matches; prints one line per failure.
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "adder2d_cuda_packed.cuh"

using namespace adder_mm;
using namespace adder_mm::cuda_tile;

namespace {

template <class Thread, class Args, class Sm>
struct HostExec {
  std::vector<Thread> th;
  const Args& a;
  Sm& sm;
  bool reverse;
  bool uniform = true;
  int64_t block;

  HostExec(const Args& a_, Sm& sm_, int nt, int64_t block_, bool rev)
      : th(nt), a(a_), sm(sm_), reverse(rev), block(block_) {
    for (int t = 0; t < nt; ++t) th[t].init(a, block, t);
  }
  template <class F>
  void each(F f) {
    const int nt = static_cast<int>(th.size());
    for (int k = 0; k < nt; ++k) f(th[reverse ? nt - 1 - k : k]);
  }
  int64_t num_chunks() {
    const int64_t n = th[0].num_chunks(a);
    each([&](Thread& t) { uniform = uniform && t.num_chunks(a) == n; });
    return n;
  }
  void load() {
    each([&](Thread& t) { t.load(a); });
  }
  void compute(int stage) {
    each([&](Thread& t) { t.compute(sm, stage); });
  }
  void refill(int stage, bool load_next) {
    each([&](Thread& t) {
      t.store(sm, stage);
      if (load_next) {
        t.advance(a);
        t.load(a);
      }
    });
  }
  void sync() {}
  void epilogue() {
    each([&](Thread& t) { t.epilogue(a, block); });
  }
};

struct Case {
  Adder2dParams p;
};

Adder2dParams make_params(int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t O, int64_t KH, int64_t KW, int64_t sh,
                          int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                          int64_t dw, int64_t G) {
  Adder2dParams p;
  p.N = N;
  p.C = C;
  p.H = H;
  p.W = W;
  p.O = O;
  p.KH = KH;
  p.KW = KW;
  p.stride_h = sh;
  p.stride_w = sw;
  p.pad_h = ph;
  p.pad_w = pw;
  p.dil_h = dh;
  p.dil_w = dw;
  p.groups = G;
  p.OH = adder_out_size(H, KH, sh, ph, dh);
  p.OW = adder_out_size(W, KW, sw, pw, dw);
  return p;
}

template <typename T>
std::vector<T> forward_naive(const Adder2dParams& p, const std::vector<T>& x,
                             const std::vector<T>& w) {
  const int64_t Cg = p.cin_per_group(), Og = p.cout_per_group();
  std::vector<T> y(p.N * p.O * p.L());
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t o = 0; o < p.O; ++o)
      for (int64_t h = 0; h < p.OH; ++h)
        for (int64_t ww = 0; ww < p.OW; ++ww) {
          double acc = 0;
          const int64_t g = o / Og;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t i = 0; i < p.KH; ++i)
              for (int64_t j = 0; j < p.KW; ++j) {
                const int64_t iy =
                    adder_in_coord(h, i, p.stride_h, p.pad_h, p.dil_h);
                const int64_t ix =
                    adder_in_coord(ww, j, p.stride_w, p.pad_w, p.dil_w);
                const bool in = iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
                const double xv =
                    in ? double(x[((n * p.C + g * Cg + c) * p.H + iy) * p.W + ix])
                       : 0.0;
                acc += std::fabs(xv -
                                 double(w[((o * Cg + c) * p.KH + i) * p.KW + j]));
              }
          y[((n * p.O + o) * p.OH + h) * p.OW + ww] = T(-acc);
        }
  return y;
}

template <typename T>
std::vector<T> grad_input_naive(const Adder2dParams& p,
                                const std::vector<T>& go,
                                const std::vector<T>& x,
                                const std::vector<T>& w) {
  const int64_t Cg = p.cin_per_group(), Og = p.cout_per_group();
  std::vector<T> gx(p.N * p.C * p.H * p.W);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t ch = 0; ch < p.C; ++ch)
      for (int64_t y = 0; y < p.H; ++y)
        for (int64_t xx = 0; xx < p.W; ++xx) {
          const int64_t g = ch / Cg, c = ch % Cg;
          const double xv = double(x[((n * p.C + ch) * p.H + y) * p.W + xx]);
          double acc = 0;
          for (int64_t i = 0; i < p.KH; ++i) {
            int64_t h;
            if (!adder_out_coord(y, i, p.stride_h, p.pad_h, p.dil_h, p.OH, &h))
              continue;
            for (int64_t j = 0; j < p.KW; ++j) {
              int64_t ow;
              if (!adder_out_coord(xx, j, p.stride_w, p.pad_w, p.dil_w, p.OW,
                                   &ow))
                continue;
              for (int64_t oo = 0; oo < Og; ++oo) {
                const int64_t o = g * Og + oo;
                const double d =
                    double(w[((o * Cg + c) * p.KH + i) * p.KW + j]) - xv;
                const double ht = std::fmin(std::fmax(d, -1.0), 1.0);
                acc += ht * double(go[((n * p.O + o) * p.OH + h) * p.OW + ow]);
              }
            }
          }
          gx[((n * p.C + ch) * p.H + y) * p.W + xx] = T(acc);
        }
  return gx;
}

// Weight [O, Cg, KH, KW] -> [G, KH, KW, d1, d2] as transpose_weight() does on
// the device: (Cg, Og) for the forward, (Og, Cg) for the input gradient.
template <typename T>
std::vector<T> transpose_weight(const Adder2dParams& p,
                                const std::vector<T>& w, bool forward) {
  const int64_t Cg = p.cin_per_group(), Og = p.cout_per_group();
  std::vector<T> t(w.size());
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t oo = 0; oo < Og; ++oo)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t i = 0; i < p.KH; ++i)
          for (int64_t j = 0; j < p.KW; ++j) {
            const T v = w[(((g * Og + oo) * Cg + c) * p.KH + i) * p.KW + j];
            const int64_t tap = (g * p.KH + i) * p.KW + j;
            t[forward ? (tap * Cg + c) * Og + oo : (tap * Og + oo) * Cg + c] =
                v;
          }
  return t;
}

template <typename T>
double max_err(const std::vector<T>& a, const std::vector<T>& b,
               double* scale) {
  double e = 0, s = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    const double d = std::fabs(double(a[k]) - double(b[k]));
    if (!(d <= e)) e = d;  // NaN (an unwritten output) wins
    s = std::fmax(s, std::fabs(double(b[k])));
  }
  *scale = s;
  return e;
}

int failures = 0;

void report(bool ok, const char* what, const char* cfg, const Adder2dParams& p,
            double err, double scale) {
  if (ok) return;
  ++failures;
  std::printf(
      "FAIL %s %s N=%lld C=%lld H=%lld W=%lld O=%lld k=%lldx%lld s=%lldx%lld "
      "p=%lldx%lld d=%lldx%lld g=%lld: err %.3g (scale %.3g)\n",
      what, cfg, (long long)p.N, (long long)p.C, (long long)p.H,
      (long long)p.W, (long long)p.O, (long long)p.KH, (long long)p.KW,
      (long long)p.stride_h, (long long)p.stride_w, (long long)p.pad_h,
      (long long)p.pad_w, (long long)p.dil_h, (long long)p.dil_w,
      (long long)p.groups, err, scale);
}

// Runs every block of a launch (threads in reverse order if `rev`); returns
// whether every block's threads agreed on the chunk count.
template <class Thread, class Args, class Sm>
bool run_grid(const Args& a, int nt, bool rev) {
  bool uniform = true;
  for (int64_t b = 0; b < a.blocks; ++b) {
    Sm sm;
    HostExec<Thread, Args, Sm> ex(a, sm, nt, b, rev);
    run_block(ex);
    uniform = uniform && ex.uniform;
  }
  return uniform;
}

template <class Cfg, typename T>
void check_config(const char* name, const Adder2dParams& p,
                  const std::vector<T>& x, const std::vector<T>& w,
                  const std::vector<T>& go, double tol) {
  using acc_t = T;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> y_ref = forward_naive(p, x, w);
  const std::vector<T> gx_ref = grad_input_naive(p, go, x, w);
  const std::vector<T> wt_f = transpose_weight(p, w, true);
  const std::vector<T> wt_b = transpose_weight(p, w, false);
  for (int rev = 0; rev < 2; ++rev) {
    {
      std::vector<T> y(y_ref.size(), nan);
      const FwdArgs<T> a = make_fwd_args<Cfg>(p, wt_f.data(), x.data(), y.data());
      const bool uniform =
          run_grid<FwdThread<Cfg, T, acc_t>, FwdArgs<T>, Smem<Cfg, acc_t>>(
              a, Cfg::NT, rev);
      double scale;
      const double err = max_err(y, y_ref, &scale);
      report(uniform && err <= tol * (1 + scale),
             rev ? "forward(rev)" : "forward", name, p, err, scale);
    }
    {
      std::vector<T> gx(gx_ref.size(), nan);
      const BwdArgs<T> a =
          make_bwd_args<Cfg>(p, wt_b.data(), go.data(), x.data(), gx.data());
      const bool uniform =
          run_grid<BwdThread<Cfg, T, acc_t>, BwdArgs<T>, Smem<Cfg, acc_t>>(
              a, Cfg::NT, rev);
      double scale;
      const double err = max_err(gx, gx_ref, &scale);
      report(uniform && err <= tol * (1 + scale),
             rev ? "grad_input(rev)" : "grad_input", name, p, err, scale);
    }
  }
}

template <typename T>
void check_all(const Adder2dParams& p, std::mt19937& rng, double tol) {
  std::normal_distribution<double> nd(0.0, 1.0);
  auto fill = [&](std::vector<T>& v, double s) {
    for (auto& e : v) e = T(s * nd(rng));
  };
  std::vector<T> x(p.N * p.C * p.H * p.W), w(p.O * p.cin_per_group() * p.KH * p.KW),
      go(p.N * p.O * p.OH * p.OW);
  fill(x, 1.0);
  fill(w, 0.7);  // |W - X| straddles 1: both clamp branches are taken
  fill(go, 1.0);
  // The tile shapes the CUDA launchers use (adder2d_cuda_tile.cuh).
  check_config<Fwd128, T>("Fwd128", p, x, w, go, tol);
  check_config<Fwd64, T>("Fwd64", p, x, w, go, tol);
  check_config<Fwd32, T>("Fwd32", p, x, w, go, tol);
  check_config<Fwd16, T>("Fwd16", p, x, w, go, tol);
  check_config<Bwd128, T>("Bwd128", p, x, w, go, tol);
  check_config<Bwd64, T>("Bwd64", p, x, w, go, tol);
  check_config<Bwd32, T>("Bwd32", p, x, w, go, tol);
  check_config<Bwd16, T>("Bwd16", p, x, w, go, tol);
  check_config<Tile64, T>("Tile64", p, x, w, go, tol);
}

// ---- packed float16 / bfloat16 kernels ---------------------------------------

// The helpers' rounding against independent ones: the compiler's _Float16
// (round to nearest even) and the float32 -> bfloat16 bit trick.
void check_rounding(std::mt19937& rng) {
  std::uniform_int_distribution<uint32_t> bits(0, 0xffffffffu);
  int bad = 0;
  for (int k = 0; k < 200000; ++k) {
    uint32_t u = bits(rng);
    if (k % 2) u = (u & 0x807fffffu) | ((100u + u % 55u) << 23);  // |f| ~ 1
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isnan(f)) continue;
    const _Float16 h = static_cast<_Float16>(f);
    uint16_t hb;
    std::memcpy(&hb, &h, 2);
    const uint32_t bf = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    if (float_to_bits<Fmt::kF16>(f) != hb ||
        bits_to_float<Fmt::kF16>(hb) != static_cast<float>(h) ||
        float_to_bits<Fmt::kBF16>(f) != (std::isinf(f) ? u >> 16 : bf))
      ++bad;
  }
  if (bad) {
    ++failures;
    std::printf("FAIL 16-bit rounding helpers: %d of 200000 values\n", bad);
  }
}

template <Fmt F>
double dec(Half16<F> v) {
  return double(bits_to_float<F>(v.bits));
}

// The packed forward's arithmetic in its order, with scalar double code: per
// output, per tap, per chunk of BK rows, a 16-bit partial of |w - x| (each
// step rounded), added to a float32 sum; the output rounded once.
template <Fmt F>
std::vector<Half16<F>> forward_packed_naive(const Adder2dParams& p,
                                            const std::vector<Half16<F>>& x,
                                            const std::vector<Half16<F>>& w,
                                            int BK) {
  const int64_t Cg = p.cin_per_group(), Og = p.cout_per_group();
  std::vector<Half16<F>> y(p.N * p.O * p.L());
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t o = 0; o < p.O; ++o)
      for (int64_t h = 0; h < p.OH; ++h)
        for (int64_t ww = 0; ww < p.OW; ++ww) {
          float acc = 0;
          const int64_t g = o / Og;
          for (int64_t i = 0; i < p.KH; ++i)
            for (int64_t j = 0; j < p.KW; ++j) {
              const int64_t iy =
                  adder_in_coord(h, i, p.stride_h, p.pad_h, p.dil_h);
              const int64_t ix =
                  adder_in_coord(ww, j, p.stride_w, p.pad_w, p.dil_w);
              const bool in = iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
              for (int64_t c0 = 0; c0 < Cg; c0 += BK) {
                double part = 0;
                for (int64_t c = c0; c < std::min<int64_t>(c0 + BK, Cg); ++c) {
                  const double xv =
                      in ? dec(x[((n * p.C + g * Cg + c) * p.H + iy) * p.W + ix])
                         : 0.0;
                  const double wv = dec(w[((o * Cg + c) * p.KH + i) * p.KW + j]);
                  part = round_host<F>(part +
                                       std::fabs(round_host<F>(wv - xv)));
                }
                acc += static_cast<float>(part);
              }
            }
          y[((n * p.O + o) * p.OH + h) * p.OW + ww] = Half16<F>(-acc);
        }
  return y;
}

// The packed input gradient's arithmetic in its order: per input pixel, per
// tap reaching it, per chunk of BK output channels, 16-bit partials of
// sat(a - 0.5 x) g with a = 0.5 w + 0.5 (each rounded; the multiply-add
// fused) and of g, added to float32 sums; the result 2 acc - gsum rounded
// once.
template <Fmt F>
std::vector<Half16<F>> grad_input_packed_naive(
    const Adder2dParams& p, const std::vector<Half16<F>>& go,
    const std::vector<Half16<F>>& x, const std::vector<Half16<F>>& w, int BK) {
  const int64_t Cg = p.cin_per_group(), Og = p.cout_per_group();
  std::vector<Half16<F>> gx(p.N * p.C * p.H * p.W);
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t ch = 0; ch < p.C; ++ch)
      for (int64_t y = 0; y < p.H; ++y)
        for (int64_t xx = 0; xx < p.W; ++xx) {
          const int64_t g = ch / Cg, c = ch % Cg;
          const double xh = round_host<F>(
              0.5 * dec(x[((n * p.C + ch) * p.H + y) * p.W + xx]));
          float acc = 0, gs = 0;
          for (int64_t i = 0; i < p.KH; ++i) {
            int64_t h;
            if (!adder_out_coord(y, i, p.stride_h, p.pad_h, p.dil_h, p.OH, &h))
              continue;
            for (int64_t j = 0; j < p.KW; ++j) {
              int64_t ow;
              if (!adder_out_coord(xx, j, p.stride_w, p.pad_w, p.dil_w, p.OW,
                                   &ow))
                continue;
              for (int64_t o0 = 0; o0 < Og; o0 += BK) {
                double part = 0, gp = 0;
                for (int64_t oo = o0; oo < std::min<int64_t>(o0 + BK, Og); ++oo) {
                  const int64_t o = g * Og + oo;
                  const double a = round_host<F>(
                      0.5 * dec(w[((o * Cg + c) * p.KH + i) * p.KW + j]) + 0.5);
                  const double gv =
                      dec(go[((n * p.O + o) * p.OH + h) * p.OW + ow]);
                  const double sat =
                      std::fmin(std::fmax(round_host<F>(a - xh), 0.0), 1.0);
                  part = round_host<F>(sat * gv + part);
                  gp = round_host<F>(gp + gv);
                }
                acc += static_cast<float>(part);
                gs += static_cast<float>(gp);
              }
            }
          }
          gx[((n * p.C + ch) * p.H + y) * p.W + xx] = Half16<F>(2.f * acc - gs);
        }
  return gx;
}

template <class Cfg, Fmt F>
void check_packed_config(const char* name, const Adder2dParams& p,
                         const std::vector<Half16<F>>& x,
                         const std::vector<Half16<F>>& w) {
  using H = Half16<F>;
  const std::vector<H> y_ref = forward_packed_naive<F>(p, x, w, Cfg::BK);
  // Sanity of the order-exact reference against exact sums: every partial
  // of BK terms is within BK + 1 roundings of the 16-bit format.
  std::vector<double> xd(x.size()), wd(w.size());
  for (size_t k = 0; k < x.size(); ++k) xd[k] = dec(x[k]);
  for (size_t k = 0; k < w.size(); ++k) wd[k] = dec(w[k]);
  const std::vector<double> exact = forward_naive(p, xd, wd);
  const double u = F == Fmt::kF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  double worst = 0;
  for (size_t k = 0; k < exact.size(); ++k)
    worst = std::max(worst, std::fabs(dec(y_ref[k]) - exact[k]) /
                                ((Cfg::BK + 2) * u * std::fabs(exact[k]) +
                                 1e-30));
  report(worst <= 1.0, "forward_packed(reference)", name, p, worst, 1.0);

  const std::vector<H> wt_f = transpose_weight(p, w, true);
  for (int rev = 0; rev < 2; ++rev) {
    std::vector<H> y(y_ref.size());
    for (auto& v : y) v.bits = 0x7fff;  // NaN in both formats
    const FwdArgs<H> a = make_fwd_args<Cfg>(p, wt_f.data(), x.data(), y.data());
    const bool uniform =
        run_grid<FwdThreadPacked<Cfg, F>, FwdArgs<H>, SmemPacked<Cfg>>(
            a, Cfg::NT, rev);
    int64_t differ = 0;
    for (size_t k = 0; k < y.size(); ++k) differ += y[k].bits != y_ref[k].bits;
    report(uniform && differ == 0,
           rev ? "forward_packed(rev), bits differ" : "forward_packed, bits differ",
           name, p, double(differ), double(y.size()));
  }
}

template <class Cfg, Fmt F>
void check_packed_grad_config(const char* name, const Adder2dParams& p,
                              const std::vector<Half16<F>>& x,
                              const std::vector<Half16<F>>& w,
                              const std::vector<Half16<F>>& go) {
  using H = Half16<F>;
  const std::vector<H> gx_ref =
      grad_input_packed_naive<F>(p, go, x, w, Cfg::BK);
  const std::vector<H> wt_b = transpose_weight(p, w, false);
  for (int rev = 0; rev < 2; ++rev) {
    std::vector<H> gx(gx_ref.size());
    for (auto& v : gx) v.bits = 0x7fff;  // NaN in both formats
    const BwdArgs<H> a =
        make_bwd_args<Cfg>(p, wt_b.data(), go.data(), x.data(), gx.data());
    const bool uniform =
        run_grid<BwdThreadPacked<Cfg, F>, BwdArgs<H>, SmemPacked<Cfg>>(
            a, Cfg::NT, rev);
    int64_t differ = 0;
    for (size_t k = 0; k < gx.size(); ++k)
      differ += gx[k].bits != gx_ref[k].bits;
    report(uniform && differ == 0,
           rev ? "grad_input_packed(rev), bits differ"
               : "grad_input_packed, bits differ",
           name, p, double(differ), double(gx.size()));
  }
  // Sanity of the order-exact reference against the exact gradient.
  std::vector<double> xd(x.size()), wd(w.size()), gd(go.size());
  for (size_t k = 0; k < x.size(); ++k) xd[k] = dec(x[k]);
  for (size_t k = 0; k < w.size(); ++k) wd[k] = dec(w[k]);
  for (size_t k = 0; k < go.size(); ++k) gd[k] = dec(go[k]);
  const std::vector<double> exact = grad_input_naive(p, gd, xd, wd);
  double scale = 0, err = 0;
  for (size_t k = 0; k < exact.size(); ++k) {
    scale = std::max(scale, std::fabs(exact[k]));
    err = std::max(err, std::fabs(dec(gx_ref[k]) - exact[k]));
  }
  const double u = F == Fmt::kF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  report(err <= 8 * (Cfg::BK + 2) * u * (1 + scale),
         "grad_input_packed(reference)", name, p, err, scale);
}

template <Fmt F>
void check_packed(const Adder2dParams& p, std::mt19937& rng) {
  std::normal_distribution<double> nd(0.0, 1.0);
  auto fill = [&](std::vector<Half16<F>>& v, double s) {
    for (auto& e : v) e = Half16<F>(static_cast<float>(s * nd(rng)));
  };
  std::vector<Half16<F>> x(p.N * p.C * p.H * p.W),
      w(p.O * p.cin_per_group() * p.KH * p.KW), go(p.N * p.O * p.OH * p.OW);
  fill(x, 1.0);
  fill(w, 0.7);  // |W - X| straddles 1: both clamp branches are taken
  fill(go, 1.0);
  check_packed_config<Fwd128, F>("Fwd128", p, x, w);
  check_packed_config<Fwd64, F>("Fwd64", p, x, w);
  check_packed_config<Fwd32, F>("Fwd32", p, x, w);
  check_packed_config<Fwd16, F>("Fwd16", p, x, w);
  check_packed_grad_config<Bwd128, F>("Bwd128", p, x, w, go);
  check_packed_grad_config<Bwd64, F>("Bwd64", p, x, w, go);
  check_packed_grad_config<Bwd32, F>("Bwd32", p, x, w, go);
  check_packed_grad_config<Bwd16, F>("Bwd16", p, x, w, go);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  std::vector<Adder2dParams> cases = {
      // N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, G
      make_params(2, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1),    // ResNet-like
      make_params(1, 12, 9, 7, 20, 3, 3, 2, 2, 1, 1, 1, 1, 1),    // stride 2, odd
      make_params(2, 16, 8, 8, 32, 1, 1, 2, 2, 0, 0, 1, 1, 1),    // 1x1 s2 shortcut
      make_params(1, 6, 11, 10, 9, 2, 5, 3, 2, 2, 1, 2, 1, 3),    // groups, mixed
      make_params(3, 5, 6, 5, 7, 1, 3, 1, 3, 0, 2, 1, 2, 1),      // non-square
      make_params(1, 4, 5, 5, 4, 3, 3, 1, 1, 2, 2, 2, 2, 4),      // depthwise, dilated
      make_params(1, 3, 4, 4, 2, 4, 4, 1, 1, 0, 0, 1, 1, 1),      // kernel = input
      make_params(2, 40, 6, 6, 130, 3, 3, 1, 1, 1, 1, 1, 1, 1),   // several M tiles
      make_params(1, 140, 5, 4, 24, 3, 1, 2, 1, 1, 0, 1, 1, 2),   // several C tiles
      make_params(1, 2, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1),      // stride > 1 out
      make_params(2, 8, 13, 17, 12, 3, 3, 2, 2, 3, 0, 3, 1, 2),   // wide pad/dilation
  };
  for (const auto& p : cases) check_all<double>(p, rng, 1e-10);
  for (size_t k = 0; k < 2; ++k) check_all<float>(cases[k], rng, 2e-5);
  check_rounding(rng);
  // The packed kernels share the index code checked above: the shapes with
  // stride classes, groups, several row tiles, reduction tails, dilation.
  const size_t packed_cases[] = {1, 3, 7, 8, 10};
  for (size_t k : packed_cases) {
    check_packed<Fmt::kF16>(cases[k], rng);
    check_packed<Fmt::kBF16>(cases[k], rng);
  }
  std::printf("%s: %d failure(s): %zu shapes x 9 tile shapes x 2 directions "
              "(float kernels), %zu shapes x 4 tile shapes x 2 directions x "
              "2 16-bit formats (packed kernels), each in 2 thread orders\n",
              failures ? "FAILED" : "OK", failures, cases.size(),
              sizeof(packed_cases) / sizeof(packed_cases[0]));
  return failures ? 1 : 0;
}
