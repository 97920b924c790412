// Host emulation of the adder2d CUDA kernels (no GPU, no torch).
//
// Runs the per-thread code of csrc/common/adder2d_cuda_tile.cuh for every
// thread of every block, phase by phase as the kernels do between barriers,
// and compares with direct loops over the formulas. It checks the tiling,
// the index math (stride classes, padding, dilation, groups, tails), that
// every output is written once, and the double-buffered pipeline (threads are
// stepped in both orders: a stage read and written in the same phase would
// give different results).
//
// Not built by setup.py (only *.cu are). tests/test_ops_cuda.py compiles and
// runs it:  g++ -O2 -std=c++17 -I csrc/common <this file> -o emu && ./emu
// Exit status 0 when every case matches; prints one line per failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "adder2d_cuda_tile.cuh"

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
  void prologue() {
    each([&](Thread& t) {
      t.load(a);
      t.store(sm, 0);
      t.advance(a);
    });
  }
  void step(int stage, bool more) {
    each([&](Thread& t) {
      if (more) t.load(a);
      t.compute(sm, stage);
      if (more) {
        t.store(sm, stage ^ 1);
        t.advance(a);
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
  std::printf("%s: %d failure(s) over %zu shapes x 9 tile shapes x 2 "
              "directions x 2 thread orders\n",
              failures ? "FAILED" : "OK", failures, cases.size());
  return failures ? 1 : 0;
}
