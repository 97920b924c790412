// Tiled adder2d kernels: the work of one thread of one CUDA thread block,
// written as plain C++ over the shared index helpers (adder2d_params.h).
//
// The same code runs in the CUDA kernels (adder2d_cuda_kernels.cuh,
// one `Thread` per CUDA thread, `__syncthreads()` between phases) and in a
// host emulation (tests/csrc/adder2d_cuda_emulate.cpp, every thread of
// a block stepped in turn), so tiling, index math and the double-buffered
// pipeline are checked on a CPU-only machine.
//
// Both kernels are "GEMM-like" with a non-linear term and implicit im2col:
// an output tile of BM rows x BN columns per block, reduced over chunks of BK
// along R for every kernel tap (i, j); operands A (weight) and B (gathered
// activations) are staged through two shared-memory buffers.
//
//   forward:  rows = output channels o of group g (M = Cout/groups),
//             columns = output positions (n, oh, ow), R = Cin/groups,
//             acc += |W[o,c,i,j] - X_pad[n, c, oh*sh-ph+i*dh, ow*sw-pw+j*dw]|
//   grad_X:   rows = input channels c of group g (M = Cin/groups),
//             columns = input pixels (n, y, x), R = Cout/groups,
//             acc += sat(0.5 W[o,c,i,j] + 0.5 - 0.5 X[n,c,y,x]) * G[n,o,h,w]
//             with (h, w) the output read through tap (i, j); then
//             grad_X = 2 acc - sum G, because
//             clamp(W - X, -1, 1) = 2 sat((W - X + 1) / 2) - 1: one add with
//             saturation plus one FMA per term instead of sub, min, max, FMA.
//
// Every output element is reduced by one thread in a fixed order (taps, then
// R ascending), so results are bit-identical run to run (no atomics).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "adder2d_params.h"

// Full unrolling keeps the per-thread tiles in registers on the device; host
// code (emulation, nvcc's host pass) does not need it, and g++ -Wall would
// warn about the pragma.
#if defined(__CUDA_ARCH__)
#define ADDER_UNROLL _Pragma("unroll")
#else
#define ADDER_UNROLL
#endif

