// Argument checks and device dispatch of adder2d. The Python layer checks
// first with friendlier messages; these checks keep direct callers of
// adder_mm._ext from reaching a kernel with bad shapes.
#include "adder2d.h"

#include <array>
#include <tuple>

namespace adder_mm {

namespace {

std::array<int64_t, 2> expand_pair(const char* op, at::IntArrayRef v,
                                   const char* name) {
  TORCH_CHECK(v.size() == 1 || v.size() == 2, op, ": ", name,
              " must have 1 or 2 elements, got ", v.size());
  return {v[0], v[v.size() - 1]};
}

Adder2dParams make_params(const at::Tensor& input, const at::Tensor& weight,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups) {
  Adder2dParams p = make_window_params("adder2d", input, weight, stride,
                                       padding, dilation, groups);
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(),
              "adder2d: input dtype ", input.scalar_type(),
              " does not match weight dtype ", weight.scalar_type());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "adder2d: only floating point tensors are supported, got ",
              input.scalar_type());
  return p;
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& input,
                    const Adder2dParams& p) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == p.N &&
                  grad_out.size(1) == p.O && grad_out.size(2) == p.OH &&
                  grad_out.size(3) == p.OW,
              "adder2d: grad_output must have shape [", p.N, ", ", p.O, ", ",
              p.OH, ", ", p.OW, "], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type() &&
                  grad_out.device() == input.device(),
              "adder2d: grad_output must match the input's dtype and device");
}

bool is_cuda(const at::Tensor& t) { return t.device().is_cuda(); }

#ifndef ADDER_MM_WITH_CUDA
[[noreturn]] void no_cuda() {
  TORCH_CHECK(false,
              "adder2d: a CUDA tensor was given but adder_mm._ext was built "
              "without CUDA kernels; rebuild with a CUDA toolkit (FORCE_CUDA=1)");
}
#endif

}  // namespace

Adder2dParams make_window_params(const char* op, const at::Tensor& x,
                                 const at::Tensor& w, at::IntArrayRef stride_,
                                 at::IntArrayRef padding_,
                                 at::IntArrayRef dilation_, int64_t groups,
                                 const char* xn, const char* wn) {
  TORCH_CHECK(x.defined() && w.defined(), op, ": ", xn, " and ", wn,
              " must be defined");
  TORCH_CHECK(x.dim() == 4, op, ": ", xn, " must be 4-D [N, C, H, W], got ",
              x.dim(), "-D");
  TORCH_CHECK(w.dim() == 4, op, ": ", wn,
              " must be 4-D [O, C/groups, KH, KW], got ", w.dim(), "-D");
  TORCH_CHECK(x.device() == w.device(), op, ": ", xn, " is on ", x.device(),
              " but ", wn, " is on ", w.device());
  const auto stride = expand_pair(op, stride_, "stride");
  const auto padding = expand_pair(op, padding_, "padding");
  const auto dilation = expand_pair(op, dilation_, "dilation");
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op,
              ": stride must be positive, got (", stride[0], ", ", stride[1],
              ")");
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op,
              ": dilation must be positive, got (", dilation[0], ", ",
              dilation[1], ")");
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op,
              ": padding must be non-negative, got (", padding[0], ", ",
              padding[1], ")");
  Adder2dParams p;
  p.N = x.size(0);
  p.C = x.size(1);
  p.H = x.size(2);
  p.W = x.size(3);
  p.O = w.size(0);
  p.KH = w.size(2);
  p.KW = w.size(3);
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dil_h = dilation[0];
  p.dil_w = dilation[1];
  p.groups = groups;
  TORCH_CHECK(p.C % groups == 0, op, ": ", xn, " channels ", p.C,
              " are not divisible by groups ", groups);
  TORCH_CHECK(p.O % groups == 0, op, ": output channels ", p.O,
              " are not divisible by groups ", groups);
  TORCH_CHECK(w.size(1) * groups == p.C, op, ": ", wn, " expects ",
              w.size(1) * groups, " input channels (", w.size(1),
              " x groups ", groups, "), ", xn, " has ", p.C);
  TORCH_CHECK(p.KH > 0 && p.KW > 0, op, ": empty kernel");
  p.OH = adder_out_size(p.H, p.KH, p.stride_h, p.pad_h, p.dil_h);
  p.OW = adder_out_size(p.W, p.KW, p.stride_w, p.pad_w, p.dil_w);
  TORCH_CHECK(p.OH > 0 && p.OW > 0, op, ": kernel (", p.KH, "x", p.KW,
              ", dilation ", p.dil_h, "x", p.dil_w,
              ") is larger than the padded input (", p.H + 2 * p.pad_h, "x",
              p.W + 2 * p.pad_w, ")");
  return p;
}

