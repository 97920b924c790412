// Which x86 instruction-set level the CPU kernels run on: one switch for
// every kernel family (float adder2d, integer adder2d_int8).
//
// The level is the best the machine supports, capped by the environment
// variable ADDER_MM_CPU_ISA (generic | avx2 | avx512) when the process
// starts, or by set_isa() at run time (tests and A/B benchmarks run every
// path in one process). A kernel reads active_isa() once per call.
#pragma once
#include <string>

namespace adder_mm {
namespace cpu {

// Ordered: a level implies the ones below it.
//   kAvx2:   AVX2 + FMA
//   kAvx512: AVX-512 F + BW + DQ + VL (Skylake-SP, Zen 4 and later)
enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);
// Parses "generic" | "avx2" | "avx512"; throws (c10::Error) naming the
// accepted values otherwise.
Isa parse_isa(const std::string& name);
// The best level this CPU supports (kGeneric off x86).
Isa machine_isa();
// The level the kernels use now: min(machine_isa(), the cap).
Isa active_isa();
// Caps the level at `cap` (clamped to machine_isa()); returns the level
// that was active before.
Isa set_isa(Isa cap);

}  // namespace cpu
}  // namespace adder_mm