namespace adder_mm {
namespace cuda_tile {

// Block tile BM x BN, reduction chunk BK, TM x TN outputs per thread;
// MIN_BLOCKS: blocks per SM the register allocation must allow (CUDA only).
template <int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_ = 1>
struct Config {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int TY = BM / TM;  // threads along rows
  static constexpr int TX = BN / TN;  // threads along columns
  static constexpr int NT = TX * TY;  // threads per block
  // A tile: BK x BM elements, contiguous along rows of the transposed weight.
  static constexpr int A_PER = BK * BM / NT;
  // B tile: BK x BN; thread t gathers column t % BN, rows t / BN + q * KSTEP.
  static constexpr int KSTEP = NT / BN;
  static constexpr int B_PER = BK / KSTEP;
  static_assert(TM % 4 == 0 && TN % 4 == 0, "per-thread tile in float4 steps");
  static_assert(BM % (TM) == 0 && BN % TN == 0, "tile not divisible");
  static_assert((BK * BM) % NT == 0, "A tile not evenly shared by threads");
  static_assert(NT % BN == 0 && BK % KSTEP == 0,
                "B tile columns must map to fixed threads");
};

// Tile shapes, largest first; the last argument is the blocks per SM the
// register allocation must allow (caps registers at 64K / (NT * it)). The
// values keep every kernel free of spills for sm_90 (ptxas -v); the 8x8 and
// 8x4 per-thread tiles then run one 256-thread block per SM.
// Forward: rows are output channels per group.
using Fwd128 = Config<128, 128, 8, 8, 8, 1>;  // 256 threads
using Fwd64 = Config<64, 128, 8, 4, 8, 2>;    // 256 threads
using Fwd32 = Config<32, 128, 8, 4, 8, 4>;    // 128 threads
using Fwd16 = Config<16, 128, 16, 4, 4, 4>;   // 128 threads
// Input gradient: rows are input channels per group. Each thread also holds
// 0.5 X of its outputs, so per-thread tiles are half the forward's.
using Bwd128 = Config<128, 64, 8, 8, 4, 1>;   // 256 threads
using Bwd64 = Config<64, 128, 8, 8, 4, 1>;    // 256 threads
using Bwd32 = Config<32, 128, 8, 4, 4, 2>;    // 256 threads
using Bwd16 = Config<16, 128, 16, 4, 4, 3>;   // 128 threads
// float64 exists for tests: one shape keeps compile time down.
using Tile64 = Config<32, 64, 8, 4, 4, 1>;  // 128 threads

// Two pipeline stages of both operand tiles, in the accumulation type.
template <class Cfg, typename acc_t>
struct alignas(16) Smem {
  acc_t a[2][Cfg::BK][Cfg::BM];
  acc_t b[2][Cfg::BK][Cfg::BN];
};

ADDER_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- scalar helpers that differ between host and device --------------------

// Four consecutive shared-memory values of 4 bytes (float, or the packed
// kernels' uint32_t pairs; 16-byte aligned), one vector load on the device.
template <typename T>
ADDER_HD void lds4(const T* s, T* v) {
#ifdef __CUDA_ARCH__
  using V4 = std::conditional_t<std::is_same<T, float>::value, float4, uint4>;
  static_assert(sizeof(V4) == 4 * sizeof(T), "four 4-byte values");
  const V4 t = *reinterpret_cast<const V4*>(s);
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
#else
  for (int k = 0; k < 4; ++k) v[k] = s[k];
#endif
}

ADDER_HD void lds4(const double* s, double* v) {
#ifdef __CUDA_ARCH__
  const double2 t0 = *reinterpret_cast<const double2*>(s);
  const double2 t1 = *reinterpret_cast<const double2*>(s + 2);
  v[0] = t0.x;
  v[1] = t0.y;
  v[2] = t1.x;
  v[3] = t1.y;
#else
  for (int k = 0; k < 4; ++k) v[k] = s[k];
#endif
}

ADDER_HD float abs_diff(float a, float b) { return fabsf(a - b); }
ADDER_HD double abs_diff(double a, double b) { return fabs(a - b); }

// clamp(v, 0, 1); NaN gives 0.
ADDER_HD float sat01(float v) {
#ifdef __CUDA_ARCH__
  return __saturatef(v);
#else
  return fminf(fmaxf(v, 0.f), 1.f);
#endif
}
// Compare-and-select: fmin/fmax on doubles cost many more registers on the
// device (NaN rules) and float64 is a test path only.
ADDER_HD double sat01(double v) { return v > 1.0 ? 1.0 : (v > 0.0 ? v : 0.0); }

ADDER_HD float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
ADDER_HD double fma_acc(double a, double b, double c) { return fma(a, b, c); }

// ---- shared pipeline -------------------------------------------------------

// The main loop of one block. `Exec` runs each phase for every thread of the
// block (one on the device, all in turn on the host) and provides the
// barrier. Each thread's registers carry one chunk ahead of the shared
// stages: after computing chunk ch from stage ch&1, a thread stores chunk
// ch+1 (loaded a phase earlier) into the other stage and issues the global
// loads of chunk ch+2, whose latency then hides behind the next compute.
// Barriers on both sides of that refill pin it between two computes: with
// the loads written before the compute of the same phase, ptxas emitted them
// after it, next to their stores, and with one barrier it hoisted the stores
// above the compute, so either way a warp waited out a global load per chunk
// (sm_90 SASS). The two stages keep a refill off the stage being read.
template <class Exec>
ADDER_HD void run_block(Exec& ex) {
  const int64_t nch = ex.num_chunks();
  if (nch > 0) {  // chunk 0 into stage 0, chunk 1 (if any) into registers
    ex.load();
    ex.refill(0, nch > 1);
  }
  ex.sync();
  for (int64_t ch = 0; ch < nch; ++ch) {
    const int stage = static_cast<int>(ch & 1);
    ex.compute(stage);
    if (ch + 1 < nch) {
      ex.sync();
      ex.refill(stage ^ 1, ch + 2 < nch);
    }
    ex.sync();
  }
  ex.epilogue();
}

// Marks a B-tile column past the end of the problem: every tap of such a
// coordinate lands far outside the input, so the column gathers zeros.
constexpr int kFar = -(1 << 29);

// ---- per-thread parts both kernels share ------------------------------------

// One thread's operand registers and chunk cursor, and the moves of a chunk
// from global memory to registers (load_a, load_b) to shared memory (store)
// and of one k step from shared memory to registers (fragments), the same in
// both kernels. A is a BK x BM slice of the transposed weight (rows r0 ..,
// columns m0 ..); B is BK rows of the one column each thread gathers.
template <class Cfg, typename acc_t>
struct TileThread {
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK;
  static constexpr int TM = Cfg::TM, TN = Cfg::TN, TX = Cfg::TX, TY = Cfg::TY;
  static constexpr int NT = Cfg::NT, A_PER = Cfg::A_PER, B_PER = Cfg::B_PER;
  static constexpr int KSTEP = Cfg::KSTEP;
  using Sm = Smem<Cfg, acc_t>;

