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

// Calls f(Cfg{}) with the forward tile shape chosen for p.
template <class Fn>
void with_forward_tile(const Adder2dParams& p, Fn&& f) {
  with_tile<Fwd128, Fwd64, Fwd32, Fwd16>(p.groups, p.cout_per_group(),
                                         p.N * p.L(), f);
}

// Tile choice per dtype; float64 gets one shape (tests only), so the other
// shapes are never instantiated for it.
template <typename T, typename acc_t>
void forward_dtype(const Adder2dParams& p, const T* w, const T* x, T* y,
                   cudaStream_t stream) {
  auto run = [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch<Cfg>(adder2d_forward_kernel<Cfg, T, acc_t>,
                make_fwd_args<Cfg>(p, w, x, y), stream, "adder2d_forward_cuda");
  };
  if constexpr (std::is_same<T, double>::value) {
    run(Tile64{});
  } else {
    with_forward_tile(p, run);
  }
}

// The packed kernels read the tensors' 16-bit storage as Half16<F>.
template <Fmt F, typename scalar_t>
void forward_packed(const Adder2dParams& p, const at::Tensor& wt,
                    const at::Tensor& x, at::Tensor& y, cudaStream_t stream) {
  static_assert(sizeof(scalar_t) == sizeof(Half16<F>), "16-bit storage");
  const auto* w_ = reinterpret_cast<const Half16<F>*>(wt.data_ptr<scalar_t>());
  const auto* x_ = reinterpret_cast<const Half16<F>*>(x.data_ptr<scalar_t>());
  auto* y_ = reinterpret_cast<Half16<F>*>(y.data_ptr<scalar_t>());
  with_forward_tile(p, [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch<Cfg>(adder2d_forward_packed_kernel<Cfg, F>,
                make_fwd_args<Cfg>(p, w_, x_, y_), stream,
                "adder2d_forward_cuda");
  });
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
  if (packed_half(input.scalar_type())) {
    if (input.scalar_type() == at::kHalf)
      forward_packed<Fmt::kF16, at::Half>(p, wt, input, out, stream);
    else
      forward_packed<Fmt::kBF16, at::BFloat16>(p, wt, input, out, stream);
    return;
  }
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
