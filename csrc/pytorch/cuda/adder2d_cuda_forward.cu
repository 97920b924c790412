// CUDA forward of adder2d: Y = -sum |X_patch - W| (+ bias in the dispatcher).
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
void launch_forward(const Adder2dParams& p, const T* wt, const T* x, T* y,
                    cudaStream_t stream) {
  const FwdArgs<T> a = make_fwd_args<Cfg>(p, wt, x, y);
  if (a.blocks == 0) return;
  check_grid(a.blocks, "adder2d_forward_cuda");
  adder2d_forward_kernel<Cfg, T, acc_t>
      <<<static_cast<unsigned>(a.blocks), Cfg::NT, 0, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Tile choice per dtype; float64 gets one shape (tests only), so the other
// shapes are never instantiated for it.
template <typename T, typename acc_t>
void forward_dtype(const Adder2dParams& p, const T* w, const T* x, T* y,
                   cudaStream_t stream) {
  if constexpr (std::is_same<T, double>::value) {
    launch_forward<Tile64, T, acc_t>(p, w, x, y, stream);
  } else {
    switch (pick_tile<Fwd128, Fwd64, Fwd32, Fwd16>(
        p.groups, p.cout_per_group(), p.N * p.L())) {
      case 0:
        launch_forward<Fwd128, T, acc_t>(p, w, x, y, stream);
        break;
      case 1:
        launch_forward<Fwd64, T, acc_t>(p, w, x, y, stream);
        break;
      case 2:
        launch_forward<Fwd32, T, acc_t>(p, w, x, y, stream);
        break;
      default:
        launch_forward<Fwd16, T, acc_t>(p, w, x, y, stream);
    }
  }
}

}  // namespace

void adder2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                          at::Tensor& out, const Adder2dParams& p) {
  check_tensors(input, input, "input");
  check_tensors(weight, input, "weight");
  check_tensors(out, input, "output");
  TORCH_CHECK(out.numel() == p.N * p.O * p.OH * p.OW,
              "adder2d (CUDA): output has ", out.numel(),
              " elements, expected ", p.N * p.O * p.OH * p.OW);
  if (out.numel() == 0) return;
  check_limits(p);
  const c10::cuda::CUDAGuard guard(input.device());
  if (input.numel() == 0) {
    // An empty image (H or W = 0) with padding: every tap reads padding, so
    // Y = -sum |W| per channel. The kernel's masked loads would otherwise
    // read x[0], which does not exist.
    out.copy_(weight.abs().sum({1, 2, 3}).neg().view({1, p.O, 1, 1})
                  .expand_as(out));
    return;
  }
  const at::Tensor wt = transpose_weight(weight, p, /*forward=*/true);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "adder2d_forward_cuda",
      [&] {
        using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
        const scalar_t* w_ = wt.data_ptr<scalar_t>();
        const scalar_t* x_ = input.data_ptr<scalar_t>();
        scalar_t* y_ = out.data_ptr<scalar_t>();
        forward_dtype<scalar_t, acc_t>(p, w_, x_, y_, stream);
      });
}

}  // namespace adder_mm
