// Per-ISA kernel tables of the adder2d CPU path (see adder2d_cpu_kernels.h).
#pragma once
#include "adder2d_cpu_kernels_fwd.h"

namespace adder_mm {
namespace cpu {

// Portable build (baseline ISA of the compiler, SSE2 on x86-64).
KernelTable<float> generic_table_float();
KernelTable<double> generic_table_double();
// Compiled with avx2+fma; call only where __builtin_cpu_supports says so.
KernelTable<float> avx2_table_float();
KernelTable<double> avx2_table_double();
// Compiled with avx512f/bw/dq/vl; call only where cpu::machine_isa() is
// kAvx512.
KernelTable<float> avx512_table_float();
KernelTable<double> avx512_table_double();

}  // namespace cpu
}  // namespace adder_mm
