// Portable build of the adder2d_int8 tiles: plain C++ on the same packed
// layout (the compiler may vectorise the 8-byte sums: psadbw on SSE2,
// uabd/uadalp on NEON). The reference for what the vector tiles compute.
#include <cmath>
#include <cstdint>

#include "adder2d_int8_kernels.h"

namespace adder_mm {
namespace cpu {
namespace {

template <int NOB, int MP>
void tile(const Int8Tile& t) {
  int32_t acc[MP][NOB] = {};
  const uint8_t* w = t.w;
  for (int64_t k = 0; k < t.k8; ++k, w += NOB * 8) {
    const int64_t off = t.koff[k];
    for (int r = 0; r < MP; ++r) {
      const uint8_t* xr = t.x[r] + off;
      for (int c = 0; c < NOB; ++c) {
        int32_t s = 0;
        for (int b = 0; b < 8; ++b) {
          const int32_t d = int32_t(xr[b]) - int32_t(w[c * 8 + b]);
          s += d < 0 ? -d : d;
        }
        acc[r][c] += s;
      }
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
  t.v[0] = {8, 4, &tile<8, 4>};
  t.count = 1;
  t.isa = "generic";
  return t;
}

}  // namespace cpu
}  // namespace adder_mm
