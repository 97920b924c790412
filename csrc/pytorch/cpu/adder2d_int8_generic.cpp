// Portable build of the adder2d_int8 tiles: GCC vector extensions on
// 16-byte vectors (SSE2 on x86-64, NEON on aarch64), on the same packed
// layout as the vpsadbw tiles. One vector holds 8 bytes of each of two
// output channels; per piece, |w - x| = max - min bytewise (pmaxub, pminub,
// psubb), and the byte pairs of each 16-bit lane are added into 16-bit
// accumulators, flushed into int32 every 128 pieces (2 * 255 per piece
// fits 16 bits 128 times). Plain scalar loops ran 3-4 Gpairs/s on Zen 5,
// this ~28 (the AVX-512 tiles ~400).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "adder2d_int8_kernels.h"

namespace adder_mm {
namespace cpu {
namespace {

typedef uint8_t U8x16 __attribute__((vector_size(16)));
typedef uint16_t U16x8 __attribute__((vector_size(16)));
typedef uint64_t U64x2 __attribute__((vector_size(16)));

// Pieces per 16-bit accumulation: each lane gains at most 2 * 255 a piece.
constexpr int64_t kFlush = 128;

inline U8x16 load16(const uint8_t* p) {
  U8x16 v;
  std::memcpy(&v, p, 16);
  return v;
}

// 8 bytes at p in both halves.
inline U8x16 broadcast8(const uint8_t* p) {
  uint64_t q;
  std::memcpy(&q, p, 8);
  const U64x2 v = {q, q};
  return (U8x16)v;  // a vector cast keeps the bits
}

// NOB output channels (NOB / 2 vectors) x MP positions.
template <int NOB, int MP>
void tile(const Int8Tile& t) {
  constexpr int NV = NOB / 2;
  int32_t acc[MP][NOB] = {};
  for (int64_t k0 = 0; k0 < t.k8; k0 += kFlush) {
    const int64_t k1 = std::min(t.k8, k0 + kFlush);
    U16x8 a16[MP][NV] = {};
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t off = t.koff[k];
      const uint8_t* wk = t.w + k * NOB * 8;
      U8x16 wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = load16(wk + 16 * v);
      for (int r = 0; r < MP; ++r) {
        const U8x16 xv = broadcast8(t.x[r] + off);
        for (int v = 0; v < NV; ++v) {
          const U8x16 hi = wv[v] > xv ? wv[v] : xv;
          const U8x16 lo = wv[v] > xv ? xv : wv[v];
          const U8x16 d = hi - lo;
          const U16x8 d16 = (U16x8)d;
          a16[r][v] += (d16 & 0xff) + (d16 >> 8);
        }
      }
    }
    // Lanes 0-3 hold channel 2v (its 8 bytes), lanes 4-7 channel 2v + 1.
    for (int r = 0; r < MP; ++r)
      for (int v = 0; v < NV; ++v) {
        acc[r][2 * v] += a16[r][v][0] + a16[r][v][1] + a16[r][v][2] +
                         a16[r][v][3];
        acc[r][2 * v + 1] += a16[r][v][4] + a16[r][v][5] + a16[r][v][6] +
                             a16[r][v][7];
      }
  }
  for (int r = 0; r < t.np; ++r)
    for (int c = 0; c < t.no; ++c) {
      if (t.scale == nullptr)
        t.out_i32[t.orow[r] + c] = acc[r][c];
      else  // one rounding, as the vector tiles' fma
        t.out_f32[t.orow[r] + c] =
            std::fma(-t.scale[c], static_cast<float>(acc[r][c]), t.bias[c]);
    }
}

}  // namespace

Int8KernelTable int8_generic_table() {
  Int8KernelTable t{};
  t.v[0] = {8, 2, &tile<8, 2>};
  t.count = 1;
  t.isa = "generic";
  return t;
}

}  // namespace cpu
}  // namespace adder_mm
