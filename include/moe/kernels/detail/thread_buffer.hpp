// Scratch memory kept per thread across calls, for the products' packing and transposition.
#pragma once

#include <algorithm>
#include <cstddef>

#include "moe/core/aligned_buffer.hpp"

namespace moe::kernels::detail {

/// A 64-byte aligned buffer of at least `count` scalars owned by the calling thread; it grows to
/// the largest request the thread has made and is freed when the thread exits. Allocating per call
/// instead costs page faults: glibc returns large freed blocks to the system. One buffer per
/// scalar type, so a caller must be done with it before the thread's next call.
template <class S>
S* thread_buffer(std::size_t count) {
  thread_local AlignedBuffer<S> buffer;
  if (buffer.size() < count || buffer.data() == nullptr)
    buffer = AlignedBuffer<S>(std::max<std::size_t>(count, 1));
  return buffer.data();
}

}  // namespace moe::kernels::detail
