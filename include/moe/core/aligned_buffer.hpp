// AlignedBuffer: an owned array of trivial values starting on a cache line, allocated with C++17's
// aligned operator new. Workspaces, per-thread kernel scratch and owned parameters all allocate
// through it.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>

namespace moe {

/// Alignment of every buffer the library allocates: a cache line, and the widest packet (AVX-512).
inline constexpr std::size_t kBufferAlignment = 64;

/// `size()` values of T at a kBufferAlignment-aligned address, uninitialized unless asked; moves
/// keep the allocation, copies are made only by copy() (who owns a buffer is always explicit).
template <class T>
class AlignedBuffer {
  static_assert(std::is_trivially_copyable_v<T> && std::is_trivially_destructible_v<T>,
                "AlignedBuffer holds plain values");

 public:
  AlignedBuffer() = default;
  /// `size` values, left uninitialized.
  explicit AlignedBuffer(std::size_t size)
      : data_(size > 0 ? static_cast<T*>(
                             ::operator new (size * sizeof(T), std::align_val_t{kBufferAlignment}))
                       : nullptr),
        size_(size) {}
  /// `size` values, each `value`.
  AlignedBuffer(std::size_t size, T value) : AlignedBuffer(size) {
    for (std::size_t i = 0; i < size; ++i) data_.get()[i] = value;
  }

  /// A new buffer holding the same values.
  AlignedBuffer copy() const {
    AlignedBuffer to(size_);
    for (std::size_t i = 0; i < size_; ++i) to.data_.get()[i] = data_.get()[i];
    return to;
  }

  T* data() noexcept { return data_.get(); }
  const T* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }

 private:
  struct Free {
    void operator()(T* p) const noexcept {
      ::operator delete (p, std::align_val_t{kBufferAlignment});
    }
  };
  std::unique_ptr<T, Free> data_;
  std::size_t size_ = 0;
};

}  // namespace moe