  // Live through the main loop, so kept few and narrow (each is registers).
  int mlim;        // M - m0: A-tile columns that exist
  int ti, tj, r0;  // chunk cursor: tap (ti, tj), rows r0 .. r0+BK-1
  int tid;
  acc_t ra[A_PER], rb[B_PER];
  acc_t acc[TM][TN];

  // ra = W where row r0 + r < R and column m < mlim (kHalf: 0.5 W + 0.5),
  // else 0; w points at (tap, row r0, column m0). Masked loads read a valid
  // address (w[0] exists) instead of branching: a plain LDG + select.
  template <bool kHalf, typename T>
  ADDER_HD void load_a(const T* w, int64_t R, int64_t M) {
    ADDER_UNROLL
    for (int q = 0; q < A_PER; ++q) {
      const int e = tid + q * NT;
      const int r = e / BM, m = e % BM;
      const bool ok = r0 + r < R && m < mlim;
      const acc_t v = static_cast<acc_t>(w[ok ? r * M + m : 0]);
      ra[q] = ok ? (kHalf ? acc_t(0.5) * v + acc_t(0.5) : v) : acc_t(0);
    }
  }

  // rb = rows r0 + ... of this thread's column, `plane` elements apart, where
  // col is not nullptr (the tap reads something) and the row is below R,
  // else 0; `any` is a valid address for the masked loads.
  template <typename T>
  ADDER_HD void load_b(const T* col, const T* any, int64_t plane, int64_t R) {
    const T* src = col != nullptr ? col : any;
    ADDER_UNROLL
    for (int q = 0; q < B_PER; ++q) {
      const int r = r0 + tid / BN + q * KSTEP;
      const bool ok = col != nullptr && r < R;
      const acc_t v = static_cast<acc_t>(src[ok ? r * plane : 0]);
      rb[q] = ok ? v : acc_t(0);
    }
  }

  ADDER_HD void store(Sm& sm, int stage) const {
    ADDER_UNROLL
    for (int q = 0; q < A_PER; ++q) {
      const int e = tid + q * NT;
      sm.a[stage][e / BM][e % BM] = ra[q];
    }
    ADDER_UNROLL
    for (int q = 0; q < B_PER; ++q)
      sm.b[stage][tid / BN + q * KSTEP][tid % BN] = rb[q];
  }

