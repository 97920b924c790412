// Register-blocked micro-kernels of adder2d on packed panels, written once
// against a small vector-ops interface `Ops` and compiled per ISA: each
// including TU defines ADDER_ISA_NS (so instantiations of different targets
// never merge at link time) and its own Ops (AVX-512 or AVX2 intrinsics, or
// portable GCC vectors). Self-contained: no ATen here, so the TUs compiled
// with `#pragma GCC target(...)` have no target-specific code of other
// libraries inlined into them.
//
// Packed layouts (NR = NV * Ops::kLanes positions per strip):
//   A  (forward weight panel)  [K][MR]       A[k*MR + r] = W[o0 + r, k]
//   B  (im2col strip)          [K][NR]       B[k*NR + s] = Xcol[k, q0 + s]
//   WT (grad weight panel)     [Og][MK]      WT[o*MK + r] = W[o, k0 + r]
//   Gp (grad_out strip)        [Og][NR]      Gp[o*NR + s] = G[o, q0 + s]
// Every element is reduced in a fixed sequential order (k ascending for the
// forward, o ascending for grad_X) inside one register lane, so results do
// not depend on blocking or on the number of threads.
//
// Ops: T, V, kLanes, zero, load, store, add, neg, abs, fnmadd, and
//   bsub(x, p, slot) x - *p, *p broadcast to every lane; `slot` is the
//                    term's index in the tile (a constant after
//                    unrolling), so an ISA may send alternate subtracts to
//                    different pipes (bit-identical forms only: x - *p
//                    rounds once either way) and may read *p straight from
//                    memory (AVX-512 embedded broadcast) instead of from a
//                    broadcast register;
//   clamp1(d)        min(max(d, -1), 1), exact (one op on AVX-512); the
//                    portable level keeps a NaN d (adder2d_cpu.cpp).
#pragma once
#include <cstdint>

#include "adder2d_cpu_kernels_fwd.h"

#ifndef ADDER_ISA_NS
#error "define ADDER_ISA_NS before including adder2d_cpu_kernels.h"
#endif

namespace adder_mm {
namespace cpu {

namespace ADDER_ISA_NS {
namespace {

template <class Ops, int MR, int NV>
void fwd_tile(int64_t K, const typename Ops::T* A, const typename Ops::T* B,
              const typename Ops::T* C, typename Ops::T* Y, int64_t ldy,
              int rows, bool last) {
  using V = typename Ops::V;
  constexpr int L = Ops::kLanes, NR = NV * L;
  V acc[MR][NV];
  // Continuing from C keeps each lane's sum one sequential k-ascending
  // chain across K-blocks: blocking does not change the rounding.
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = C ? Ops::load(C + r * NR + v * L) : Ops::zero();
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = Ops::load(B + k * NR + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[r][v] = Ops::add(
            acc[r][v], Ops::abs(Ops::bsub(b[v], A + k * MR + r, r * NV + v)));
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    if (r < rows)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        Ops::store(Y + r * ldy + v * L, last ? Ops::neg(acc[r][v]) : acc[r][v]);
}

template <class Ops, int MK, int NV>
void bwd_tile(int64_t Og, const typename Ops::T* WT, const typename Ops::T* Gp,
              const typename Ops::T* X, typename Ops::T* C) {
  using V = typename Ops::V;
  constexpr int L = Ops::kLanes, NR = NV * L;
  V x[MK][NV], acc[MK][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MK; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      x[r][v] = Ops::load(X + r * NR + v * L);
      acc[r][v] = Ops::zero();
    }
  for (int64_t o = 0; o < Og; ++o) {
    V g[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) g[v] = Ops::load(Gp + o * NR + v * L);
    // clamp(w - x) g = -clamp(x - w) g exactly (the clamp is odd and a
    // difference rounds the same either way round), and x - w is the form
    // bsub has: a broadcast weight subtracted from the inputs.
#pragma GCC unroll 16
    for (int r = 0; r < MK; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const V d = Ops::clamp1(Ops::bsub(x[r][v], WT + o * MK + r, r * NV + v));
        acc[r][v] = Ops::fnmadd(d, g[v], acc[r][v]);
      }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MK; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Ops::store(C + r * NR + v * L, acc[r][v]);
}

template <class Ops, int MR, int NV, int MK, int NVB>
KernelTable<typename Ops::T> make_table(const char* isa) {
  static_assert(NV * Ops::kLanes == NVB * Ops::kLanes,
                "forward and grad_X tiles must share the strip width");
  static_assert(MR == 8 || MR == 4,
                "forward weight panels are packed for 8 or 4 rows "
                "(pack_panel in adder2d_cpu.cpp)");
  KernelTable<typename Ops::T> t;
  t.nr = NV * Ops::kLanes;
  t.mr = MR;
  t.mk = MK;
  t.vgrid_fwd_lim = 0;
  t.vgrid_grad_lim = 0;
  t.fwd_tile = &fwd_tile<Ops, MR, NV>;
  t.bwd_tile = &bwd_tile<Ops, MK, NVB>;
  t.isa = isa;
  return t;
}

}  // namespace
}  // namespace ADDER_ISA_NS
}  // namespace cpu
}  // namespace adder_mm
