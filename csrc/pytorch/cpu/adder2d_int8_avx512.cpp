// AVX-512 (F+BW+DQ+VL) build of the adder2d_int8 tiles: one `vpsadbw zmm`
// compares 8 bytes of a position with 8 bytes of each of 8 output channels
// (64 byte pairs). Chosen at run time through cpu_isa (kAvx512), so one
// binary runs on any x86-64. See adder2d_int8_kernels.h for the layout.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "adder2d_int8_kernels.h"

// After every library include: only the code below gets the target. Every
// AVX-512F CPU has FMA3 (the float epilogue's one rounding).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")

namespace adder_mm {
namespace cpu {
namespace {

inline int64_t load8(const uint8_t* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// MP positions x MV zmm (8 output channels each). Per 8-byte piece: MV
// weight loads, MP broadcasts, MP*MV vpsadbw + vpaddq; MP*MV accumulators
// (24 of the 32 zmm for 6 x 4) keep the sad units busy without reductions.
template <int MV, int MP>
void tile(const Int8Tile& t) {
  __m512i acc[MP][MV];
#pragma GCC unroll 16
  for (int r = 0; r < MP; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) acc[r][v] = _mm512_setzero_si512();
  const uint8_t* x[MP];
#pragma GCC unroll 16
  for (int r = 0; r < MP; ++r) x[r] = t.x[r];
  const uint8_t* w = t.w;
  const int64_t* koff = t.koff;
  for (int64_t k = 0; k < t.k8; ++k, w += MV * 64) {
    const int64_t off = koff[k];
    __m512i wv[MV];
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) wv[v] = _mm512_loadu_si512(w + v * 64);
#pragma GCC unroll 16
    for (int r = 0; r < MP; ++r) {
      const __m512i b = _mm512_set1_epi64(load8(x[r] + off));
#pragma GCC unroll 4
      for (int v = 0; v < MV; ++v)
        acc[r][v] = _mm512_add_epi64(acc[r][v], _mm512_sad_epu8(wv[v], b));
    }
  }
  // Each qword is one output (< 2^31): narrowed to int32 by the store, or
  // dequantized with one fma.
  for (int r = 0; r < t.np; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) {
      const int c0 = v * 8;
      const int cnt = t.no - c0;
      if (cnt <= 0) break;
      const __mmask8 m =
          cnt >= 8 ? __mmask8(0xff) : __mmask8((1u << cnt) - 1u);
      if (t.scale == nullptr) {
        _mm512_mask_cvtepi64_storeu_epi32(t.out_i32 + r * t.ldo + c0, m,
                                          acc[r][v]);
      } else {
        // int64 -> float rounds like int32 -> float: the value is < 2^31.
        const __m256 f = _mm256_fnmadd_ps(_mm256_loadu_ps(t.scale + c0),
                                          _mm512_cvtepi64_ps(acc[r][v]),
                                          _mm256_loadu_ps(t.bias + c0));
        _mm256_mask_storeu_ps(t.out_f32 + r * t.ldo + c0, m, f);
      }
    }
  }
}

}  // namespace

Int8KernelTable int8_avx512_table() {
  Int8KernelTable t{};
  t.v[0] = {32, 6, &tile<4, 6>};
  t.v[1] = {16, 8, &tile<2, 8>};
  t.v[2] = {8, 8, &tile<1, 8>};
  t.count = 3;
  t.isa = "avx512";
  return t;
}

}  // namespace cpu
}  // namespace adder_mm

#pragma GCC pop_options
#endif  // x86
