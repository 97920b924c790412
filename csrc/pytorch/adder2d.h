// Declarations of the adder2d kernels, one pair per device. Arguments are
// checked by the dispatcher (adder2d.cpp); kernels receive contiguous NCHW
// tensors of one floating dtype on one device.
#pragma once
#include <torch/extension.h>

#include "adder2d_params.h"

namespace adder_mm {

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
