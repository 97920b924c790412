// The CPU driver of adder2d_int8 (arguments are checked by the caller,
// csrc/pytorch/adder2d_int8.cpp).
#pragma once
#include <torch/extension.h>

#include "adder2d_params.h"

namespace adder_mm {

// Largest filter length K = C/groups * kh * kw whose sums fit in int32.
constexpr int64_t kInt8MaxK = 2147483647LL / 255;

// out[n, o, h, w] (channels_last, int32 or float32) =
//   S = sum_{c in group(o), i, j} |qx_pad[n, c, ...] - qw[o, c, i, j]|
// as int32 when scale is null, else fma(-scale[o], float(S), bias[o])
// (bias null: 0). qx and qw are uint8 in any memory format; padding taps
// read pad_value. Every element of `out` is written.
void adder2d_int8_cpu(const at::Tensor& qx, const at::Tensor& qw,
                      int64_t pad_value, const float* scale,
                      const float* bias, at::Tensor& out,
                      const Adder2dParams& p);

}  // namespace adder_mm
