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
  // S = (accumulate ? C[r*NR + s] : 0) + sum_k |B[k*NR+s] - A[k*MR+r]|
  // (k ascending); C[r*NR + s] = negate ? -S : S (negate on the last K-block)
  void (*fwd_tile)(int64_t K, const T* A, const T* B, T* C, bool accumulate,
                   bool negate);
  // C[r*NR + s] = sum_o clamp(WT[o*MK+r] - X[r*NR+s], -1, 1) * Gp[o*NR+s]
  void (*bwd_tile)(int64_t Og, const T* WT, const T* Gp, const T* X, T* C);
  const char* isa;
};

}  // namespace cpu
}  // namespace adder_mm
