// AVX-512 (F+BW+DQ+VL) build of the adder2d micro-kernels, chosen at run
// time when cpu::active_isa() is kAvx512, so one binary runs on any x86-64.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

#include "adder2d_cpu_isa.h"

// After every library include: only the code below gets the AVX-512 target.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")

#define ADDER_ISA_NS avx512
#include "adder2d_cpu_kernels.h"

namespace adder_mm {
namespace cpu {
namespace avx512 {
namespace {

// Zen 5 runs 512-bit FMA/FMUL on two pipes and FADD/min/max on two others;
// logic ops go to any of the four. The forward term (sub, abs, add) and the
// grad_X term (sub, clamp, fma) are three ops each, so the best mix puts
// the subtract on whichever pair has room: alternate terms of a tile use
// vsubps and the bit-identical -(b * 1) + a (one rounding either way).
// Measured single-core tile rates, Zen 5, K = 576, G terms/s: forward 8x2
// all-FMA-pipe subtract 60-77, alternating 86-87; grad_X 6x2 max+min
// clamp 63, vrangeps clamp with alternating subtract 83-85.
// The weight is read by the subtract itself (embedded broadcast, {1to16})
// rather than by a vbroadcastss into a register shared by the tile's NV
// terms: on Zen 4, which runs zmm ops as two 256-bit halves on the same
// four pipes, a broadcast from memory also takes an FP pipe slot. Zen 4,
// one core, K = 128 in L1, G terms/s: forward 8x2 29 -> 37, grad_X 6x2
// 29 -> 36 (the four pipes' limit is 37; an FMA tile does 56 G MAC/s).
// GCC keeps a broadcast used twice in a register, hence the asm.

struct OpsF {
  using T = float;
  using V = __m512;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(T a) { return _mm512_set1_ps(a); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V bsub(V x, const T* p, int slot) {
    V d;
    if (slot & 1) {
      d = x;
      asm("vfnmadd231ps %1%{1to16%}, %2, %0"
          : "+v"(d)
          : "m"(*p), "v"(_mm512_set1_ps(1.0f)));
    } else {
      asm("vsubps %1%{1to16%}, %2, %0" : "=v"(d) : "m"(*p), "v"(x));
    }
    return d;
  }
  static V neg(V a) {
    return _mm512_castsi512_ps(_mm512_xor_si512(
        _mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN)));
  }
  // Clears the sign bit: exact |a|, one logic op.
  static V abs(V a) { return _mm512_abs_ps(a); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  // vrangeps, imm 0b0010: of d and 1 the one with the smaller magnitude,
  // with d's sign: exactly min(max(d, -1), 1) for every non-NaN d (checked
  // over +-0, +-1, +-inf and both sides of 1), in one op instead of two.
  // A NaN d gives +-1 (vrangeps returns the other operand): calls whose x
  // or w is not all finite run on the portable tiles (adder2d_cpu.cpp).
  static V clamp1(V d) { return _mm512_range_ps(d, _mm512_set1_ps(1.0f), 2); }
};

struct OpsD {
  using T = double;
  using V = __m512d;
  static constexpr int kLanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(T a) { return _mm512_set1_pd(a); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V bsub(V x, const T* p, int slot) {
    V d;
    if (slot & 1) {
      d = x;
      asm("vfnmadd231pd %1%{1to8%}, %2, %0"
          : "+v"(d)
          : "m"(*p), "v"(_mm512_set1_pd(1.0)));
    } else {
      asm("vsubpd %1%{1to8%}, %2, %0" : "=v"(d) : "m"(*p), "v"(x));
    }
    return d;
  }
  static V neg(V a) {
    return _mm512_castsi512_pd(_mm512_xor_si512(
        _mm512_castpd_si512(a), _mm512_set1_epi64(INT64_MIN)));
  }
  static V abs(V a) { return _mm512_abs_pd(a); }
  static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_pd(a, b, c); }
  static V clamp1(V d) { return _mm512_range_pd(d, _mm512_set1_pd(1.0), 2); }
};

}  // namespace
}  // namespace avx512

// Tile shapes for the 32 zmm registers: forward MR x 2 vectors (16
// accumulators, 2 strip vectors, broadcast, temporaries); grad_X MK x 2
// (12 inputs, 12 accumulators, 2 grad_out vectors, constants). Strip width
// 32 floats / 16 doubles.
// Virtual-grid limits (O/groups * (Wp - OW) <= lim * OW) from one-thread
// A/Bs on ResNet-20/50 layers (Zen 5, float32, grid / segment copies;
// 3x3 layers have Wp - OW = 1): forward 0.74-0.92x on 1x1 layers, 0.83-0.85x
// on 8x8 and 16x16 maps at O <= 64 (O/OW <= 8), 0.97x at 28x28 and 56x56,
// 0.99x on 14x14 at O = 256 (18) and 1.06x on 7x7 at O = 512 (73); grad_X
// (which also saves the col2im segments) 0.74-0.92x up to 14x14 at
// O = 256, 0.98x on 7x7 at O = 512.
KernelTable<float> avx512_table_float() {
  auto t = avx512::make_table<avx512::OpsF, 8, 2, 6, 2>("avx512");
  t.vgrid_fwd_lim = 16;
  t.vgrid_grad_lim = 48;
  return t;
}
KernelTable<double> avx512_table_double() {
  auto t = avx512::make_table<avx512::OpsD, 8, 2, 6, 2>("avx512");
  t.vgrid_fwd_lim = 16;
  t.vgrid_grad_lim = 48;
  return t;
}

}  // namespace cpu
}  // namespace adder_mm

#pragma GCC pop_options
#endif  // x86
