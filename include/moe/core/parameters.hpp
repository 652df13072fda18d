// Parameters as Eigen::Map views over storage the object owns (one allocation) or over the
// caller's buffers, without copying; and the copy/move rules that keep an owner's views on its
// own storage.
#pragma once

#include <algorithm>
#include <new>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// A parameter matrix: a row-major view whose shape is fixed when the object is built.
template <class S>
using MatrixMap = Eigen::Map<RowMatrix<S>>;

/// A parameter vector: a view whose size is fixed when the object is built.
template <class S>
using VectorMap = Eigen::Map<Vector<S>>;

/// A caller's buffer a parameter is mapped over: `size` elements at `data`, row-major for a
/// matrix. The caller keeps it alive and unmoved while the object maps it.
template <class S>
struct ParameterBuffer {
  S* data = nullptr;
  Index size = 0;
};

namespace detail {

/// Re-seats a map on other storage (placement new is how Eigen re-points a Map).
template <class S>
void reseat(MatrixMap<S>& map, S* data, Index rows, Index cols) {
  new (&map) MatrixMap<S>(data, rows, cols);
}
template <class S>
void reseat(VectorMap<S>& map, S* data, Index rows, Index /*cols*/) {
  new (&map) VectorMap<S>(data, rows);
}

/// The storage behind an object's parameter maps: one owned allocation (64-byte aligned segments,
/// zero-filled) for every parameter bound without a caller buffer.
template <class S>
struct ParameterStorage {
  std::vector<S, Eigen::aligned_allocator<S>> owned;
  bool maps_caller = false;  ///< some parameter views a caller's buffer

  /// Binds every parameter. `visit(f)` calls f(map, rows, cols, buffer, name) for each parameter
  /// in a fixed order, `buffer` being the caller's buffer or nullptr for owned storage. Caller
  /// buffers are checked first (non-null unless empty, exactly rows*cols elements), so a bad
  /// buffer throws before anything changes.
  template <class Visit>
  void bind(Visit&& visit) {
    constexpr Index align = static_cast<Index>(64 / sizeof(S) > 0 ? 64 / sizeof(S) : 1);
    Index total = 0;
    bool caller = false;
    visit([&](auto&, Index rows, Index cols, const ParameterBuffer<S>* buffer, const char* name) {
      const Index size = rows * cols;
      if (buffer == nullptr) {
        total += (size + align - 1) / align * align;
        return;
      }
      caller = true;
      require(buffer->size == size, name, concat(size, " elements ([", rows, ", ", cols, "])"),
              buffer->size);
      require(size == 0 || buffer->data != nullptr, name, "a non-null pointer", "nullptr");
    });
    std::vector<S, Eigen::aligned_allocator<S>> storage(static_cast<std::size_t>(total), S(0));
    S* next = storage.data();
    visit([&](auto& map, Index rows, Index cols, const ParameterBuffer<S>* buffer, const char*) {
      const Index size = rows * cols;
      if (buffer != nullptr) {
        reseat<S>(map, size > 0 ? buffer->data : nullptr, rows, cols);
      } else {
        reseat<S>(map, size > 0 ? next : nullptr, rows, cols);
        next += (size + align - 1) / align * align;
      }
    });
    owned = std::move(storage);  // moving a vector keeps its buffer, so the maps stay valid
    maps_caller = caller;
  }
};

/// One parameter's storage and shape.
template <class S>
struct ParameterSpan {
  S* data;
  Index rows, cols;
};

/// Every parameter's storage and shape, in visiting order.
template <class S, class Visit>
std::vector<ParameterSpan<S>> parameter_spans(Visit&& visit) {
  std::vector<ParameterSpan<S>> spans;
  visit([&](auto& map, Index, Index, const ParameterBuffer<S>*, const char*) {
    spans.push_back({const_cast<S*>(map.data()), map.rows(), map.cols()});
  });
  return spans;
}

/// Copies every parameter's values from `from` into `to` (two objects of one type). `what` names
/// the destination in the error when a shape differs; nothing is written then.
template <class S, class VisitTo, class VisitFrom>
void copy_parameters(VisitTo&& to, VisitFrom&& from, const char* what) {
  const auto destination = parameter_spans<S>(to);
  const auto source = parameter_spans<S>(from);
  for (std::size_t i = 0; i < destination.size(); ++i) {
    const ParameterSpan<S>&d = destination[i], &s = source[i];
    require(
        d.rows == s.rows && d.cols == s.cols, what,
        concat("parameters of its own shapes (parameter ", i, ": [", d.rows, ", ", d.cols, "])"),
        concat("[", s.rows, ", ", s.cols, "]"));
  }
  for (std::size_t i = 0; i < destination.size(); ++i)
    std::copy(source[i].data, source[i].data + source[i].rows * source[i].cols,
              destination[i].data);
}

/// Takes over `from`'s views (and its owned storage, whose buffer a vector move keeps) and leaves
/// `from` empty. Does not allocate.
template <class S, class VisitTo, class VisitFrom>
void steal_parameters(ParameterStorage<S>& to_storage, VisitTo&& to,
                      ParameterStorage<S>& from_storage, VisitFrom&& from) noexcept {
  constexpr std::size_t kMax = 8;  // parameters of one object
  S* data[kMax] = {};
  Index rows[kMax] = {}, cols[kMax] = {};
  std::size_t n = 0;
  from([&](auto& map, Index, Index, const ParameterBuffer<S>*, const char*) {
    data[n] = map.data();
    rows[n] = map.rows();
    cols[n] = map.cols();
    ++n;
    reseat<S>(map, nullptr, 0, 0);
  });
  n = 0;
  to([&](auto& map, Index, Index, const ParameterBuffer<S>*, const char*) {
    reseat<S>(map, data[n], rows[n], cols[n]);
    ++n;
  });
  to_storage.owned = std::move(from_storage.owned);
  to_storage.maps_caller = from_storage.maps_caller;
  from_storage.owned.clear();
  from_storage.maps_caller = false;
}

}  // namespace detail

}  // namespace moe
