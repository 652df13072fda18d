// Expert weights in bfloat16 for compute: a copy of float (or double) master weights rounded to
// bf16 in the panel layout of the bf16 products, as mixed-precision training keeps one (Megatron's
// bf16 params next to its fp32 main params) and as a float checkpoint is served in bf16.
#pragma once

#include <cstddef>

#include "moe/core/aligned_buffer.hpp"
#include "moe/core/bfloat16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/kernels/bf16_product.hpp"
#include "moe/kernels/parallel.hpp"

namespace moe {

/// Which bf16 copies of the weights a Bf16ExpertWeights holds.
enum class Bf16Copies {
  forward,  ///< W1, W3, W2 as the forward reads them: 2 bytes per weight
  training  ///< and their transposes, which the backward's dX and dA read: 4 bytes per weight
};

/// bf16 copies of an ExpertWeights' matrices, each expert's W1[e] and W3[e] as [d, f] bf16 panels
/// and W2[e] as [f, d] (kernels::Bf16Panels), rounded to nearest even; the biases stay float, as
/// they are added to float sums. Made from the master weights, and refresh() after each optimizer
/// step rounds them again: the bf16 forward reads only this copy, the master weights take the
/// gradients. Holds 2 bytes per weight (half a float copy), and with Bf16Copies::training the
/// transposes the backward reads too (W1[e]^T, W3[e]^T as [f, d], W2[e]^T as [d, f]).
class Bf16ExpertWeights {
 public:
  /// No experts (config().num_experts == -1): no forward takes it.
  Bf16ExpertWeights() = default;

  /// The bf16 copy of `master`, with the transposes the backward needs when `copies` is training.
  template <class S>
  explicit Bf16ExpertWeights(const ExpertWeights<S>& master,
                             Bf16Copies copies = Bf16Copies::forward)
      : copies_(copies) {
    refresh(master);
  }

  /// Copies own their panels.
  Bf16ExpertWeights(const Bf16ExpertWeights& other)
      : copies_(other.copies_),
        config_(other.config_),
        up_(other.up_),
        down_(other.down_),
        w1_(other.w1_.copy()),
        w3_(other.w3_.copy()),
        w2_(other.w2_.copy()),
        w1t_(other.w1t_.copy()),
        w3t_(other.w3t_.copy()),
        w2t_(other.w2t_.copy()),
        b1_(other.b1_),
        b3_(other.b3_),
        b2_(other.b2_) {}
  Bf16ExpertWeights(Bf16ExpertWeights&&) noexcept = default;
  Bf16ExpertWeights& operator=(const Bf16ExpertWeights& other) {
    if (this != &other) *this = Bf16ExpertWeights(other);
    return *this;
  }
  Bf16ExpertWeights& operator=(Bf16ExpertWeights&&) noexcept = default;