  // This thread's TM rows of A and TN columns of B at step kk of a stage.
  ADDER_HD void fragments(const Sm& sm, int stage, int kk, acc_t* av,
                          acc_t* bv) const {
    const int tx = tid % TX, ty = tid / TX;
    ADDER_UNROLL
    for (int q = 0; q < TM / 4; ++q)
      lds4(&sm.a[stage][kk][q * TY * 4 + ty * 4], &av[q * 4]);
    ADDER_UNROLL
    for (int q = 0; q < TN / 4; ++q)
      lds4(&sm.b[stage][kk][q * TX * 4 + tx * 4], &bv[q * 4]);
  }
};

// ---- forward ---------------------------------------------------------------

template <typename T>
struct FwdArgs {
  Adder2dParams p;
  const T* wt;  // weight as [G, KH, KW, Cin/G, Cout/G]
  const T* x;   // input [N, C, H, W]
  T* y;         // output [N, O, OH, OW]
  int64_t M, R, P;          // Cout/G, Cin/G, N*OH*OW
  int64_t mtiles, ptiles;   // tiles along M and P
  int64_t blocks;           // G * ptiles * mtiles
  int64_t chunks;           // per block: KH * KW * ceil(R / BK)
};

template <class Cfg, typename T>
FwdArgs<T> make_fwd_args(const Adder2dParams& p, const T* wt, const T* x,
                         T* y) {
  FwdArgs<T> a;
  a.p = p;
  a.wt = wt;
  a.x = x;
  a.y = y;
  a.M = p.cout_per_group();
  a.R = p.cin_per_group();
  a.P = p.N * p.L();
  a.mtiles = ceil_div(a.M, Cfg::BM);
  a.ptiles = ceil_div(a.P, Cfg::BN);
  a.blocks = p.groups * a.ptiles * a.mtiles;
  a.chunks = p.KH * p.KW * ceil_div(a.R, Cfg::BK);
  return a;
}

// Which tile of the problem a block computes.
struct FwdBlock {
  int64_t g, m0, p0;
};

template <typename T>
ADDER_HD FwdBlock fwd_block(const FwdArgs<T>& a, int BM, int BN,
                            int64_t block) {
  FwdBlock b;
  b.m0 = (block % a.mtiles) * BM;
  block /= a.mtiles;
  b.p0 = (block % a.ptiles) * BN;
  b.g = block / a.ptiles;
  return b;
}

template <class Cfg, typename T, typename acc_t>
struct FwdThread : TileThread<Cfg, acc_t> {
  using Base = TileThread<Cfg, acc_t>;
  using typename Base::Sm;
  using Base::BM, Base::BN, Base::BK, Base::TM, Base::TN, Base::TX, Base::TY;
  using Base::mlim, Base::ti, Base::tj, Base::r0, Base::tid, Base::acc;

  const T* wa;  // transposed weight at (g, tap 0, row 0, column m0)
  const T* xn;  // x[n, g*Cg] for this thread's B column (position p0+tid%BN)
  const T* xb;  // xn + offset of the current tap; nullptr on padding
  int oh, ow;   // output position of the B column (kFar past the end)

  ADDER_HD void init(const FwdArgs<T>& a, int64_t block, int tid_) {
    const Adder2dParams& p = a.p;
    tid = tid_;
    const FwdBlock b = fwd_block(a, BM, BN, block);
    wa = a.wt + b.g * p.KH * p.KW * a.R * a.M + b.m0;
    mlim = static_cast<int>(a.M - b.m0);
    const int64_t pos = b.p0 + tid % BN;
    int64_t n = 0;
    oh = ow = kFar;
    if (pos < a.P) {
      n = pos / p.L();
      const int64_t l = pos % p.L();
      oh = static_cast<int>(l / p.OW);
      ow = static_cast<int>(l % p.OW);
    }
    xn = a.x + (n * p.C + b.g * a.R) * p.H * p.W;
    ti = tj = r0 = 0;
    set_tap(a);
    ADDER_UNROLL
    for (int i = 0; i < TM; ++i)
      ADDER_UNROLL
      for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);
  }

  ADDER_HD int64_t num_chunks(const FwdArgs<T>& a) const { return a.chunks; }

  ADDER_HD void set_tap(const FwdArgs<T>& a) {
    const Adder2dParams& p = a.p;
    const int64_t iy = adder_in_coord(oh, ti, p.stride_h, p.pad_h, p.dil_h);
    const int64_t ix = adder_in_coord(ow, tj, p.stride_w, p.pad_w, p.dil_w);
    const bool inside = iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
    xb = inside ? xn + iy * p.W + ix : nullptr;
  }

  // Global -> registers for the chunk at the cursor. A padded tap reads 0
  // (and still adds |W|); rows past R read 0 on both operands and add
  // nothing.
  ADDER_HD void load(const FwdArgs<T>& a) {
    this->template load_a<false>(
        wa + ((ti * a.p.KW + tj) * a.R + r0) * a.M, a.R, a.M);
    this->load_b(xb, a.x, a.p.H * a.p.W, a.R);
  }

