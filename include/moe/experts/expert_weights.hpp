// Per-expert FFN parameters, stored expert-major so each expert's matrix is one contiguous block.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/experts/activation.hpp"

namespace moe {

struct ExpertFFNConfig {
  Index num_experts = 8;
  Index hidden = 0;      ///< d, the token width
  Index ffn_hidden = 0;  ///< f, each expert's hidden width
  Activation activation = Activation::gelu;
  bool bias = false;  ///< b1 [E, f], b3 [E, f] (gated), b2 [E, d]
  /// Width of the column blocks the hidden activation is tiled in (execution only: results do not
  /// depend on it beyond rounding). MegaBlocks uses 128.
  Index block_cols = 128;
};

/// Checks an ExpertFFNConfig; every message names the field.
inline void validate(const ExpertFFNConfig& c) {
  require(c.num_experts >= 1, "ExpertFFNConfig::num_experts", ">= 1", c.num_experts);
  require(c.hidden >= 1, "ExpertFFNConfig::hidden", ">= 1", c.hidden);
  require(c.ffn_hidden >= 1, "ExpertFFNConfig::ffn_hidden", ">= 1", c.ffn_hidden);
  require(c.block_cols >= 1, "ExpertFFNConfig::block_cols", ">= 1", c.block_cols);
}

/// W1 [E, d, f] as [E*d, f], W3 [E, d, f] (gated only), W2 [E, f, d] as [E*f, d]; biases when
/// config.bias. Expert e computes y = act(x W1[e] + b1[e]) W2[e] + b2[e] (x a row vector).
/// The same struct holds the gradients (ExpertGradients).
template <class S>
struct ExpertWeights {
  ExpertWeights() = default;

  /// Zero-initialized parameters with the config's shapes.
  explicit ExpertWeights(const ExpertFFNConfig& c) : config(c) {
    validate(c);
    const Index e = c.num_experts, d = c.hidden, f = c.ffn_hidden;
    const bool gated = is_gated(c.activation);
    w1 = RowMatrix<S>::Zero(e * d, f);
    w3 = RowMatrix<S>::Zero(gated ? e * d : 0, gated ? f : 0);
    w2 = RowMatrix<S>::Zero(e * f, d);
    b1 = RowMatrix<S>::Zero(c.bias ? e : 0, c.bias ? f : 0);
    b3 = RowMatrix<S>::Zero(c.bias && gated ? e : 0, c.bias && gated ? f : 0);
    b2 = RowMatrix<S>::Zero(c.bias ? e : 0, c.bias ? d : 0);
  }

  /// Every parameter N(0, stddev) from a counter RNG: the same values at any thread count.
  void init_weights(std::uint64_t seed, double stddev) {
    std::vector<Index> all(static_cast<std::size_t>(config.num_experts));
    for (Index e = 0; e < config.num_experts; ++e) all[static_cast<std::size_t>(e)] = e;
    init_weights(seed, stddev, all, config.num_experts);
  }

  /// This object's expert i gets the values init_weights(seed, stddev) gives expert
  /// global_ids[i] of a model of `total_experts` experts, so an expert-parallel shard starts
  /// exactly as the same experts of the whole model. Positions in the counter stream are those of
  /// the whole model: parameters in the order w1, w3, w2, b1, b3, b2, each expert one block.
  void init_weights(std::uint64_t seed, double stddev, const std::vector<Index>& global_ids,
                    Index total_experts) {
    const Index local = config.num_experts;
    require(static_cast<Index>(global_ids.size()) == local, "global_ids",
            detail::concat(local, " ids (config.num_experts)"), global_ids.size());
    for (Index g : global_ids)
      require(g >= 0 && g < total_experts, "global_ids",
              detail::concat("ids in [0, ", total_experts, ")"), g);
    const CounterRng rng = make_rng(seed, RandomStream::init);
    std::uint64_t first = 0;  // position of the parameter's first value in the whole model
    for (RowMatrix<S>* p : {&w1, &w3, &w2, &b1, &b3, &b2}) {
      const Index block = p->size() / local;
      for (Index i = 0; i < local; ++i) {
        const std::uint64_t start =
            first + static_cast<std::uint64_t>(global_ids[static_cast<std::size_t>(i)] * block);
        S* values = p->data() + i * block;
        for (Index v = 0; v < block; ++v)
          values[v] = static_cast<S>(stddev * rng.normal(start + static_cast<std::uint64_t>(v)));
      }
      first += static_cast<std::uint64_t>(block * total_experts);
    }
  }

  ExpertFFNConfig config;
  RowMatrix<S> w1;  ///< [E*d, f]
  RowMatrix<S> w3;  ///< [E*d, f] for gated activations, else empty
  RowMatrix<S> w2;  ///< [E*f, d]
  RowMatrix<S> b1;  ///< [E, f] when config.bias
  RowMatrix<S> b3;  ///< [E, f] when config.bias and gated
  RowMatrix<S> b2;  ///< [E, d] when config.bias
};

/// Gradients of the loss with respect to each ExpertWeights member, same shapes.
template <class S>
using ExpertGradients = ExpertWeights<S>;

namespace detail {

/// Checks that `w` matches its own config (shapes may have been edited by hand).
template <class S>
void require_weights(const ExpertWeights<S>& w, const char* argument) {
  validate(w.config);
  const ExpertFFNConfig& c = w.config;
  const Index e = c.num_experts, d = c.hidden, f = c.ffn_hidden;
  const bool gated = is_gated(c.activation);
  const std::string name(argument);
  require_shape(w.w1, (name + ".w1").c_str(), e * d, f);
  require_shape(w.w3, (name + ".w3").c_str(), gated ? e * d : 0, gated ? f : 0);
  require_shape(w.w2, (name + ".w2").c_str(), e * f, d);
  require_shape(w.b1, (name + ".b1").c_str(), c.bias ? e : 0, c.bias ? f : 0);
  require_shape(w.b3, (name + ".b3").c_str(), c.bias && gated ? e : 0, c.bias && gated ? f : 0);
  require_shape(w.b2, (name + ".b2").c_str(), c.bias ? e : 0, c.bias ? d : 0);
}

}  // namespace detail

}  // namespace moe
