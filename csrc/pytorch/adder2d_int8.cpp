// Argument checks and dispatch of adder2d_int8 (torch.ops.adder_mm.
// adder2d_int8 and its .out overload). The Python function checks first
// with friendlier messages; these checks keep direct callers of the op from
// reaching the kernel with bad shapes, dtypes or devices.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "adder2d.h"
#include "cpu/adder2d_int8_cpu.h"

namespace adder_mm {

namespace {

void check_vector(const c10::optional<at::Tensor>& t, const char* name,
                  const at::Tensor& qx, int64_t O) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->scalar_type() == at::kFloat, "adder2d_int8: ", name,
              " must be float32, got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == O, "adder2d_int8: ", name,
              " must have shape [", O, "], got ", t->sizes());
  TORCH_CHECK(t->device() == qx.device(), "adder2d_int8: ", name,
              " is on ", t->device(), " but qx is on ", qx.device());
}

Adder2dParams make_params(const at::Tensor& qx, const at::Tensor& qw,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups,
                          int64_t pad_value,
                          const c10::optional<at::Tensor>& scale,
                          const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(qx.defined() && qw.defined(),
              "adder2d_int8: qx and qw must be defined");
  TORCH_CHECK(qx.scalar_type() == at::kByte,
              "adder2d_int8: qx must be uint8, got ", qx.scalar_type());
  TORCH_CHECK(qw.scalar_type() == at::kByte,
              "adder2d_int8: qw must be uint8, got ", qw.scalar_type());
  TORCH_CHECK(qx.device().is_cpu(), "adder2d_int8: the compiled kernel is ",
              "CPU-only, got a tensor on ", qx.device(),
              " (adder_mm.ops.adder2d_int8 runs the reference there)");
  TORCH_CHECK(pad_value >= 0 && pad_value <= 255,
              "adder2d_int8: pad_value must be in 0..255, got ", pad_value);
  Adder2dParams p = make_window_params("adder2d_int8", qx, qw, stride,
                                       padding, dilation, groups, "qx",
                                       "qw");
  TORCH_CHECK(p.K() <= kInt8MaxK, "adder2d_int8: filter length K = ", p.K(),
              " (C/groups x kh x kw) exceeds ", kInt8MaxK,
              ", above which K * 255 overflows the int32 sums");
  const bool has_scale = scale.has_value() && scale->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(has_scale || !has_bias,
              "adder2d_int8: out_bias is given without out_scale");
  check_vector(scale, "out_scale", qx, p.O);
  check_vector(bias, "out_bias", qx, p.O);
  return p;
}

void run(const at::Tensor& qx, const at::Tensor& qw, int64_t pad_value,
         const c10::optional<at::Tensor>& scale,
         const c10::optional<at::Tensor>& bias, at::Tensor& out,
         const Adder2dParams& p) {
  if (out.numel() == 0) return;
  const bool has_scale = scale.has_value() && scale->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  at::Tensor sc, bi;  // kept alive over the call
  if (has_scale) sc = scale->contiguous();
  if (has_bias) bi = bias->contiguous();
  adder2d_int8_cpu(qx, qw, pad_value,
                   has_scale ? sc.data_ptr<float>() : nullptr,
                   has_bias ? bi.data_ptr<float>() : nullptr, out, p);
}

}  // namespace

at::Tensor adder2d_int8(const at::Tensor& qx, const at::Tensor& qw,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups,
                        int64_t pad_value,
                        const c10::optional<at::Tensor>& out_scale,
                        const c10::optional<at::Tensor>& out_bias) {
  const Adder2dParams p = make_params(qx, qw, stride, padding, dilation,
                                      groups, pad_value, out_scale, out_bias);
  const bool has_scale = out_scale.has_value() && out_scale->defined();
  at::Tensor out = at::empty(
      {p.N, p.O, p.OH, p.OW},
      qx.options()
          .dtype(has_scale ? at::kFloat : at::kInt)
          .memory_format(at::MemoryFormat::ChannelsLast));
  run(qx, qw, pad_value, out_scale, out_bias, out, p);
  return out;
}

