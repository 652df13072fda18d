// Parameters: Eigen::Map views over storage their object owns (one allocation) or over the
// caller's buffers, without copying; ParameterSet gives every object that holds them (a router,
// expert weights, a layer) its copy, move and assignment once: a copy owns its values, a move keeps
// the storage, assigning into parameters that map caller buffers writes the values through.
#pragma once

#include <algorithm>
#include <cstddef>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "moe/core/aligned_buffer.hpp"
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

/// A trained parameter beside its gradient, both flattened (row-major order), for an optimizer
/// loop: `for (auto& p : layer.parameters(grads)) p.value -= lr * p.gradient;`.
template <class S>
struct ParameterAndGradient {
  std::string name;  ///< its path in the object, e.g. "experts.w1"
  Eigen::Map<Vector<S>> value;
  Eigen::Map<const Vector<S>> gradient;
};

/// One named slot of a parameter set: a member of Owner, either a parameter (MatrixMap, VectorMap)
/// or an object that is itself a parameter set (a Router inside a layer).
template <class Owner, class Member>
struct Slot {
  Member Owner::*member;
  const char* name;
};

template <class Owner, class Member>
constexpr Slot<Owner, Member> slot(Member Owner::*member, const char* name) {
  return {member, name};
}

namespace detail {

/// A map of `rows` x `cols` at `data` (a vector map takes its rows alone).
template <class Map>
Map make_map(typename Map::Scalar* data, Index rows, Index cols) {
  if constexpr (Map::ColsAtCompileTime == 1) {
    (void)cols;
    return Map(data, rows);
  } else {
    return Map(data, rows, cols);
  }
}

/// Re-seats a map on other storage (placement new is how Eigen re-points a Map).
template <class Map>
void reseat(Map& map, typename Map::Scalar* data, Index rows, Index cols) {
  map.~Map();
  new (&map) Map(make_map<Map>(data, rows, cols));
}

template <class T>
struct IsParameterMap : std::false_type {};
template <class S>
struct IsParameterMap<MatrixMap<S>> : std::true_type {};
template <class S>
struct IsParameterMap<VectorMap<S>> : std::true_type {};

}  // namespace detail

/// A parameter of `rows` x `cols` over the caller's `buffer`, which must hold exactly that many
/// elements and be non-null unless empty (moe::Error naming `name` otherwise).
template <class Map>
Map map_buffer(const ParameterBuffer<typename Map::Scalar>& buffer, Index rows, Index cols,
               const std::string& name) {
  const Index size = rows * cols;
  require(buffer.size == size, name.c_str(),
          detail::concat(size, " elements ([", rows, ", ", cols, "])"), buffer.size);
  require(size == 0 || buffer.data != nullptr, name.c_str(), "a non-null pointer", "nullptr");
  return detail::make_map<Map>(size > 0 ? buffer.data : nullptr, rows, cols);
}

/// A parameter of `rows` x `cols` without storage yet: ParameterSet gives it owned, zeroed memory.
template <class Map>
Map unbound(Index rows, Index cols) {
  return detail::make_map<Map>(nullptr, rows, cols);
}

/// The parameters of an object, held in the named slots of `Slots`: a struct whose members are the
/// parameters (MatrixMap / VectorMap) and the nested objects that hold parameters of their own,
/// listed by a static `slots()` returning a tuple of moe::slot(&Slots::member, "name"), with
/// `Scalar` and `kName` (what errors call the object). Slots' constructors give each map its shape,
/// and point it at a caller's buffer (map_buffer) or leave it unbound (unbound): unbound maps get
/// one owned, zeroed, 64-byte aligned allocation here.
///
/// A copy owns its values (nested objects included). A move keeps the storage, owned or mapped.
/// Assigning into a set that maps caller buffers (itself or a nested object) checks that every
/// parameter has this set's shape, naming the first that does not, before it writes any value
/// through; assigning into an owning set takes the other's shapes.
template <class Slots>
class ParameterSet : public Slots {
 public:
  using Scalar = typename Slots::Scalar;

  /// Slots built from `args`; its unbound maps then get owned, zeroed storage.
  template <class... Args>
  explicit ParameterSet(std::in_place_t, Args&&... args) : Slots(std::forward<Args>(args)...) {
    bind_unbound();
  }

  ParameterSet(const ParameterSet& other) : Slots(other) { own_copies(); }

  ParameterSet(ParameterSet&& other) noexcept
      : Slots(std::move(other)),
        storage_(std::move(other.storage_)),
        maps_caller_(other.maps_caller_) {
    other.forget_maps();
  }

  ParameterSet& operator=(const ParameterSet& other) {
    if (this == &other) return *this;
    if (!maps_caller_buffers()) return *this = ParameterSet(other);
    require_same_shapes(other, Slots::kName + std::string("::"));
    // A map's assignment copies the values; a nested object's is its own (this same rule).
    for_each_slot([&](auto slot) { this->*slot.member = other.*slot.member; });
    return *this;
  }

