// Per-expert FFN parameters, stored expert-major so each expert's matrix is one contiguous block.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/parameters.hpp"
#include "moe/core/random.hpp"
#include "moe/core/types.hpp"
#include "moe/experts/activation.hpp"

namespace moe {

struct ExpertFFNConfig {
  Index num_experts = 8;
  Index hidden = 0;                            ///< d, the token width
  Index ffn_hidden = 0;                        ///< f, each expert's hidden width
  Activation activation = Activation::swiglu;  ///< the layer's default too (MoELayerConfig)
  bool bias = false;                           ///< b1 [E, f], b3 [E, f] (gated), b2 [E, d]
  /// L of the clamped SwiGLUs (swiglu_oai, swiglu_clamped): gpt-oss 7, DeepSeek-V4 its config's
  /// swiglu_limit. Unused by the other activations.
  double swiglu_limit = 7.0;
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
  require(std::isfinite(c.swiglu_limit) && c.swiglu_limit > 0.0, "ExpertFFNConfig::swiglu_limit",
          "a finite value > 0", c.swiglu_limit);
}

/// The caller's buffers an ExpertWeights is mapped over, row-major, with E experts, token width d
/// and hidden width f. A buffer whose size is 0 for the config may stay empty.
template <class S>
struct ExpertBuffers {
  ParameterBuffer<S> w1;  ///< E*d*f elements: [E*d, f]
  ParameterBuffer<S> w3;  ///< E*d*f elements for gated activations, else 0
  ParameterBuffer<S> w2;  ///< E*f*d elements: [E*f, d]
  ParameterBuffer<S> b1;  ///< E*f elements with config.bias, else 0
  ParameterBuffer<S> b3;  ///< E*f elements with config.bias and a gated activation, else 0
  ParameterBuffer<S> b2;  ///< E*d elements with config.bias, else 0
};

/// The parameters of E experts (see ParameterSet): W1 [E, d, f] as [E*d, f], W3 [E, d, f] (gated
/// only), W2 [E, f, d] as [E*f, d]; biases when config.bias. Each expert's matrix is one contiguous
/// block.
template <class S>
struct ExpertSlots {
  using Scalar = S;
  static constexpr const char* kName = "ExpertWeights";

  MatrixMap<S> w1{nullptr, 0, 0};  ///< [E*d, f]
  MatrixMap<S> w3{nullptr, 0, 0};  ///< [E*d, f] for gated activations, else empty
  MatrixMap<S> w2{nullptr, 0, 0};  ///< [E*f, d]
  MatrixMap<S> b1{nullptr, 0, 0};  ///< [E, f] when config.bias
  MatrixMap<S> b3{nullptr, 0, 0};  ///< [E, f] when config.bias and gated
  MatrixMap<S> b2{nullptr, 0, 0};  ///< [E, d] when config.bias

  static constexpr auto slots() {
    return std::make_tuple(slot(&ExpertSlots::w1, "w1"), slot(&ExpertSlots::w3, "w3"),
                           slot(&ExpertSlots::w2, "w2"), slot(&ExpertSlots::b1, "b1"),
                           slot(&ExpertSlots::b3, "b3"), slot(&ExpertSlots::b2, "b2"));
  }

  /// No experts: every parameter empty.
  ExpertSlots() = default;

  /// Unbound parameters of the config's shapes.
  explicit ExpertSlots(const ExpertFFNConfig& c)
      : w1(make(c, 0)),
        w3(make(c, 1)),
        w2(make(c, 2)),
        b1(make(c, 3)),
        b3(make(c, 4)),
        b2(make(c, 5)) {}

  /// Over the caller's buffers.
  ExpertSlots(const ExpertFFNConfig& c, const ExpertBuffers<S>& b, const std::string& name)
      : w1(make(c, 0, &b.w1, name + ".w1")),
        w3(make(c, 1, &b.w3, name + ".w3")),
        w2(make(c, 2, &b.w2, name + ".w2")),
        b1(make(c, 3, &b.b1, name + ".b1")),
        b3(make(c, 4, &b.b3, name + ".b3")),
        b2(make(c, 5, &b.b2, name + ".b2")) {}

 private:
  /// Parameter `which` (slots() order) of config c, over `buffer` or unbound.
  static MatrixMap<S> make(const ExpertFFNConfig& c, int which,
                           const ParameterBuffer<S>* buffer = nullptr,
                           const std::string& name = std::string()) {
    const auto [rows, cols] = shape(c, which);
    return buffer ? map_buffer<MatrixMap<S>>(*buffer, rows, cols, name)
                  : unbound<MatrixMap<S>>(rows, cols);
  }

