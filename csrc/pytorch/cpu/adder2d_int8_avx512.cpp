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
// GCC 12 reports the _mm512_undefined_*() inside its own intrinsics
// (permutexvar, cvtepi32_ps) as "may be used uninitialized".
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

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
void tile(const Int8Tile& tile_args) {
  // A local copy: the epilogue's stores through int32_t* / float* could
  // alias the caller's struct, which made the compiler reload its fields
  // for every position.
  const Int8Tile t = tile_args;
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
  // Each qword is one output (< 2^31). Pairs of vectors are narrowed into
  // one zmm of 16 int32 (vpermt2d) and stored whole (or dequantized with
  // one fma first); vpmovqd to memory is slow on Zen 4/5. Loops over r and
  // v are unrolled so the accumulators stay in registers.
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18,
                                         20, 22, 24, 26, 28, 30);
#pragma GCC unroll 16
  for (int r = 0; r < MP; ++r) {
    if (r < t.np) {
#pragma GCC unroll 4
      for (int v = 0; v < MV; v += 2) {
        const int c0 = v * 8;
        const int cnt = t.no - c0;
        if (cnt > 0) {
          const __m512i s =
              v + 1 < MV
                  ? _mm512_permutex2var_epi32(acc[r][v], even, acc[r][v + 1])
                  : _mm512_permutexvar_epi32(even, acc[r][v]);
          const __mmask16 m =
              cnt >= 16 ? __mmask16(0xffff) : __mmask16((1u << cnt) - 1u);
          if (t.scale == nullptr) {
            int32_t* dst = t.out_i32 + t.orow[r] + c0;
            if (cnt >= 16 && t.stream)  // 64-byte aligned (the caller)
              _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), s);
            else if (cnt >= 16)
              _mm512_storeu_si512(dst, s);
            else
              _mm512_mask_storeu_epi32(dst, m, s);
          } else {
            // scale and bias hold nob values: a block of 8 reads no more.
            const __m512 sc = v + 1 < MV
                                  ? _mm512_loadu_ps(t.scale + c0)
                                  : _mm512_maskz_loadu_ps(0xff, t.scale + c0);
            const __m512 bi = v + 1 < MV
                                  ? _mm512_loadu_ps(t.bias + c0)
                                  : _mm512_maskz_loadu_ps(0xff, t.bias + c0);
            const __m512 f =
                _mm512_fnmadd_ps(sc, _mm512_cvtepi32_ps(s), bi);
            float* dst = t.out_f32 + t.orow[r] + c0;
            if (cnt >= 16 && t.stream)
              _mm512_stream_ps(dst, f);
            else if (cnt >= 16)
              _mm512_storeu_ps(dst, f);
            else
              _mm512_mask_storeu_ps(dst, m, f);
          }
        }
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

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif  // x86