  /// Takes over `other`'s storage, unless this maps caller buffers: then it copies the values in.
  ParameterSet& operator=(ParameterSet&& other) {
    if (this == &other) return *this;
    if (maps_caller_buffers()) return *this = static_cast<const ParameterSet&>(other);
    for_each_slot([&](auto slot) {
      auto& mine = this->*slot.member;
      auto& theirs = other.*slot.member;
      if constexpr (detail::IsParameterMap<std::decay_t<decltype(mine)>>::value)
        detail::reseat(mine, theirs.data(), theirs.rows(), theirs.cols());
      else
        mine = std::move(theirs);
    });
    storage_ = std::move(other.storage_);
    maps_caller_ = other.maps_caller_;
    other.forget_maps();
    return *this;
  }

  ~ParameterSet() = default;

  /// Whether some parameter views a caller's buffer (mapped, or assigned one by a move).
  bool maps_caller_buffers() const noexcept {
    bool mapped = maps_caller_;
    for_each_slot([&](auto slot) {
      const auto& member = this->*slot.member;
      if constexpr (!detail::IsParameterMap<std::decay_t<decltype(member)>>::value)
        mapped = mapped || member.maps_caller_buffers();
    });
    return mapped;
  }

  /// Throws moe::Error naming the first parameter (`prefix` + its slot path) whose shape differs
  /// from other's.
  void require_same_shapes(const ParameterSet& other, const std::string& prefix) const {
    for_each_slot([&](auto slot) {
      const auto& mine = this->*slot.member;
      const auto& theirs = other.*slot.member;
      const std::string name = prefix + slot.name;
      if constexpr (detail::IsParameterMap<std::decay_t<decltype(mine)>>::value) {
        if (mine.rows() != theirs.rows() || mine.cols() != theirs.cols())
          detail::fail((name + " (assigned into caller buffers)").c_str(),
                       detail::concat("shape [", mine.rows(), ", ", mine.cols(), "]"),
                       detail::concat("[", theirs.rows(), ", ", theirs.cols(), "]"));
      } else {
        mine.require_same_shapes(theirs, name + ".");
      }
    });
  }

 private:
  /// f(slot) for every slot of Slots, in order.
  template <class F>
  static void for_each_slot(F&& f) {
    std::apply([&](auto... slots) { (f(slots), ...); }, Slots::slots());
  }

  /// Whole cache lines per parameter, so each starts aligned.
  static Index padded(Index size) {
    constexpr Index kPerLine = static_cast<Index>(kBufferAlignment / sizeof(Scalar));
    return (size + kPerLine - 1) / kPerLine * kPerLine;
  }

  /// Gives every unbound map (null data, non-empty) a zeroed segment of one allocation; a map that
  /// came with data views a caller's buffer.
  void bind_unbound() {
    Index total = 0;
    for_each_map([&](auto& map) {
      if (map.data() != nullptr)
        maps_caller_ = true;
      else
        total += padded(map.size());
    });
    storage_ = AlignedBuffer<Scalar>(static_cast<std::size_t>(total), Scalar(0));
    Scalar* next = storage_.data();
    for_each_map([&](auto& map) {
      if (map.data() != nullptr || map.size() == 0) return;
      detail::reseat(map, next, map.rows(), map.cols());
      next += padded(map.size());
    });
  }

  /// After a member-wise copy: this set's maps point at the original's storage (or buffers); they
  /// get one allocation of their own holding the same values.
  void own_copies() {
    Index total = 0;
    for_each_map([&](auto& map) { total += padded(map.size()); });
    storage_ = AlignedBuffer<Scalar>(static_cast<std::size_t>(total));
    Scalar* next = storage_.data();
    for_each_map([&](auto& map) {
      if (map.size() == 0) return detail::reseat(map, nullptr, map.rows(), map.cols());
      const Scalar* values = map.data();
      std::copy(values, values + map.size(), next);
      detail::reseat(map, next, map.rows(), map.cols());
      next += padded(map.size());
    });
    maps_caller_ = false;
  }

  /// Empties a moved-from set's maps: their storage went with the move.
  void forget_maps() noexcept {
    for_each_map([](auto& map) { detail::reseat(map, nullptr, 0, 0); });
    maps_caller_ = false;
  }

  template <class F>
  void for_each_map(F&& f) {
    for_each_slot([&](auto slot) {
      auto& member = this->*slot.member;
      if constexpr (detail::IsParameterMap<std::decay_t<decltype(member)>>::value) f(member);
    });
  }

  AlignedBuffer<Scalar> storage_;
  bool maps_caller_ = false;  ///< some map of this set (not of a nested one) views a caller buffer
};

}  // namespace moe
