// Declarations of the adder2d kernels, one pair per device. Arguments are
// checked by the dispatcher (adder2d.cpp); kernels receive contiguous NCHW
// tensors of one floating dtype on one device.
#pragma once
#include <torch/extension.h>

#include <tuple>

#include "adder2d_params.h"

namespace adder_mm {

// The dispatcher ops' entry points (registered in pybind.cpp).
at::Tensor adder2d_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups);
at::Tensor adder2d_backward_input(const at::Tensor& grad_out,
                                  const at::Tensor& input,
                                  const at::Tensor& weight,
                                  at::IntArrayRef stride,
                                  at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups);
std::tuple<at::Tensor, at::Tensor> adder2d_backward_weight(
    const at::Tensor& grad_out, const at::Tensor& input,
    const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups);
at::Tensor adder2d_int8(const at::Tensor& qx, const at::Tensor& qw,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups,
                        int64_t pad_value,
                        const c10::optional<at::Tensor>& out_scale,
                        const c10::optional<at::Tensor>& out_bias);
void adder2d_int8_out(const at::Tensor& qx, const at::Tensor& qw,
                      at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t groups,
                      int64_t pad_value,
                      const c10::optional<at::Tensor>& out_scale,
                      const c10::optional<at::Tensor>& out_bias,
                      at::Tensor& out);
at::Tensor quantize_to_grid(const at::Tensor& x, double lo, double scale,
                            int64_t qmax);

// The checks every adder op shares, as TORCH_CHECKs whose messages start
// with `op`: x [N, C, H, W] and w [O, C/groups, kh, kw] defined, 4-D, on
// one device; stride, padding, dilation of 1 or 2 elements and in range;
// groups dividing both channel counts; the dilated kernel inside the padded
// input. Returns the call's geometry.
Adder2dParams make_window_params(const char* op, const at::Tensor& x,
                                 const at::Tensor& w, at::IntArrayRef stride,
                                 at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups,
                                 const char* x_name = "input",
                                 const char* w_name = "weight");

// Threads one at::parallel_for of these kernels runs on now (1 when the
// build lacks the OpenMP flags that make ATen's header template parallel).
int64_t cpu_parallel_threads();

// out[n,o,h,w] = -sum_{c,i,j} |x_pad[n, g*Cg+c, h*sh-ph+i*dh, w*sw-pw+j*dw] - w[o,c,i,j]|
// `out` is preallocated [N, O, OH, OW]; every element is written.
void adder2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                         at::Tensor& out, const Adder2dParams& p);
// grad_in[n,c,y,x] = sum over (o,i,j,h,w) reading (y,x) of
//                    clamp(w[o,c,i,j] - x[n,c,y,x], -1, 1) * grad_out[n,o,h,w]
// `grad_in` is preallocated [N, C, H, W]; every element is written.
void adder2d_backward_input_cpu(const at::Tensor& grad_out,
                                const at::Tensor& input,
                                const at::Tensor& weight, at::Tensor& grad_in,
                                const Adder2dParams& p);

#ifdef ADDER_MM_WITH_CUDA
void adder2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                          at::Tensor& out, const Adder2dParams& p);
void adder2d_backward_input_cuda(const at::Tensor& grad_out,
                                 const at::Tensor& input,
                                 const at::Tensor& weight, at::Tensor& grad_in,
                                 const Adder2dParams& p);
#endif

}  // namespace adder_mm
