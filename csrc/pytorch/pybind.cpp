// Bindings of adder_mm._ext. The kernels are dispatcher operators
// (torch.ops.adder_mm.*): one C++ call from Python, no pybind argument
// conversion, and torch.compile sees them as ops (their fake kernels are in
// adder_mm/ops/adder2d.py; the Autograd kernel of adder2d is in
// adder2d_autograd.cpp). pybind11 keeps only the build queries.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "adder2d.h"
#include "cpu/cpu_isa.h"


namespace {
bool with_cuda() {
#ifdef ADDER_MM_WITH_CUDA
  return true;
#else
  return false;
#endif
}
std::string active_isa_name() {
  return adder_mm::cpu::isa_name(adder_mm::cpu::active_isa());
}
std::string machine_isa_name() {
  return adder_mm::cpu::isa_name(adder_mm::cpu::machine_isa());
}
std::string set_isa_name(const std::string& name) {
  return adder_mm::cpu::isa_name(
      adder_mm::cpu::set_isa(adder_mm::cpu::parse_isa(name)));
}
}  // namespace

TORCH_LIBRARY(adder_mm, m) {
  // The layer with autograd (its Autograd kernel: adder2d_autograd.cpp).
  m.def(
      "adder2d(Tensor input, Tensor weight, Tensor? bias, int[] stride, "
      "int[] padding, int[] dilation, int groups) -> Tensor");
  // Its forward and the two halves of its backward, without autograd.
  m.def(
      "adder2d_forward(Tensor input, Tensor weight, Tensor? bias, "
      "int[] stride, int[] padding, int[] dilation, int groups) -> Tensor");
  m.def(
      "adder2d_backward_input(Tensor grad_output, Tensor input, "
      "Tensor weight, int[] stride, int[] padding, int[] dilation, "
      "int groups) -> Tensor");
  // (grad_weight, grad_bias): both come from the same sum of grad_output.
  m.def(
      "adder2d_backward_weight(Tensor grad_output, Tensor input, "
      "Tensor weight, int[] stride, int[] padding, int[] dilation, "
      "int groups) -> (Tensor, Tensor)");
  // Integer adder layer of quantized AdderNets (adder2d_int8.cpp): uint8
  // input and weight on one grid; int32 sums, or float32 with the
  // dequantization fused (out_scale given). CPU only.
  m.def(
      "adder2d_int8(Tensor qx, Tensor qw, int[] stride, int[] padding, "
      "int[] dilation, int groups, int pad_value, Tensor? out_scale, "
      "Tensor? out_bias) -> Tensor");
  m.def(
      "adder2d_int8.out(Tensor qx, Tensor qw, int[] stride, int[] padding, "
      "int[] dilation, int groups, int pad_value, Tensor? out_scale, "
      "Tensor? out_bias, *, Tensor(a!) out) -> ()");
  // Its input: uint8 q = clamp(round((x - lo) / scale), 0, qmax), one pass.
  m.def(
      "quantize_to_grid(Tensor x, float lo, float scale, int qmax) "
      "-> Tensor");
}

// One implementation per op for both keys: it dispatches on the device
// itself and, in a build without CUDA, says how to get the CUDA kernels.
TORCH_LIBRARY_IMPL(adder_mm, CPU, m) {
  m.impl("adder2d", &adder_mm::adder2d_forward);
  m.impl("adder2d_forward", &adder_mm::adder2d_forward);
  m.impl("adder2d_backward_input", &adder_mm::adder2d_backward_input);
  m.impl("adder2d_backward_weight", &adder_mm::adder2d_backward_weight);
  m.impl("adder2d_int8", &adder_mm::adder2d_int8);
  m.impl("adder2d_int8.out", &adder_mm::adder2d_int8_out);
  m.impl("quantize_to_grid", &adder_mm::quantize_to_grid);
}

TORCH_LIBRARY_IMPL(adder_mm, CUDA, m) {
  m.impl("adder2d", &adder_mm::adder2d_forward);
  m.impl("adder2d_forward", &adder_mm::adder2d_forward);
  m.impl("adder2d_backward_input", &adder_mm::adder2d_backward_input);
  m.impl("adder2d_backward_weight", &adder_mm::adder2d_backward_weight);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "adder_mm compiled ops (torch.ops.adder_mm.*) and build queries";
  m.def("with_cuda", &with_cuda, "whether the CUDA kernels are compiled in");
  m.def("cpu_threads", &adder_mm::cpu_parallel_threads,
        "threads the CPU kernels' parallel loops use now");
  m.def("cpu_isa", &active_isa_name,
        "the instruction-set level the CPU kernels use now");
  m.def("machine_cpu_isa", &machine_isa_name,
        "the best instruction-set level this CPU supports");
  m.def("set_cpu_isa", &set_isa_name,
        "cap the CPU kernels' level (generic, avx2, avx512; clamped to the "
        "machine's); returns the level active before");
}
