// CUDA input gradient of adder2d: sum of clamp(W - X, -1, 1) * G over the
// outputs that read each pixel (gather form: no atomics).
//
// The per-thread work lives in csrc/common/adder2d_cuda_tile.cuh (shared with
// a host emulation, tests/csrc/adder2d_cuda_emulate.cpp); this file picks a tile shape,
// prepares the transposed weight and launches on the current stream. See
// docs/kernels.md.
#include "adder2d_cuda_launch.cuh"

namespace adder_mm {

namespace {

using namespace cuda_tile;
using namespace cuda_launch;

template <class Cfg, typename T, typename acc_t>
void launch_backward(const Adder2dParams& p, const T* wt, const T* go,
                     const T* x, T* gx, cudaStream_t stream) {
  const BwdArgs<T> a = make_bwd_args<Cfg>(p, wt, go, x, gx);
  if (a.blocks == 0) return;
  check_grid(a.blocks, "adder2d_backward_input_cuda");
  adder2d_backward_input_kernel<Cfg, T, acc_t>
      <<<static_cast<unsigned>(a.blocks), Cfg::NT, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, typename acc_t>
void backward_dtype(const Adder2dParams& p, const T* w, const T* go,
                    const T* x, T* gx, cudaStream_t stream) {
  if constexpr (std::is_same<T, double>::value) {
    launch_backward<Tile64, T, acc_t>(p, w, go, x, gx, stream);
  } else {
    // Pixels are tiled per stride class; about N*H*W of them in all.
    switch (pick_tile<Bwd128, Bwd64, Bwd32, Bwd16>(
        p.groups, p.cin_per_group(), p.N * p.H * p.W)) {
      case 0:
        launch_backward<Bwd128, T, acc_t>(p, w, go, x, gx, stream);
        break;
      case 1:
        launch_backward<Bwd64, T, acc_t>(p, w, go, x, gx, stream);
        break;
      case 2:
        launch_backward<Bwd32, T, acc_t>(p, w, go, x, gx, stream);
        break;
      default:
        launch_backward<Bwd16, T, acc_t>(p, w, go, x, gx, stream);
    }
  }
}

}  // namespace

void adder2d_backward_input_cuda(const at::Tensor& grad_out,
                                 const at::Tensor& input,
                                 const at::Tensor& weight, at::Tensor& grad_in,
                                 const Adder2dParams& p) {
  check_tensors(input, input, "input");
  check_tensors(weight, input, "weight");
  check_tensors(grad_out, input, "grad_output");
  check_tensors(grad_in, input, "grad_input");
  TORCH_CHECK(grad_in.numel() == p.N * p.C * p.H * p.W,
              "adder2d (CUDA): grad_input has ", grad_in.numel(),
              " elements, expected ", p.N * p.C * p.H * p.W);
  TORCH_CHECK(grad_out.numel() == p.N * p.O * p.OH * p.OW,
              "adder2d (CUDA): grad_output has ", grad_out.numel(),
              " elements, expected ", p.N * p.O * p.OH * p.OW);
  if (grad_in.numel() == 0) return;
  check_limits(p);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor wt = transpose_weight(weight, p, /*forward=*/false);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(),
      "adder2d_backward_input_cuda", [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        const scalar_t* w_ = wt.data_ptr<scalar_t>();
        const scalar_t* g_ = grad_out.data_ptr<scalar_t>();
        const scalar_t* x_ = input.data_ptr<scalar_t>();
        scalar_t* gx_ = grad_in.data_ptr<scalar_t>();
        backward_dtype<scalar_t, acc_t>(p, w_, g_, x_, gx_, stream);
      });
}

}  // namespace adder_mm
