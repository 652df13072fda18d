// Scratch memory kept per thread across calls, for the products' packing and transposition.
#pragma once

#include <cstddef>
#include <memory>
#include <new>

#include "moe/core/types.hpp"

namespace moe::detail {

/// A 64-byte aligned buffer of at least `count` scalars owned by the calling thread; it grows to
/// the largest request the thread has made and is freed when the thread exits. Allocating per call
/// instead costs page faults: glibc returns large freed blocks to the system. One buffer per
/// scalar type, so a caller must be done with it before the thread's next call.
template <class S>
S* thread_buffer(std::size_t count) {
  struct Free {
    void operator()(void* p) const noexcept { Eigen::internal::handmade_aligned_free(p); }
  };
  thread_local std::unique_ptr<void, Free> data;
  thread_local std::size_t capacity = 0;
  if (capacity < count || !data) {
    void* grown = Eigen::internal::handmade_aligned_malloc(count * sizeof(S), 64);
    if (grown == nullptr) throw std::bad_alloc();
    data.reset(grown);
    capacity = count;
  }
  return static_cast<S*>(data.get());
}

}  // namespace moe::detail
