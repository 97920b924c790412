// Autograd of adder_mm::adder2d in C++: the whole layer is one dispatcher
// call from Python and its backward runs without re-entering Python, so the
// host cost per layer stays near a conv's (it bounds small layers on a GPU).
// Forward and both backward halves go through the dispatcher, not direct C++
// calls, so fake tensors under torch.compile reach the ops' fake kernels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace adder_mm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = at::Tensor(const at::Tensor&, const at::Tensor&,
                              const c10::optional<at::Tensor>&,
                              at::IntArrayRef, at::IntArrayRef,
                              at::IntArrayRef, int64_t);
using GradInputSig = at::Tensor(const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, at::IntArrayRef,
                                at::IntArrayRef, at::IntArrayRef, int64_t);
using GradWeightSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
    at::IntArrayRef, at::IntArrayRef, int64_t);

template <class Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .template typed<Sig>();
}

class Adder2dAutograd : public torch::autograd::Function<Adder2dAutograd> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
    static const auto op = find_op<ForwardSig>("adder_mm::adder2d_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    // Saved contiguous, so the backward kernels need no copies of their own.
    const at::Tensor x = input.contiguous();
    const at::Tensor w = weight.contiguous();
    at::Tensor out = op.call(x, w, bias, stride, padding, dilation, groups);
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto grad_input_op =
        find_op<GradInputSig>("adder_mm::adder2d_backward_input");
    static const auto grad_weight_op =
        find_op<GradWeightSig>("adder_mm::adder2d_backward_weight");
    // The kernels' outputs carry no graph: a second derivative would be
    // silently zero, so refuse it.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "adder2d: double backward is not implemented (a backward "
                "with create_graph=True through an adder layer)");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // Edges exist for tensor inputs only: bias is edge 2 when it was given.
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_w = ctx->needs_input_grad(1);
    const bool need_b = has_bias && ctx->needs_input_grad(2);
    const at::Tensor g = grads[0].contiguous();
    at::Tensor gx, gw, gb;
    if (need_x) {
      gx = grad_input_op.call(g, x, w, stride, padding, dilation, groups);
    }
    if (need_w || need_b) {
      std::tie(gw, gb) =
          grad_weight_op.call(g, x, w, stride, padding, dilation, groups);
      if (!need_w) gw = at::Tensor();
      if (!need_b) gb = at::Tensor();
    }
    return {gx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// GCC 13 at -O3 flags a std::vector<bool>::reserve inlined from torch's
// Function::apply with a false -Warray-bounds (seen on the GPU image's
// g++ 13; GCC 12 is silent); the pragma covers that inlining site only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#endif
at::Tensor adder2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
  return Adder2dAutograd::apply(input, weight, bias, stride, padding,
                                dilation, groups);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace
}  // namespace adder_mm

TORCH_LIBRARY_IMPL(adder_mm, Autograd, m) {
  m.impl("adder2d", &adder_mm::adder2d_autograd);
}