  ADDER_HD void advance(const FwdArgs<T>& a) {
    r0 += BK;
    if (r0 < a.R) return;
    r0 = 0;
    if (++tj == a.p.KW) {
      tj = 0;
      ++ti;
    }
    set_tap(a);
  }

  ADDER_HD void compute(const Sm& sm, int stage) {
    ADDER_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      acc_t av[TM], bv[TN];
      this->fragments(sm, stage, kk, av, bv);
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i)
        ADDER_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] += abs_diff(av[i], bv[j]);
    }
  }

  ADDER_HD void epilogue(const FwdArgs<T>& a, int64_t block) const {
    const int tx = tid % TX, ty = tid / TX;
    const FwdBlock b = fwd_block(a, BM, BN, block);
    const int64_t L = a.p.L();
    ADDER_UNROLL
    for (int j = 0; j < TN; ++j) {
      const int64_t pos = b.p0 + (j / 4) * TX * 4 + tx * 4 + j % 4;
      if (pos >= a.P) continue;
      const int64_t n = pos / L, l = pos % L;
      T* yo = a.y + (n * a.p.O + b.g * a.M + b.m0) * L + l;
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i) {
        const int m = (i / 4) * TY * 4 + ty * 4 + i % 4;
        if (m < mlim) yo[m * L] = static_cast<T>(-acc[i][j]);
      }
    }
  }
};

// ---- input gradient --------------------------------------------------------

// Input pixels are split into stride classes (y % sh, x % sw). Every pixel of
// one class is reached by the same taps (i, j): those with
// (ry + ph - i*dh) divisible by sh; the output row is then h = y/sh + e_i with
// e_i = (ry + ph - i*dh) / sh, no division per pixel. A block holds pixels of
// one class only, so taps that reach none of its pixels are skipped instead of
// multiplied by zero (3/4 of the work of a stride-2 layer).
ADDER_HD bool tap_reaches_class(int64_t r, int64_t k, int64_t stride,
                                int64_t pad, int64_t dil) {
  return (r + pad - k * dil) % stride == 0;
}
ADDER_HD int64_t tap_class_offset(int64_t r, int64_t k, int64_t stride,
                                  int64_t pad, int64_t dil) {
  return (r + pad - k * dil) / stride;  // exact when tap_reaches_class
}

template <typename T>
struct BwdArgs {
  Adder2dParams p;
  const T* wt;  // weight as [G, KH, KW, Cout/G, Cin/G]
  const T* go;  // grad_out [N, O, OH, OW]
  const T* x;   // input [N, C, H, W]
  T* gx;        // grad_in [N, C, H, W]
  int64_t M, R;             // Cin/G, Cout/G
  int64_t ny, nx, Q;        // pixels of one class: [N, ny, nx] (padded)
  int64_t S;                // classes: sh * sw
  int64_t mtiles, qtiles;
  int64_t blocks;           // G * S * qtiles * mtiles
  int64_t rchunks;          // ceil(R / BK): chunks per tap
};

template <class Cfg, typename T>
BwdArgs<T> make_bwd_args(const Adder2dParams& p, const T* wt, const T* go,
                         const T* x, T* gx) {
  BwdArgs<T> a;
  a.p = p;
  a.wt = wt;
  a.go = go;
  a.x = x;
  a.gx = gx;
  a.M = p.cin_per_group();
  a.R = p.cout_per_group();
  a.ny = ceil_div(p.H, p.stride_h);
  a.nx = ceil_div(p.W, p.stride_w);
  a.Q = p.N * a.ny * a.nx;
  a.S = p.stride_h * p.stride_w;
  a.mtiles = ceil_div(a.M, Cfg::BM);
  a.qtiles = ceil_div(a.Q, Cfg::BN);
  a.blocks = p.groups * a.S * a.qtiles * a.mtiles;
  a.rchunks = ceil_div(a.R, Cfg::BK);
  return a;
}

