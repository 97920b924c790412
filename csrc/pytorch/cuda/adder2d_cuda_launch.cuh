// Launch helpers shared by the adder2d CUDA entry points
// (adder2d_cuda_forward.cu, adder2d_cuda_backward.cu): argument checks, tile
// choice, the transposed weight. Host code only.
//
// c10's stream/guard headers, not ATen/cuda/CUDAContext.h: that one pulls in
// cuSPARSE/cuBLAS headers, which a pip-installed torch with a bare nvcc
// toolkit may lack; nothing here needs them.
#pragma once
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <cstdlib>
#include <type_traits>

// torch/extension.h trips nvcc's C++20 "module" identifier warning (#3189)
// in torch's own headers; keep the build log for warnings of this project.
#pragma nv_diag_suppress 3189
#include "../adder2d.h"
#pragma nv_diag_default 3189
#include "adder2d_cuda_kernels.cuh"

namespace adder_mm {
namespace cuda_launch {

using namespace cuda_tile;

inline int num_sms() {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return sms;
}

inline void check_grid(int64_t blocks, const char* what) {
  TORCH_CHECK(blocks <= INT_MAX, "adder2d: ", what, " needs ", blocks,
              " thread blocks, more than one launch allows (", INT_MAX,
              "); split the batch");
}

// The kernels keep channel counts, spatial coordinates and reduction
// cursors in 32-bit registers (offsets are 64-bit); kFar must stay far
// outside every image.
inline void check_limits(const Adder2dParams& p) {
  constexpr int64_t kMax = int64_t(1) << 28;
  TORCH_CHECK(p.C < INT_MAX / 2 && p.O < INT_MAX / 2,
              "adder2d (CUDA): channel counts must be below 2^30, got C=", p.C,
              ", O=", p.O);
  TORCH_CHECK(p.H < kMax && p.W < kMax && p.OH < kMax && p.OW < kMax &&
                  p.KH * p.dil_h < kMax && p.KW * p.dil_w < kMax &&
                  p.pad_h < kMax && p.pad_w < kMax,
              "adder2d (CUDA): spatial sizes, padding and dilated kernel "
              "extents must be below 2^28");
}

// Blocks of a tile shape for `rows` x `cols` per group.
template <class Cfg>
int64_t blocks_for(int64_t groups, int64_t rows, int64_t cols) {
  return groups * ceil_div(rows, Cfg::BM) * ceil_div(cols, Cfg::BN);
}

// ADDER_MM_CUDA_TILE=0..3 forces a tile shape (0 = largest), so tests cover
// every shape with small inputs; unset or anything else: automatic.
inline int forced_tile() {
  const char* s = std::getenv("ADDER_MM_CUDA_TILE");
  if (s == nullptr || s[0] < '0' || s[0] > '3' || s[1] != '\0') return -1;
  return s[0] - '0';
}

// ADDER_MM_CUDA_HALF2=1: float16 layers, and bfloat16 ones on sm_80 and
// later (bfloat16 pair arithmetic), run the packed-pair kernels
// (adder2d_cuda_packed.cuh); unset or anything else: float32 arithmetic on
// converted inputs.
inline bool packed_half(at::ScalarType dtype) {
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  const char* s = std::getenv("ADDER_MM_CUDA_HALF2");
  if (s == nullptr || s[0] != '1' || s[1] != '\0') return false;
  if (dtype == at::kHalf) return true;
  int device = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(
      &major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8;
}

// Largest tile whose rows are not mostly empty and that still gives every SM
// a block; with too little work for that, the smallest (most blocks).
// Returns 0..3 for the shapes listed largest first.
template <class C0, class C1, class C2, class C3>
int pick_tile(int64_t groups, int64_t rows, int64_t cols) {
  const int forced = forced_tile();
  if (forced >= 0) return forced;
  const int64_t bm[4] = {C0::BM, C1::BM, C2::BM, C3::BM};
  const int64_t blocks[4] = {blocks_for<C0>(groups, rows, cols),
                             blocks_for<C1>(groups, rows, cols),
                             blocks_for<C2>(groups, rows, cols),
                             blocks_for<C3>(groups, rows, cols)};
  int first = 3;
  for (int k = 0; k < 4; ++k) {
    if (rows > bm[k] / 2) {
      first = k;
      break;
    }
  }
  const int64_t sms = num_sms();
  for (int k = first; k < 4; ++k)
    if (blocks[k] >= sms) return k;
  return 3;
}

// Calls f(Cfg{}) with the tile shape pick_tile chooses among C0..C3.
template <class C0, class C1, class C2, class C3, class Fn>
void with_tile(int64_t groups, int64_t rows, int64_t cols, Fn&& f) {
  switch (pick_tile<C0, C1, C2, C3>(groups, rows, cols)) {
    case 0:
      f(C0{});
      break;
    case 1:
      f(C1{});
      break;
    case 2:
      f(C2{});
      break;
    default:
      f(C3{});
  }
}

// Launches `kernel` with a's blocks of Cfg::NT threads on `stream`.
template <class Cfg, class Args, class Kernel>
void launch(Kernel kernel, const Args& a, cudaStream_t stream,
            const char* what) {
  if (a.blocks == 0) return;
  check_grid(a.blocks, what);
  kernel<<<static_cast<unsigned>(a.blocks), Cfg::NT, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline void check_tensors(const at::Tensor& a, const at::Tensor& ref,
                          const char* name) {
  TORCH_CHECK(a.is_cuda() && a.device() == ref.device(), "adder2d (CUDA): ",
              name, " must be on ", ref.device(), ", got ", a.device());
  TORCH_CHECK(a.scalar_type() == ref.scalar_type(), "adder2d (CUDA): ", name,
              " must be ", ref.scalar_type(), ", got ", a.scalar_type());
  TORCH_CHECK(a.is_contiguous(), "adder2d (CUDA): ", name,
              " must be contiguous (NCHW)");
}

// Weight [O, Cg, KH, KW] -> [G, KH, KW, d1, d2] where (d1, d2) is (Cg, Og)
// for the forward and (Og, Cg) for the input gradient: the A-tile rows are
// then contiguous, so their loads coalesce and their shared-memory stores do
// not conflict. Same size as the weight.
inline at::Tensor transpose_weight(const at::Tensor& w,
                                   const Adder2dParams& p, bool forward) {
  auto v = w.view({p.groups, p.cout_per_group(), p.cin_per_group(), p.KH,
                   p.KW});
  return forward ? v.permute({0, 3, 4, 2, 1}).contiguous()
                 : v.permute({0, 3, 4, 1, 2}).contiguous();
}

}  // namespace cuda_launch
}  // namespace adder_mm
