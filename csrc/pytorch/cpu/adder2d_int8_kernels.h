// Register tiles of adder2d_int8 (byte sums of absolute differences), one
// table per ISA. No ATen here: the TUs compiled with `#pragma GCC target`
// must not get target-specific code of other libraries inlined into them.
//
// Layout (the "outputs in lanes" form of an int8 convolution):
//   - a position's bytes are read straight from the (padded) NHWC input:
//     K is cut into 8-byte pieces, piece k of position r at x[r] + koff[k];
//   - weights are packed per block of `nob` output channels as
//     W[k][o][8] = Wrow[o][8k .. 8k+8) (rows in (kh, kw, c) order, zero past
//     K and past the group's channels);
//   - per piece, `vpsadbw` of one weight vector (8 bytes of each of 8 (or 4)
//     output channels) against the position's 8 bytes broadcast to every
//     qword: each qword lane gets |x - w| summed over 8 bytes for its own
//     output channel. Lanes are output channels, so a tile's accumulators
//     need no horizontal reduction: after the K loop each qword is one
//     output, narrowed to int32 and stored to the NHWC output row.
// Sums are exact integers (K * 255 < 2^31 is checked by the caller), so
// every ISA and every blocking gives the same result bit for bit.
#pragma once
#include <cstdint>

namespace adder_mm {
namespace cpu {

// One register tile: `np` (<= mp) positions x `no` (<= nob) output channels.
struct Int8Tile {
  int64_t k8;               // 8-byte pieces of K
  const int64_t* koff;      // [k8] byte offset of piece k from x[r]
  const uint8_t* const* x;  // [mp] per-position base pointers (all valid)
  const uint8_t* w;         // packed [k8][nob][8] weights of this block
  // Outputs of position r, channel c at out[orow[r] + c]: int32 sums S
  // when scale is null, else float fma(-scale[c], float(S), bias[c]) (one
  // rounding; scale and bias hold nob values). A tile's positions need not
  // be neighbours: the border ones of a chunk go through im2col rows.
  int32_t* out_i32;
  float* out_f32;
  const float* scale;
  const float* bias;
  const int64_t* orow;  // [np]
  int np, no;
  // Full-width vector stores may bypass the caches (non-temporal): set
  // where every such store is 64-byte aligned and the output is too large
  // to stay in cache anyway; the caller fences (sfence) after its tiles.
  bool stream;
};

using Int8TileFn = void (*)(const Int8Tile&);

// Tile shapes one ISA offers; the caller picks one per call by the number
// of output channels per group (wide tiles for wide layers).
struct Int8KernelTable {
  static constexpr int kMaxVariants = 3;
  struct Variant {
    int nob;  // output channels per tile (a multiple of 4)
    int mp;   // positions per tile
    Int8TileFn fn;
  };
  Variant v[kMaxVariants];
  int count;
  const char* isa;
};

Int8KernelTable int8_generic_table();
// Compiled with avx2; call only where cpu_isa says so.
Int8KernelTable int8_avx2_table();
// Compiled with avx512f+bw+vl (+dq); call only where cpu_isa says so.
Int8KernelTable int8_avx512_table();

}  // namespace cpu
}  // namespace adder_mm
