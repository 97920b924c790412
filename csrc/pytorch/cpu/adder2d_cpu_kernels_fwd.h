// KernelTable: the function table one ISA exports for one dtype.
#pragma once
#include <cstdint>

namespace adder_mm {
namespace cpu {

template <typename T>
struct KernelTable {
  int nr;  // positions per strip
  int mr;  // output channels per forward tile
  int mk;  // im2col rows per grad_X tile
  // Where the stride-1 virtual grid (adder2d_cpu.cpp) pays: used when
  // O/groups * (Wp - OW) <= lim * OW, i.e. where its extra lanes cost less
  // than the row-segment copies they save; those cost more, relative to
  // the tile, the faster the tile is. 0: only where Wp == OW (1x1 and
  // other one-column kernels at stride 1: no extra lanes at all).
  int vgrid_fwd_lim, vgrid_grad_lim;
  // S = (C ? C[r*NR + s] : 0) + sum_k |B[k*NR+s] - A[k*MR+r]| (k
  // ascending); Y[r*ldy + s] = last ? -S : S for the rows r < rows. Y may
  // be C (a K-block's partial sums) or, on the last K-block, the output
  // rows themselves (Y == C is allowed: C is read before Y is written).
  void (*fwd_tile)(int64_t K, const T* A, const T* B, const T* C, T* Y,
                   int64_t ldy, int rows, bool last);
  // C[r*NR + s] = sum_o clamp(WT[o*MK+r] - X[r*NR+s], -1, 1) * Gp[o*NR+s]
  void (*bwd_tile)(int64_t Og, const T* WT, const T* Gp, const T* X, T* C);
  const char* isa;
};

}  // namespace cpu
}  // namespace adder_mm
