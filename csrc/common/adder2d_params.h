// Shape and index logic of adder2d, shared by the CPU and CUDA kernels.
// Everything here compiles for host and device so the CUDA path uses exactly
// the index arithmetic that the CPU tests exercise.
#pragma once
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ADDER_HD __host__ __device__ __forceinline__
#else
#define ADDER_HD inline
#endif

namespace adder_mm {

// One adder2d call. Input [N, C, H, W], weight [O, C/groups, KH, KW],
// output [N, O, OH, OW]; all tensors contiguous (NCHW).
struct Adder2dParams {
  int64_t N, C, H, W;
  int64_t O, KH, KW;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dil_h, dil_w;
  int64_t groups;
  int64_t OH, OW;

  ADDER_HD int64_t cin_per_group() const { return C / groups; }
  ADDER_HD int64_t cout_per_group() const { return O / groups; }
  // Length of one filter: the reduction size of every output element.
  ADDER_HD int64_t K() const { return cin_per_group() * KH * KW; }
  // Output positions of one image.
  ADDER_HD int64_t L() const { return OH * OW; }
};

// Output extent along one axis (same formula as conv2d).
ADDER_HD int64_t adder_out_size(int64_t in, int64_t k, int64_t stride,
                                int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// Input coordinate read by output coordinate `o` at kernel tap `k`. May lie
// outside [0, in) where the tap falls on zero padding.
ADDER_HD int64_t adder_in_coord(int64_t o, int64_t k, int64_t stride,
                                int64_t pad, int64_t dil) {
  return o * stride - pad + k * dil;
}

// Inverse of adder_in_coord: the output coordinate whose tap `k` reads input
// coordinate `i`. Returns false when no output position does (stride does not
// divide, or it falls outside [0, out)).
ADDER_HD bool adder_out_coord(int64_t i, int64_t k, int64_t stride,
                              int64_t pad, int64_t dil, int64_t out,
                              int64_t* o) {
  const int64_t t = i + pad - k * dil;
  if (t < 0 || t % stride != 0) return false;
  const int64_t q = t / stride;
  if (q >= out) return false;
  *o = q;
  return true;
}

}  // namespace adder_mm