// Writes into a caller's channels_last tensor: what tests use to see that
// every element is written (they fill it with a poison value first).
// Returns nothing (a custom op returning its aliased `out` cannot be
// functionalized by torch.compile).
void adder2d_int8_out(const at::Tensor& qx, const at::Tensor& qw,
                      at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t groups,
                      int64_t pad_value,
                      const c10::optional<at::Tensor>& out_scale,
                      const c10::optional<at::Tensor>& out_bias,
                      at::Tensor& out) {
  const Adder2dParams p = make_params(qx, qw, stride, padding, dilation,
                                      groups, pad_value, out_scale, out_bias);
  const bool has_scale = out_scale.has_value() && out_scale->defined();
  const auto dtype = has_scale ? at::kFloat : at::kInt;
  TORCH_CHECK(out.defined() && out.device() == qx.device(),
              "adder2d_int8: out must be a tensor on ", qx.device());
  TORCH_CHECK(out.scalar_type() == dtype, "adder2d_int8: out must be ",
              dtype, ", got ", out.scalar_type());
  TORCH_CHECK(out.dim() == 4 && out.size(0) == p.N && out.size(1) == p.O &&
                  out.size(2) == p.OH && out.size(3) == p.OW,
              "adder2d_int8: out must have shape [", p.N, ", ", p.O, ", ",
              p.OH, ", ", p.OW, "], got ", out.sizes());
  TORCH_CHECK(out.is_contiguous(at::MemoryFormat::ChannelsLast),
              "adder2d_int8: out must be channels_last contiguous");
  run(qx, qw, pad_value, out_scale, out_bias, out, p);
}

namespace {

// One contiguous stretch of quantize_to_grid. SSE2 (every x86-64) by
// hand: GCC turned the float clamps of the plain loop into branches and
// did not vectorize it (7x slower, 45x on signed data, whose branches
// mispredict). Rounding is the conversion's own (MXCSR: to nearest, ties
// to even, as torch.round); v is clamped to [-1, 256] first (no
// overflow; max_ps turns NaN into -1, hence 0), and the saturating packs
// plus a byte min clamp to [0, qmax].
void quantize_span(const float* __restrict s, uint8_t* __restrict d,
                   int64_t n, float lo, float scale, int32_t qmax) {
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128 vlo = _mm_set1_ps(lo), vscale = _mm_set1_ps(scale);
  const __m128 vmin = _mm_set1_ps(-1.f), vmax = _mm_set1_ps(256.f);
  const __m128i vq = _mm_set1_epi8(static_cast<char>(qmax));
  for (; i + 16 <= n; i += 16) {
    __m128i q[4];
    for (int j = 0; j < 4; ++j) {
      __m128 v = _mm_div_ps(_mm_sub_ps(_mm_loadu_ps(s + i + 4 * j), vlo),
                            vscale);
      v = _mm_min_ps(_mm_max_ps(v, vmin), vmax);
      q[j] = _mm_cvtps_epi32(v);
    }
    const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]),
                                           _mm_packs_epi32(q[2], q[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i),
                     _mm_min_epu8(bytes, vq));
  }
#endif
  for (; i < n; ++i) {
    float v = (s[i] - lo) / scale;
    v = v > -1.f ? v : -1.f;  // NaN -> -1 -> 0
    v = v < 256.f ? v : 256.f;
    int32_t q = static_cast<int32_t>(std::nearbyint(v));
    q = q < 0 ? 0 : (q > qmax ? qmax : q);
    d[i] = static_cast<uint8_t>(q);
  }
}

}  // namespace

// q = clamp(round((x - lo) / scale), 0, qmax) as uint8, round half to
// even: the input of adder2d_int8, computed in one pass instead of five
// tensor ops (in a quantized ResNet-20 those cost as much as the integer
// layers). The float32 operations are those of the PyTorch formula (a
// subtraction, then a division; no reciprocal), so the bytes are equal.
at::Tensor quantize_to_grid(const at::Tensor& x, double lo, double scale,
                            int64_t qmax) {
  TORCH_CHECK(x.defined() && x.scalar_type() == at::kFloat,
              "quantize_to_grid: x must be float32, got ",
              x.defined() ? c10::toString(x.scalar_type()) : "undefined");
  TORCH_CHECK(x.device().is_cpu(), "quantize_to_grid: the compiled kernel ",
              "is CPU-only, got a tensor on ", x.device());
  TORCH_CHECK(qmax >= 1 && qmax <= 255,
              "quantize_to_grid: qmax must be in 1..255, got ", qmax);
  const float lo_f = static_cast<float>(lo), scale_f =
                                                 static_cast<float>(scale);
  TORCH_CHECK(scale_f > 0.f && std::isfinite(scale_f) && std::isfinite(lo_f),
              "quantize_to_grid: scale must be positive and finite and lo "
              "finite (in float32), got lo=", lo, ", scale=", scale);
  const at::Tensor xc = x.contiguous(x.suggest_memory_format());
  at::Tensor out = at::empty_like(xc, xc.options().dtype(at::kByte));
  const float* src = xc.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int32_t top = static_cast<int32_t>(qmax);
  at::parallel_for(0, xc.numel(), 1 << 15, [&](int64_t b, int64_t e) {
    quantize_span(src + b, dst + b, e - b, lo_f, scale_f, top);
  });
  return out;
}

}  // namespace adder_mm