  /// Rounds `master` into this copy again (its memory kept when the shapes are unchanged): after
  /// each optimizer step of mixed-precision training. Costs one pass over the weights
  /// (README: bf16 performance).
  template <class S>
  void refresh(const ExpertWeights<S>& master) {
    detail::require_weights(master, "master");
    const ExpertFFNConfig& c = master.config;
    up_ = kernels::Bf16Panels{c.hidden, c.ffn_hidden};
    down_ = kernels::Bf16Panels{c.ffn_hidden, c.hidden};
    const bool gated = is_gated(c.activation);
    const auto resize = [&](AlignedBuffer<bf16>& buffer, Index size) {
      if (static_cast<Index>(buffer.size()) != size)
        buffer = AlignedBuffer<bf16>(static_cast<std::size_t>(size));
    };
    const bool transposes = copies_ == Bf16Copies::training;
    resize(w1_, c.num_experts * up_.size());
    resize(w3_, gated ? c.num_experts * up_.size() : 0);
    resize(w2_, c.num_experts * down_.size());
    // W1[e]^T and W3[e]^T have W2[e]'s shape [f, d], W2[e]^T has W1[e]'s [d, f].
    resize(w1t_, transposes ? c.num_experts * down_.size() : 0);
    resize(w3t_, transposes && gated ? c.num_experts * down_.size() : 0);
    resize(w2t_, transposes ? c.num_experts * up_.size() : 0);
    const Index d = c.hidden, f = c.ffn_hidden;
    // One item per expert and matrix, spread over the threads: (source, its row stride, whether
    // transposed, the panels' shape, the destination).
    const Index per_expert = 6;
    kernels::parallel_items(c.num_experts * per_expert, [&](Index item) {
      const Index e = item / per_expert;
      switch (item % per_expert) {
        case 0:
          return kernels::pack_bf16_panels(master.w1.data() + e * d * f, f, false, up_,
                                           panels_of(w1_, e, up_));
        case 1:
          if (!gated) return;
          return kernels::pack_bf16_panels(master.w3.data() + e * d * f, f, false, up_,
                                           panels_of(w3_, e, up_));
        case 2:
          return kernels::pack_bf16_panels(master.w2.data() + e * f * d, d, false, down_,
                                           panels_of(w2_, e, down_));
        case 3:
          if (!transposes) return;
          return kernels::pack_bf16_panels(master.w1.data() + e * d * f, f, true, down_,
                                           panels_of(w1t_, e, down_));
        case 4:
          if (!transposes || !gated) return;
          return kernels::pack_bf16_panels(master.w3.data() + e * d * f, f, true, down_,
                                           panels_of(w3t_, e, down_));
        default:
          if (!transposes) return;
          return kernels::pack_bf16_panels(master.w2.data() + e * f * d, d, true, up_,
                                           panels_of(w2t_, e, up_));
      }
    });
    b1_ = master.b1.template cast<float>();
    b3_ = master.b3.template cast<float>();
    b2_ = master.b2.template cast<float>();
    config_ = c;
  }

  /// The same, holding `copies` from now on.
  template <class S>
  void refresh(const ExpertWeights<S>& master, Bf16Copies copies) {
    copies_ = copies;
    refresh(master);
  }

  /// The master weights' config (num_experts -1 before any).
  const ExpertFFNConfig& config() const noexcept { return config_; }

  /// Panels of W1[e] and W3[e] ([d, f]) and of W2[e] ([f, d]).
  const kernels::Bf16Panels& up_panels() const noexcept { return up_; }
  const kernels::Bf16Panels& down_panels() const noexcept { return down_; }

  const bf16* w1(Index e) const noexcept { return w1_.data() + e * up_.size(); }
  const bf16* w3(Index e) const noexcept { return w3_.data() + e * up_.size(); }
  const bf16* w2(Index e) const noexcept { return w2_.data() + e * down_.size(); }

  /// Which copies this holds.
  Bf16Copies copies() const noexcept { return copies_; }
  /// Panels of W1[e]^T and W3[e]^T ([f, d]: down_panels()) and of W2[e]^T ([d, f]: up_panels());
  /// with Bf16Copies::training only.
  const bf16* w1t(Index e) const noexcept { return w1t_.data() + e * down_.size(); }
  const bf16* w3t(Index e) const noexcept { return w3t_.data() + e * down_.size(); }
  const bf16* w2t(Index e) const noexcept { return w2t_.data() + e * up_.size(); }

  /// The biases in float ([E, f], [E, f], [E, d]; empty without config().bias).
  const RowMatrix<float>& b1() const noexcept { return b1_; }
  const RowMatrix<float>& b3() const noexcept { return b3_; }
  const RowMatrix<float>& b2() const noexcept { return b2_; }

  /// Bytes of the forward's bf16 weights of one expert (the biases aside): what a decode step
  /// reads of each active expert. The training copies hold twice as much.
  std::size_t bytes_per_expert() const noexcept {
    const Index matrices = is_gated(config_.activation) ? 2 : 1;
    return static_cast<std::size_t>(matrices * up_.size() + down_.size()) * sizeof(bf16);
  }

 private:
  /// Expert e's panels in `buffer`.
  static bf16* panels_of(AlignedBuffer<bf16>& buffer, Index e, const kernels::Bf16Panels& shape) {
    return buffer.data() + e * shape.size();
  }

  Bf16Copies copies_ = Bf16Copies::forward;
  ExpertFFNConfig config_{-1};
  kernels::Bf16Panels up_, down_;
  AlignedBuffer<bf16> w1_, w3_, w2_, w1t_, w3t_, w2t_;
  RowMatrix<float> b1_, b3_, b2_;
};

}  // namespace moe
