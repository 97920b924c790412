// Portable build of the adder2d micro-kernels (GCC vector extensions lowered
// to the compiler's baseline ISA: SSE2 on x86-64, NEON on aarch64).
#include <cstdint>

#include "adder2d_cpu_isa.h"

#define ADDER_ISA_NS generic
#include "adder2d_cpu_kernels.h"

namespace adder_mm {
namespace cpu {
namespace generic {
namespace {

template <typename TT, int N>
struct OpsVec {
  using T = TT;
  typedef T V __attribute__((vector_size(sizeof(T) * N)));
  static constexpr int kLanes = N;
  static V zero() { return V{}; }
  static V load(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
  static V set1(T a) { return V{} + a; }
  static V add(V a, V b) { return a + b; }
  static V bsub(V x, const T* p, int) { return x - *p; }
  static V neg(V a) { return -a; }
  static V abs(V a) { return a < 0 ? -a : a; }
  static V min(V a, V b) { return a < b ? a : b; }
  static V max(V a, V b) { return a > b ? a : b; }
  // Constant first: a NaN d fails both compares and passes through.
  static V clamp1(V d) { return min(set1(T(1)), max(set1(T(-1)), d)); }
  static V fnmadd(V a, V b, V c) { return c - a * b; }
};

}  // namespace
}  // namespace generic

KernelTable<float> generic_table_float() {
  return generic::make_table<generic::OpsVec<float, 4>, 4, 2, 2, 2>("generic");
}
KernelTable<double> generic_table_double() {
  return generic::make_table<generic::OpsVec<double, 2>, 4, 2, 2, 2>("generic");
}

}  // namespace cpu
}  // namespace adder_mm
