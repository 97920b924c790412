// Python bindings of adder_mm._ext. Kept thin: everything callable here is
// declared in adder2d.cpp.
#include <torch/extension.h>

#include <vector>

namespace adder_mm {
at::Tensor adder2d_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias,
                           std::vector<int64_t> stride,
                           std::vector<int64_t> padding,
                           std::vector<int64_t> dilation, int64_t groups);
at::Tensor adder2d_backward_input(const at::Tensor& grad_out,
                                  const at::Tensor& input,
                                  const at::Tensor& weight,
                                  std::vector<int64_t> stride,
                                  std::vector<int64_t> padding,
                                  std::vector<int64_t> dilation,
                                  int64_t groups);
int64_t cpu_parallel_threads();
}  // namespace adder_mm

namespace {
bool with_cuda() {
#ifdef ADDER_MM_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "adder_mm compiled ops: adder2d forward and input gradient";
  m.def("adder2d_forward", &adder_mm::adder2d_forward,
        "adder2d forward: -L1 distance of each filter to each input patch",
        py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"));
  m.def("adder2d_backward_input", &adder_mm::adder2d_backward_input,
        "adder2d input gradient (HardTanh of W - X, folded onto pixels)",
        py::arg("grad_output"), py::arg("input"), py::arg("weight"),
        py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"));
  m.def("with_cuda", &with_cuda, "whether the CUDA kernels are compiled in");
  m.def("cpu_threads", &adder_mm::cpu_parallel_threads,
        "threads the CPU kernels' parallel loops use now");
}