struct BwdBlock {
  int64_t g, m0, q0;
  int ry, rx;  // stride class
};

template <typename T>
ADDER_HD BwdBlock bwd_block(const BwdArgs<T>& a, int BM, int BN,
                            int64_t block) {
  BwdBlock b;
  b.m0 = (block % a.mtiles) * BM;
  block /= a.mtiles;
  b.q0 = (block % a.qtiles) * BN;
  block /= a.qtiles;
  const int64_t cls = block % a.S;
  b.g = block / a.S;
  b.ry = static_cast<int>(cls / a.p.stride_w);
  b.rx = static_cast<int>(cls % a.p.stride_w);
  return b;
}

// Pixel of class-local index q in class (ry, rx): image n and class-grid
// coordinates (yv, xv), i.e. y = yv*sh + ry, x = xv*sw + rx. False when q is
// past the end or the pixel falls outside the image (odd sizes).
template <typename T>
ADDER_HD bool class_pixel(const BwdArgs<T>& a, int ry, int rx, int64_t q,
                          int64_t* n, int64_t* yv, int64_t* xv) {
  if (q >= a.Q) return false;
  *n = q / (a.ny * a.nx);
  const int64_t rem = q % (a.ny * a.nx);
  *yv = rem / a.nx;
  *xv = rem % a.nx;
  return *yv * a.p.stride_h + ry < a.p.H && *xv * a.p.stride_w + rx < a.p.W;
}

template <class Cfg, typename T, typename acc_t>
struct BwdThread : TileThread<Cfg, acc_t> {
  using Base = TileThread<Cfg, acc_t>;
  using typename Base::Sm;
  using Base::BM, Base::BN, Base::BK, Base::TM, Base::TN, Base::TX, Base::TY;
  using Base::mlim, Base::ti, Base::tj, Base::r0, Base::tid, Base::acc;

  // The chunk cursor (ti, tj, r0) runs over the taps that reach the class.
  const T* wa;  // transposed weight at (g, tap 0, row 0, column m0)
  const T* gn;  // grad_out[n, g*Og] for this thread's B column
  const T* gb;  // gn + (h, w) read through the current tap; nullptr if none
  int yv, xv;   // class-grid coordinates of the B column (kFar if absent)
  int ry, rx;   // stride class of the block
  int64_t nch;
  acc_t xh[TM][TN];  // 0.5 * X at this thread's outputs
  acc_t gsum[TN];    // sum of the G values gathered for each output column

  ADDER_HD int next_i(const BwdArgs<T>& a, int i) const {
    while (i < a.p.KH &&
           !tap_reaches_class(ry, i, a.p.stride_h, a.p.pad_h, a.p.dil_h))
      ++i;
    return i;
  }
  ADDER_HD int next_j(const BwdArgs<T>& a, int j) const {
    while (j < a.p.KW &&
           !tap_reaches_class(rx, j, a.p.stride_w, a.p.pad_w, a.p.dil_w))
      ++j;
    return j;
  }

