// AVX2+FMA build of the adder2d micro-kernels, chosen at run time by
// __builtin_cpu_supports("avx2") so one binary runs on any x86-64.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

#include "adder2d_cpu_isa.h"

// After every library include: only the code below gets the AVX2 target.
#pragma GCC push_options
#pragma GCC target("avx2,fma")

#define ADDER_ISA_NS avx2
#include "adder2d_cpu_kernels.h"

namespace adder_mm {
namespace cpu {
namespace avx2 {
namespace {

struct OpsF {
  using T = float;
  using V = __m256;
  static constexpr int kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(T a) { return _mm256_set1_ps(a); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  // x - *p on an FMA pipe: -(*p * 1) + x rounds once, so it equals vsubps
  // bit for bit, but leaves the two FADD pipes of Zen 2/3 (which also run
  // min/max) to the accumulate and the clamp: +25-35% measured per tile.
  // The broadcast register is shared by the tile's terms of one *p.
  static V bsub(V x, const T* p, int) {
    return _mm256_fnmadd_ps(_mm256_set1_ps(*p), _mm256_set1_ps(1.0f), x);
  }
  static V neg(V a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
  // Clears the sign bit: exact |a|, one logic op.
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V clamp1(V d) {
    return min(max(d, _mm256_set1_ps(-1.0f)), _mm256_set1_ps(1.0f));
  }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
};

struct OpsD {
  using T = double;
  using V = __m256d;
  static constexpr int kLanes = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(T a) { return _mm256_set1_pd(a); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static V bsub(V x, const T* p, int) {
    return _mm256_fnmadd_pd(_mm256_set1_pd(*p), _mm256_set1_pd(1.0), x);
  }
  static V neg(V a) { return _mm256_xor_pd(a, _mm256_set1_pd(-0.0)); }
  static V abs(V a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static V min(V a, V b) { return _mm256_min_pd(a, b); }
  static V max(V a, V b) { return _mm256_max_pd(a, b); }
  static V clamp1(V d) {
    return min(max(d, _mm256_set1_pd(-1.0)), _mm256_set1_pd(1.0));
  }
  static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_pd(a, b, c); }
};

}  // namespace
}  // namespace avx2

constexpr int kFwdMrF = 4;

// Tile shapes: forward MR x (NV vectors) keeps MR*NV accumulators, NV
// input vectors, one broadcast, one temporary and the sign mask in the 16
// ymm registers; grad_X holds MK*NV inputs plus as many accumulators.
// Virtual grid (adder2d_cpu.cpp) where O/groups * (Wp - OW) <= 8 * OW:
// the tile is half as fast as AVX-512's, so the copies weigh less. One
// thread, Zen 5, grid / segment copies: forward 0.91-0.96x and grad_X
// 0.86-0.97x up to O/OW = 8 (1.00x at 4.6), but 1.03x / 1.02x on 14x14 at
// O = 256 and 1.10x / 1.05x on 7x7 at O = 512.
constexpr int kVgridLim = 8;

KernelTable<float> avx2_table_float() {
  auto t = avx2::make_table<avx2::OpsF, kFwdMrF, 2, 2, 2>("avx2");
  t.vgrid_fwd_lim = t.vgrid_grad_lim = kVgridLim;
  return t;
}
KernelTable<double> avx2_table_double() {
  auto t = avx2::make_table<avx2::OpsD, 4, 2, 2, 2>("avx2");
  t.vgrid_fwd_lim = t.vgrid_grad_lim = kVgridLim;
  return t;
}

}  // namespace cpu
}  // namespace adder_mm

#pragma GCC pop_options
#endif  // x86
