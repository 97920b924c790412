// AVX2 build of the adder2d_int8 tiles: one `vpsadbw ymm` compares 8 bytes
// of a position with 8 bytes of each of 4 output channels (32 byte pairs).
// Chosen at run time through cpu_isa (kAvx2). See adder2d_int8_kernels.h.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "adder2d_int8_kernels.h"

// After every library include: only the code below gets the target
// (cpu_isa's kAvx2 means AVX2 + FMA).
#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace adder_mm {
namespace cpu {
namespace {

inline int64_t load8(const uint8_t* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// The first `cnt` (1..8) int32 lanes set, for vpmaskmovd.
inline __m256i lane_mask(int cnt) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt), idx);
}

// MP positions x MV ymm (4 output channels each; MV even). 16 ymm hold
// MP*MV accumulators, MV weights and one broadcast: 6 x 2 leaves one spare.
template <int MV, int MP>
void tile(const Int8Tile& tile_args) {
  // A local copy: the epilogue's stores through int32_t* / float* could
  // alias the caller's struct, which made the compiler reload its fields
  // for every position.
  const Int8Tile t = tile_args;
  static_assert(MV % 2 == 0, "the epilogue narrows pairs of vectors");
  __m256i acc[MP][MV];
#pragma GCC unroll 16
  for (int r = 0; r < MP; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) acc[r][v] = _mm256_setzero_si256();
  const uint8_t* x[MP];
#pragma GCC unroll 16
  for (int r = 0; r < MP; ++r) x[r] = t.x[r];
  const uint8_t* w = t.w;
  const int64_t* koff = t.koff;
  for (int64_t k = 0; k < t.k8; ++k, w += MV * 32) {
    const int64_t off = koff[k];
    __m256i wv[MV];
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v)
      wv[v] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v * 32));
#pragma GCC unroll 16
    for (int r = 0; r < MP; ++r) {
      const __m256i b = _mm256_set1_epi64x(load8(x[r] + off));
#pragma GCC unroll 4
      for (int v = 0; v < MV; ++v)
        acc[r][v] = _mm256_add_epi64(acc[r][v], _mm256_sad_epu8(wv[v], b));
    }
  }
  // Loops over r and v unrolled: the accumulators stay in registers.
#pragma GCC unroll 16
  for (int r = 0; r < MP; ++r) {
    if (r < t.np) {
#pragma GCC unroll 4
      for (int v = 0; v < MV; v += 2) {
        const int c0 = v * 4;
        const int cnt = t.no - c0;
        if (cnt > 0) {
          // The low dwords of two vectors' qwords (each < 2^31), in order:
          // shuffle_ps gives [a0 a1 b0 b1 | a2 a3 b2 b3], permute4x64 sorts.
          const __m256i ab = _mm256_castps_si256(
              _mm256_shuffle_ps(_mm256_castsi256_ps(acc[r][v]),
                                _mm256_castsi256_ps(acc[r][v + 1]),
                                _MM_SHUFFLE(2, 0, 2, 0)));
          const __m256i s =
              _mm256_permute4x64_epi64(ab, _MM_SHUFFLE(3, 1, 2, 0));
          if (t.scale == nullptr) {
            int32_t* dst = t.out_i32 + t.orow[r] + c0;
            if (cnt >= 8 && t.stream)  // 32-byte aligned (the caller)
              _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), s);
            else if (cnt >= 8)
              _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), s);
            else
              _mm256_maskstore_epi32(dst, lane_mask(cnt), s);
          } else {
            const __m256 f = _mm256_fnmadd_ps(_mm256_loadu_ps(t.scale + c0),
                                              _mm256_cvtepi32_ps(s),
                                              _mm256_loadu_ps(t.bias + c0));
            float* dst = t.out_f32 + t.orow[r] + c0;
            if (cnt >= 8 && t.stream)
              _mm256_stream_ps(dst, f);
            else if (cnt >= 8)
              _mm256_storeu_ps(dst, f);
            else
              _mm256_maskstore_ps(dst, lane_mask(cnt), f);
          }
        }
      }
    }
  }
}

}  // namespace

Int8KernelTable int8_avx2_table() {
  Int8KernelTable t{};
  t.v[0] = {8, 6, &tile<2, 6>};
  t.count = 1;
  t.isa = "avx2";
  return t;
}

}  // namespace cpu
}  // namespace adder_mm

#pragma GCC pop_options
#endif  // x86
