// The adder2d CUDA kernels and their tile shapes (device code only).
// Kept apart from the launchers (csrc/pytorch/cuda/adder2d_cuda_*.cu), which
// need the heavy torch headers, so register use and spills of every kernel
// can be checked with a small standalone nvcc run (see
// docs/kernels.md).
#pragma once
#include <cuda_runtime.h>

#include "adder2d_cuda_tile.cuh"

namespace adder_mm {
namespace cuda_tile {

// One CUDA thread's view of the block pipeline (see run_block).
template <class Thread, class Args, class Sm>
struct DeviceExec {
  Thread th;
  const Args& a;
  Sm& sm;
  __device__ __forceinline__ DeviceExec(const Args& a_, Sm& sm_)
      : a(a_), sm(sm_) {
    th.init(a, blockIdx.x, threadIdx.x);
  }
  __device__ __forceinline__ int64_t num_chunks() const {
    return th.num_chunks(a);
  }
  __device__ __forceinline__ void prologue() {
    th.load(a);
    th.store(sm, 0);
    th.advance(a);
  }
  __device__ __forceinline__ void step(int stage, bool more) {
    // Issue the next chunk's global loads before computing on this one so
    // their latency hides behind the arithmetic.
    if (more) th.load(a);
    th.compute(sm, stage);
    if (more) {
      th.store(sm, stage ^ 1);
      th.advance(a);
    }
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ void epilogue() const {
    th.epilogue(a, blockIdx.x);
  }
};

// Arguments stay in the constant parameter space (__grid_constant__, sm_70+):
// the threads read them by reference without a per-thread copy.
template <class Cfg, typename T, typename acc_t>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MIN_BLOCKS)
    adder2d_forward_kernel(const __grid_constant__ FwdArgs<T> a) {
  __shared__ Smem<Cfg, acc_t> sm;
  DeviceExec<FwdThread<Cfg, T, acc_t>, FwdArgs<T>, Smem<Cfg, acc_t>> ex(a, sm);
  run_block(ex);
}

template <class Cfg, typename T, typename acc_t>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MIN_BLOCKS)
    adder2d_backward_input_kernel(const __grid_constant__ BwdArgs<T> a) {
  __shared__ Smem<Cfg, acc_t> sm;
  DeviceExec<BwdThread<Cfg, T, acc_t>, BwdArgs<T>, Smem<Cfg, acc_t>> ex(a, sm);
  run_block(ex);
}

}  // namespace cuda_tile
}  // namespace adder_mm
