// The adder2d CUDA kernels and their tile shapes (device code only).
// Kept apart from the launchers (csrc/pytorch/cuda/adder2d_cuda_*.cu), which
// need the heavy torch headers, so register use and spills of every kernel
// can be checked with a small standalone nvcc run (see
// docs/kernels.md).
#pragma once
#include <cuda_runtime.h>

#include "adder2d_cuda_packed.cuh"

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
  __device__ __forceinline__ void load() { th.load(a); }
  // See run_block.
  __device__ __forceinline__ void compute(int stage) { th.compute(sm, stage); }
  // The registers' chunk into `stage`; then the next chunk's loads issued.
  __device__ __forceinline__ void refill(int stage, bool load_next) {
    th.store(sm, stage);
    if (load_next) {
      th.advance(a);
      th.load(a);
    }
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ void epilogue() const {
    th.epilogue(a, blockIdx.x);
  }
};

// One block's work: its threads' code over the shared stages.
template <class Thread, class Args, class Sm>
__device__ __forceinline__ void block_main(const Args& a) {
  __shared__ Sm sm;
  DeviceExec<Thread, Args, Sm> ex(a, sm);
  run_block(ex);
}

// Arguments stay in the constant parameter space (__grid_constant__, sm_70+):
// the threads read them by reference without a per-thread copy.
template <class Cfg, typename T, typename acc_t>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MIN_BLOCKS)
    adder2d_forward_kernel(const __grid_constant__ FwdArgs<T> a) {
  block_main<FwdThread<Cfg, T, acc_t>, FwdArgs<T>, Smem<Cfg, acc_t>>(a);
}

template <class Cfg, typename T, typename acc_t>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MIN_BLOCKS)
    adder2d_backward_input_kernel(const __grid_constant__ BwdArgs<T> a) {
  block_main<BwdThread<Cfg, T, acc_t>, BwdArgs<T>, Smem<Cfg, acc_t>>(a);
}

// float16 / bfloat16 on packed pairs (adder2d_cuda_packed.cuh). bfloat16
// pairs need sm_80: builds for older GPUs get an empty kernel, which the
// launcher never runs (packed_half).
template <Fmt F>
__host__ __device__ constexpr bool packed_supported() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  return F != Fmt::kBF16;
#else
  return true;
#endif
}

template <class Cfg, Fmt F>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MIN_BLOCKS)
    adder2d_forward_packed_kernel(const __grid_constant__ FwdArgs<Half16<F>> a) {
  if constexpr (packed_supported<F>())
    block_main<FwdThreadPacked<Cfg, F>, FwdArgs<Half16<F>>, SmemPacked<Cfg>>(a);
  else
    __trap();
}

template <class Cfg, Fmt F>
__global__ void __launch_bounds__(Cfg::NT, Cfg::MIN_BLOCKS)
    adder2d_backward_input_packed_kernel(
        const __grid_constant__ BwdArgs<Half16<F>> a) {
  if constexpr (packed_supported<F>())
    block_main<BwdThreadPacked<Cfg, F>, BwdArgs<Half16<F>>, SmemPacked<Cfg>>(a);
  else
    __trap();
}

}  // namespace cuda_tile
}  // namespace adder_mm