  /// [rows, cols] of parameter `which` (slots() order) under config c.
  static std::pair<Index, Index> shape(const ExpertFFNConfig& c, int which) {
    const Index e = c.num_experts, d = c.hidden, f = c.ffn_hidden;
    const bool gated = is_gated(c.activation), bias = c.bias;
    switch (which) {
      case 0:
        return {e * d, f};
      case 1:
        return {gated ? e * d : 0, gated ? f : 0};
      case 2:
        return {e * f, d};
      case 3:
        return {bias ? e : 0, bias ? f : 0};
      case 4:
        return {bias && gated ? e : 0, bias && gated ? f : 0};
      default:
        return {bias ? e : 0, bias ? d : 0};
    }
  }
};

/// The experts' parameters as public members (ExpertSlots): Eigen::Map views of fixed shape over
/// one allocation the object owns, or over the caller's buffers (mapped()). Expert e computes
/// y = act(x W1[e] + b1[e]) W2[e] + b2[e] (x a row vector). A copy always owns its values;
/// assigning to an object that maps caller buffers writes the values into those buffers. The same
/// type holds the gradients (ExpertGradients).
template <class S>
struct ExpertWeights : ParameterSet<ExpertSlots<S>> {
  using ExpertSlots<S>::w1;
  using ExpertSlots<S>::w3;
  using ExpertSlots<S>::w2;
  using ExpertSlots<S>::b1;
  using ExpertSlots<S>::b3;
  using ExpertSlots<S>::b2;

  ExpertFFNConfig config;

  /// No experts.
  ExpertWeights() : ParameterSet<ExpertSlots<S>>(std::in_place) {}

  /// Zero-initialized parameters with the config's shapes, owned (one allocation).
  explicit ExpertWeights(const ExpertFFNConfig& c)
      : ParameterSet<ExpertSlots<S>>(std::in_place, validated(c)), config(c) {}

  /// Parameters that are views over the caller's buffers, without copying: writing into a buffer
  /// changes the experts, and w1.data() == buffers.w1.data. Each buffer must hold exactly the size
  /// listed in ExpertBuffers (moe::Error naming it otherwise, or when a needed one is null).
  /// `name` is what errors call `buffers` (e.g. "buffers.shared" inside a layer's buffers).
  static ExpertWeights mapped(const ExpertFFNConfig& c, const ExpertBuffers<S>& buffers,
                              const std::string& name = "buffers") {
    return ExpertWeights(c, buffers, name);
  }

  /// Every parameter N(0, stddev) from a counter RNG: the same values at any thread count.
  void init_weights(std::uint64_t seed, double stddev) {
    require(std::isfinite(stddev) && stddev >= 0, "stddev", "a finite value >= 0", stddev);
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
    require(std::isfinite(stddev) && stddev >= 0, "stddev", "a finite value >= 0", stddev);
    const Index local = config.num_experts;
    require(static_cast<Index>(global_ids.size()) == local, "global_ids",
            detail::concat(local, " ids (config.num_experts)"), global_ids.size());
    for (Index g : global_ids)
      require(g >= 0 && g < total_experts, "global_ids",
              detail::concat("ids in [0, ", total_experts, ")"), g);
    const CounterRng rng = make_rng(seed, RandomStream::init);
    std::uint64_t first = 0;  // position of the parameter's first value in the whole model
    for (MatrixMap<S>* p : {&w1, &w3, &w2, &b1, &b3, &b2}) {
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

 private:
  ExpertWeights(const ExpertFFNConfig& c, const ExpertBuffers<S>& buffers, const std::string& name)
      : ParameterSet<ExpertSlots<S>>(std::in_place, validated(c), buffers, name), config(c) {}

  static const ExpertFFNConfig& validated(const ExpertFFNConfig& c) {
    validate(c);
    return c;
  }
};

/// Gradients of the loss with respect to each ExpertWeights member, same shapes.
template <class S>
using ExpertGradients = ExpertWeights<S>;

namespace detail {

/// Whether two configs give parameters of the same shapes (block_cols only tiles the work).
inline bool same_shapes(const ExpertFFNConfig& a, const ExpertFFNConfig& b) {
  return a.num_experts == b.num_experts && a.hidden == b.hidden && a.ffn_hidden == b.ffn_hidden &&
         a.activation == b.activation && a.bias == b.bias;
}

/// Checks that a context was filled by a forward of weights of config `c`: `ran` is the config the
/// forward recorded (num_experts -1 before any forward).
inline void require_forward_of(const ExpertFFNConfig& ran, const ExpertFFNConfig& c,
                               const char* forward) {
  require(ran.num_experts >= 0, "ctx", concat("a context filled by ", forward), "an empty context");
  require(same_shapes(ran, c), "ctx",
          concat("a context filled by the forward of these weights (E = ", c.num_experts,
                 ", d = ", c.hidden, ", f = ", c.ffn_hidden, ", ", to_string(c.activation),
                 c.bias ? ", bias)" : ")"),
          concat("a context of E = ", ran.num_experts, ", d = ", ran.hidden, ", f = ",
                 ran.ffn_hidden, ", ", to_string(ran.activation), ran.bias ? ", bias" : ""));
}

/// Makes `g` gradients of config `c`: zero-filled when (re)allocated, its memory kept when it has
/// those shapes already (backward overwrites what it keeps); empty when not `wanted`.
template <class S>
void shape_gradients(ExpertGradients<S>& g, const ExpertFFNConfig& c, bool wanted = true) {
  const bool same = g.config.num_experts == c.num_experts && g.config.hidden == c.hidden &&
                    g.config.ffn_hidden == c.ffn_hidden && g.config.activation == c.activation &&
                    g.config.bias == c.bias &&
                    g.w1.size() == c.num_experts * c.hidden * c.ffn_hidden;
  if (wanted && !same) g = ExpertGradients<S>(c);
  if (!wanted && g.w1.size() != 0) g = ExpertGradients<S>();
}

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
