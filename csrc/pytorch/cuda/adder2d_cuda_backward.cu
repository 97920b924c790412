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

// Calls f(Cfg{}) with the input-gradient tile shape chosen for p. Pixels
// are tiled per stride class; about N*H*W of them in all.
template <class Fn>
void with_backward_tile(const Adder2dParams& p, Fn&& f) {
  with_tile<Bwd128, Bwd64, Bwd32, Bwd16>(p.groups, p.cin_per_group(),
                                         p.N * p.H * p.W, f);
}

template <typename T, typename acc_t>
void backward_dtype(const Adder2dParams& p, const T* w, const T* go,
                    const T* x, T* gx, cudaStream_t stream) {
  auto run = [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch<Cfg>(adder2d_backward_input_kernel<Cfg, T, acc_t>,
                make_bwd_args<Cfg>(p, w, go, x, gx), stream,
                "adder2d_backward_input_cuda");
  };
  if constexpr (std::is_same<T, double>::value) {
    run(Tile64{});
  } else {
    with_backward_tile(p, run);
  }
}

// The packed kernels read the tensors' 16-bit storage as Half16<F>.
template <Fmt F, typename scalar_t>
void backward_packed(const Adder2dParams& p, const at::Tensor& wt,
                     const at::Tensor& go, const at::Tensor& x,
                     at::Tensor& gx, cudaStream_t stream) {
  static_assert(sizeof(scalar_t) == sizeof(Half16<F>), "16-bit storage");
  using H = Half16<F>;
  const auto* w_ = reinterpret_cast<const H*>(wt.data_ptr<scalar_t>());
  const auto* g_ = reinterpret_cast<const H*>(go.data_ptr<scalar_t>());
  const auto* x_ = reinterpret_cast<const H*>(x.data_ptr<scalar_t>());
  auto* gx_ = reinterpret_cast<H*>(gx.data_ptr<scalar_t>());
  with_backward_tile(p, [&](auto cfg) {
    using Cfg = decltype(cfg);
    launch<Cfg>(adder2d_backward_input_packed_kernel<Cfg, F>,
                make_bwd_args<Cfg>(p, w_, g_, x_, gx_), stream,
                "adder2d_backward_input_cuda");
  });
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
  if (packed_half(input.scalar_type())) {
    if (input.scalar_type() == at::kHalf)
      backward_packed<Fmt::kF16, at::Half>(p, wt, grad_out, input, grad_in,
                                           stream);
    else
      backward_packed<Fmt::kBF16, at::BFloat16>(p, wt, grad_out, input,
                                                grad_in, stream);
    return;
  }
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