at::Tensor adder2d_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  const Adder2dParams p =
      make_params(input, weight, stride, padding, dilation, groups);
  auto x = input.contiguous();
  auto w = weight.contiguous();
  auto out = at::empty({p.N, p.O, p.OH, p.OW}, x.options());
  if (p.C == 0) {
    // No input channels: every output is a sum of no terms (as in
    // adder2d_int8); the kernels' blocking assumes at least one channel.
    out.zero_();
  } else if (out.numel() > 0) {
    if (is_cuda(x)) {
#ifdef ADDER_MM_WITH_CUDA
      adder2d_forward_cuda(x, w, out, p);
#else
      no_cuda();
#endif
    } else {
      adder2d_forward_cpu(x, w, out, p);
    }
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == p.O,
                "adder2d: bias must have shape [", p.O, "], got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type() &&
                    bias->device() == input.device(),
                "adder2d: bias must match the input's dtype and device");
    out.add_(bias->view({1, p.O, 1, 1}));
  }
  return out;
}

at::Tensor adder2d_backward_input(const at::Tensor& grad_out,
                                  const at::Tensor& input,
                                  const at::Tensor& weight,
                                  at::IntArrayRef stride,
                                  at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups) {
  const Adder2dParams p =
      make_params(input, weight, stride, padding, dilation, groups);
  check_grad_out(grad_out, input, p);
  auto g = grad_out.contiguous();
  auto x = input.contiguous();
  auto w = weight.contiguous();
  auto grad_in = at::empty({p.N, p.C, p.H, p.W}, x.options());
  if (grad_in.numel() == 0) return grad_in;
  if (g.numel() == 0) return grad_in.zero_();
  if (is_cuda(x)) {
#ifdef ADDER_MM_WITH_CUDA
    adder2d_backward_input_cuda(g, x, w, grad_in, p);
#else
    no_cuda();
#endif
  } else {
    adder2d_backward_input_cpu(g, x, w, grad_in, p);
  }
  return grad_in;
}

std::tuple<at::Tensor, at::Tensor> adder2d_backward_weight(
    const at::Tensor& grad_out, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups) {
  const Adder2dParams p =
      make_params(input, weight, stride, padding, dilation, groups);
  check_grad_out(grad_out, input, p);
  // gW = sum_p (X_col - W) G = conv weight-gradient(X, G) - W * sum_p G: the
  // vendor's (oneDNN / cuDNN) weight gradient counts zero padding exactly as
  // the adder does. Half-precision sums accumulate in float32, as the
  // kernels do; one in-place addcmul saves a temporary and a launch.
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble
                                                      : at::kFloat;
  const auto g = grad_out.contiguous();
  const auto w = weight.contiguous();
  at::Tensor gsum = g.sum({0, 2, 3}, /*keepdim=*/false, acc);
  if (p.C == 0 || p.O == 0) {  // an empty weight: nothing for the vendor
    return {at::empty_like(w), gsum.to(grad_out.scalar_type())};
  }
  at::Tensor gw = std::get<1>(at::convolution_backward(
      g, input.contiguous(), w, c10::nullopt, {p.stride_h, p.stride_w},
      {p.pad_h, p.pad_w}, {p.dil_h, p.dil_w}, /*transposed=*/false, {0, 0},
      groups, {false, true, false}));
  const auto gsum4 = gsum.view({p.O, 1, 1, 1});
  if (gw.scalar_type() == acc) {
    gw.addcmul_(w, gsum4, /*value=*/-1);
  } else {
    gw = gw.to(acc).addcmul_(w.to(acc), gsum4, /*value=*/-1).to(w.scalar_type());
  }
  // grad_bias: the same sum, in the gradient's dtype.
  return {gw, gsum.to(grad_out.scalar_type())};
}

}  // namespace adder_mm
