// Per-thread scratch of the CPU kernels: one uninitialised allocation from
// the c10 CPU allocator (so memory profilers see it), a 64-byte aligned
// slice per thread; allocated on the calling thread before the parallel
// region.
#pragma once
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdint>

namespace adder_mm {
namespace cpu {

template <typename T>
class Scratch {
 public:
  Scratch(int64_t per_thread, int64_t threads)
      : stride_(((std::max<int64_t>(per_thread, 1) * sizeof(T) + 63) / 64) *
                64 / sizeof(T)),
        data_(c10::GetCPUAllocator()->allocate(stride_ * threads *
                                               sizeof(T))) {}
  T* slice(int64_t thread) const {
    return static_cast<T*>(data_.get()) + thread * stride_;
  }

 private:
  int64_t stride_;
  at::DataPtr data_;
};

}  // namespace cpu
}  // namespace adder_mm
