// CPU kernels of adder2d (straightforward direct loops; correctness baseline).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "../adder2d.h"

namespace adder_mm {

namespace {

template <typename T>
void forward_kernel(const T* x, const T* w, T* y, const Adder2dParams& p) {
  const int64_t Cg = p.cin_per_group(), Og = p.cout_per_group();
  at::parallel_for(0, p.N * p.O, 1, [&](int64_t begin, int64_t end) {
    for (int64_t no = begin; no < end; ++no) {
      const int64_t n = no / p.O, o = no % p.O, g = o / Og;
      const T* wo = w + o * p.K();
      T* yo = y + no * p.L();
      for (int64_t h = 0; h < p.OH; ++h) {
        for (int64_t ww = 0; ww < p.OW; ++ww) {
          T acc = 0;
          for (int64_t c = 0; c < Cg; ++c) {
            const T* xc = x + (n * p.C + g * Cg + c) * p.H * p.W;
            for (int64_t i = 0; i < p.KH; ++i) {
              const int64_t iy = adder_in_coord(h, i, p.stride_h, p.pad_h, p.dil_h);
              for (int64_t j = 0; j < p.KW; ++j) {
                const int64_t ix = adder_in_coord(ww, j, p.stride_w, p.pad_w, p.dil_w);
                const bool inside = iy >= 0 && iy < p.H && ix >= 0 && ix < p.W;
                const T xv = inside ? xc[iy * p.W + ix] : T(0);
                acc += std::abs(xv - wo[(c * p.KH + i) * p.KW + j]);
              }
            }
          }
          yo[h * p.OW + ww] = -acc;
        }
      }
    }
  });
}

template <typename T>
void backward_input_kernel(const T* go, const T* x, const T* w, T* gx,
                           const Adder2dParams& p) {
  const int64_t Cg = p.cin_per_group(), Og = p.cout_per_group();
  at::parallel_for(0, p.N * p.C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / p.C, ch = nc % p.C, g = ch / Cg, c = ch % Cg;
      for (int64_t y = 0; y < p.H; ++y) {
        for (int64_t xx = 0; xx < p.W; ++xx) {
          const T xv = x[nc * p.H * p.W + y * p.W + xx];
          T acc = 0;
          for (int64_t i = 0; i < p.KH; ++i) {
            int64_t h;
            if (!adder_out_coord(y, i, p.stride_h, p.pad_h, p.dil_h, p.OH, &h)) continue;
            for (int64_t j = 0; j < p.KW; ++j) {
              int64_t ow;
              if (!adder_out_coord(xx, j, p.stride_w, p.pad_w, p.dil_w, p.OW, &ow)) continue;
              for (int64_t oo = 0; oo < Og; ++oo) {
                const int64_t o = g * Og + oo;
                const T d = w[((o * Cg + c) * p.KH + i) * p.KW + j] - xv;
                const T ht = std::min(std::max(d, T(-1)), T(1));
                acc += ht * go[((n * p.O + o) * p.OH + h) * p.OW + ow];
              }
            }
          }
          gx[nc * p.H * p.W + y * p.W + xx] = acc;
        }
      }
    }
  });
}

}  // namespace

void adder2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                         at::Tensor& out, const Adder2dParams& p) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adder2d_forward_cpu", [&] {
    forward_kernel<scalar_t>(input.data_ptr<scalar_t>(),
                             weight.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), p);
  });
}

void adder2d_backward_input_cpu(const at::Tensor& grad_out,
                                const at::Tensor& input,
                                const at::Tensor& weight, at::Tensor& grad_in,
                                const Adder2dParams& p) {
  AT_DISPATCH_FLOATING_TYPES(
      input.scalar_type(), "adder2d_backward_input_cpu", [&] {
        backward_input_kernel<scalar_t>(
            grad_out.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(),
            weight.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), p);
      });
}

}  // namespace adder_mm