  ADDER_HD void init(const BwdArgs<T>& a, int64_t block, int tid_) {
    const Adder2dParams& p = a.p;
    tid = tid_;
    const int tx = tid % TX, ty = tid / TX;
    const BwdBlock b = bwd_block(a, BM, BN, block);
    ry = b.ry;
    rx = b.rx;
    wa = a.wt + b.g * p.KH * p.KW * a.R * a.M + b.m0;
    mlim = static_cast<int>(a.M - b.m0);

    int64_t n = 0, qy = 0, qx = 0;
    yv = xv = kFar;
    if (class_pixel(a, ry, rx, b.q0 + tid % BN, &n, &qy, &qx)) {
      yv = static_cast<int>(qy);
      xv = static_cast<int>(qx);
    }
    gn = a.go + (n * p.O + b.g * a.R) * p.L();

    int64_t nvi = 0, nvj = 0;
    for (int i = next_i(a, 0); i < p.KH; i = next_i(a, i + 1)) ++nvi;
    for (int j = next_j(a, 0); j < p.KW; j = next_j(a, j + 1)) ++nvj;
    nch = nvi * nvj * a.rchunks;
    ti = next_i(a, 0);
    tj = next_j(a, 0);
    r0 = 0;
    gb = nullptr;
    if (nch > 0) set_tap(a);

    // This thread's outputs: rows m0 + ..., class pixels q0 + ...
    const int64_t plane = p.H * p.W;
    ADDER_UNROLL
    for (int j = 0; j < TN; ++j) {
      int64_t on = 0, oy = 0, ox = 0;
      const bool ok = class_pixel(a, ry, rx,
                                  b.q0 + (j / 4) * TX * 4 + tx * 4 + j % 4,
                                  &on, &oy, &ox);
      const T* xo = a.x + (on * p.C + b.g * a.M + b.m0) * plane +
                    (oy * p.stride_h + ry) * p.W + ox * p.stride_w + rx;
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i) {
        const int m = (i / 4) * TY * 4 + ty * 4 + i % 4;
        xh[i][j] = (ok && m < mlim)
                       ? acc_t(0.5) * static_cast<acc_t>(xo[m * plane])
                       : acc_t(0);
        acc[i][j] = acc_t(0);
      }
      gsum[j] = acc_t(0);
    }
  }

  ADDER_HD int64_t num_chunks(const BwdArgs<T>&) const { return nch; }

  ADDER_HD void set_tap(const BwdArgs<T>& a) {
    const Adder2dParams& p = a.p;
    const int64_t h =
        yv + tap_class_offset(ry, ti, p.stride_h, p.pad_h, p.dil_h);
    const int64_t w =
        xv + tap_class_offset(rx, tj, p.stride_w, p.pad_w, p.dil_w);
    const bool inside = h >= 0 && h < p.OH && w >= 0 && w < p.OW;
    gb = inside ? gn + h * p.OW + w : nullptr;
  }

  // A is stored as 0.5 W + 0.5 (see the header comment); rows past R meet
  // G = 0 and add nothing.
  ADDER_HD void load(const BwdArgs<T>& a) {
    this->template load_a<true>(
        wa + ((ti * a.p.KW + tj) * a.R + r0) * a.M, a.R, a.M);
    this->load_b(gb, a.go, a.p.L(), a.R);
  }

  ADDER_HD void advance(const BwdArgs<T>& a) {
    r0 += BK;
    if (r0 < a.R) return;
    r0 = 0;
    tj = next_j(a, tj + 1);
    if (tj >= a.p.KW) {
      tj = next_j(a, 0);
      ti = next_i(a, ti + 1);
    }
    if (ti < a.p.KH) set_tap(a);
  }

  ADDER_HD void compute(const Sm& sm, int stage) {
    ADDER_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      acc_t av[TM], bv[TN];
      this->fragments(sm, stage, kk, av, bv);
      ADDER_UNROLL
      for (int j = 0; j < TN; ++j) gsum[j] += bv[j];
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i)
        ADDER_UNROLL
        for (int j = 0; j < TN; ++j)
          acc[i][j] = fma_acc(sat01(av[i] - xh[i][j]), bv[j], acc[i][j]);
    }
  }

  ADDER_HD void epilogue(const BwdArgs<T>& a, int64_t block) const {
    const Adder2dParams& p = a.p;
    const int tx = tid % TX, ty = tid / TX;
    const BwdBlock b = bwd_block(a, BM, BN, block);
    const int64_t plane = p.H * p.W;
    ADDER_UNROLL
    for (int j = 0; j < TN; ++j) {
      int64_t on = 0, oy = 0, ox = 0;
      if (!class_pixel(a, ry, rx, b.q0 + (j / 4) * TX * 4 + tx * 4 + j % 4,
                       &on, &oy, &ox))
        continue;
      T* out = a.gx + (on * p.C + b.g * a.M + b.m0) * plane +
               (oy * p.stride_h + ry) * p.W + ox * p.stride_w + rx;
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i) {
        const int m = (i / 4) * TY * 4 + ty * 4 + i % 4;
        if (m < mlim)
          out[m * plane] = static_cast<T>(acc_t(2) * acc[i][j] - gsum[j]);
      }
    }
  }
};

}  // namespace cuda_tile
}  // namespace adder_mm
