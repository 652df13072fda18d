// Expert weights in column panels for the forward's products: a copy of an ExpertWeights' matrices
// in the layout the register tiles read as one stream (kernels::Panels), made once for inference
// and again after each optimizer step in training. The forward over it has the bits of the forward
// over the master weights; it reads them at the speed of a plain pass where the row-major matrices
// give each 48-column slice from a different page (README: expert FFNs at serving batch sizes).
#pragma once

#include <cstddef>

#include "moe/core/aligned_buffer.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/kernels/panels.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/sparse/panel_ops.hpp"

namespace moe {

/// Each expert's W1[e] and W3[e] ([d, f]) and W2[e] ([f, d]) of master weights in column panels:
/// one more copy of the matrices (the biases are read from the master weights). refresh() after
/// the master weights change: the forward reads only this copy's matrices.
template <class S>
class PackedExpertWeights {
 public:
  /// No experts (config().num_experts == -1): no forward takes it.
  PackedExpertWeights() = default;

  /// The panels of `master`.
  explicit PackedExpertWeights(const ExpertWeights<S>& master) { refresh(master); }

  PackedExpertWeights(const PackedExpertWeights& other)
      : config_(other.config_),
        up_(other.up_),
        down_(other.down_),
        w1_(other.w1_.copy()),
        w3_(other.w3_.copy()),
        w2_(other.w2_.copy()) {}
  PackedExpertWeights(PackedExpertWeights&&) noexcept = default;
  PackedExpertWeights& operator=(const PackedExpertWeights& other) {
    if (this != &other) *this = PackedExpertWeights(other);
    return *this;
  }
  PackedExpertWeights& operator=(PackedExpertWeights&&) noexcept = default;

  /// Lays `master` out in panels again (memory kept when the shapes are unchanged): one read and
  /// one write of the matrices, spread over the threads by expert and matrix.
  void refresh(const ExpertWeights<S>& master) {
    detail::require_weights(master, "master");
    const ExpertFFNConfig& c = master.config;
    const Index d = c.hidden, f = c.ffn_hidden;
    up_ = kernels::Panels{d, f};
    down_ = kernels::Panels{f, d};
    const bool gated = is_gated(c.activation);
    const auto resize = [](AlignedBuffer<S>& buffer, Index size) {
      if (static_cast<Index>(buffer.size()) != size)
        buffer = AlignedBuffer<S>(static_cast<std::size_t>(size));
    };
    resize(w1_, c.num_experts * up_.size());
    resize(w3_, gated ? c.num_experts * up_.size() : 0);
    resize(w2_, c.num_experts * down_.size());
    kernels::parallel_items(c.num_experts * 3, [&](Index item) {
      const Index e = item / 3;
      switch (item % 3) {
        case 0:
          return kernels::pack_panels(master.w1.data() + e * d * f, f, up_,
                                      w1_.data() + e * up_.size());
        case 1:
          if (!gated) return;
          return kernels::pack_panels(master.w3.data() + e * d * f, f, up_,
                                      w3_.data() + e * up_.size());
        default:
          return kernels::pack_panels(master.w2.data() + e * f * d, d, down_,
                                      w2_.data() + e * down_.size());
      }
    });
    config_ = c;
  }

  /// The master weights' config (num_experts -1 before any).
  const ExpertFFNConfig& config() const noexcept { return config_; }

  /// W1, W3 (gated activations) and W2 of every expert as the panel products read them.
  ExpertPanels<S> w1() const noexcept { return {w1_.data(), up_}; }
  ExpertPanels<S> w3() const noexcept { return {w3_.data(), up_}; }
  ExpertPanels<S> w2() const noexcept { return {w2_.data(), down_}; }

  /// Bytes of one expert's matrices in panels: what a decode step reads of each active expert
  /// (f and d rounded up to whole panels).
  std::size_t bytes_per_expert() const noexcept {
    const Index matrices = is_gated(config_.activation) ? 2 : 1;
    return static_cast<std::size_t>(matrices * up_.size() + down_.size()) * sizeof(S);
  }

 private:
  ExpertFFNConfig config_{-1};
  kernels::Panels up_, down_;
  AlignedBuffer<S> w1_, w3_, w2_;
};

namespace detail {

/// Checks that `panels` were made from weights of config `c`.
template <class S>
void require_panels_of(const PackedExpertWeights<S>& panels, const ExpertFFNConfig& c) {
  require(same_shapes(panels.config(), c), "panels",
          "the panels of weights of the same config (PackedExpertWeights(weights))",
          panels.config().num_experts < 0 ? "an empty PackedExpertWeights"
                                          : "the panels of weights of another shape");
}

}  // namespace detail

}  // namespace moe
