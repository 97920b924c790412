#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

namespace adder_mm {
namespace cpu {

namespace {

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

// -1: not read yet (the environment variable is read on first use, so a
// bad value surfaces as an exception from a kernel call, not at load time).
std::atomic<int> g_active{-1};

Isa initial() {
  const char* env = std::getenv("ADDER_MM_CPU_ISA");
  const Isa best = machine_isa();
  if (env == nullptr || *env == '\0') return best;
  Isa cap;
  try {
    cap = parse_isa(env);
  } catch (const c10::Error&) {
    TORCH_CHECK(false, "ADDER_MM_CPU_ISA=", env,
                " is not a CPU kernel level; use generic, avx2 or avx512 "
                "(or unset it for the best this CPU has: ",
                isa_name(best), ")");
  }
  return std::min(cap, best);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "generic";
  }
}

Isa parse_isa(const std::string& name) {
  if (name == "generic") return Isa::kGeneric;
  if (name == "avx2") return Isa::kAvx2;
  if (name == "avx512") return Isa::kAvx512;
  TORCH_CHECK(false, "unknown CPU kernel level '", name,
              "'; use generic, avx2 or avx512");
}

Isa machine_isa() {
  static const Isa best = detect();
  return best;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    const int init = static_cast<int>(initial());
    // Another thread may have set it meanwhile; keep whichever came first.
    g_active.compare_exchange_strong(v, init);
    v = g_active.load(std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

Isa set_isa(Isa cap) {
  const int before =
      g_active.exchange(static_cast<int>(std::min(cap, machine_isa())));
  if (before >= 0) return static_cast<Isa>(before);
  // Not read yet: what the environment would have set. A bad
  // ADDER_MM_CPU_ISA is overridden by this call, not raised by it.
  try {
    return initial();
  } catch (const c10::Error&) {
    return machine_isa();
  }
}

}  // namespace cpu
}  // namespace adder_mm
