// The auxiliary-loss-free balancer (Wang et al. 2024, DeepSeek-V3): a per-expert bias added to the
// scores for selection only, nudged once per optimizer step toward the under-loaded experts.
#pragma once

#include <cmath>
#include <istream>
#include <limits>
#include <map>
#include <ostream>
#include <string>

#include "moe/balance/detail/counting.hpp"
#include "moe/balance/detail/scores.hpp"
#include "moe/balance/token_mask.hpp"
#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

/// How the step's load error e_i = mean load - load_i becomes a bias change.
enum class BiasUpdateRule {
  sign,           ///< u sign(e_i): the paper, DeepSeek-V3 and Megatron-Core
  centered_sign,  ///< u sign(e_i) minus its mean over experts, so sum(b) stays put (torchtitan)
  proportional,   ///< u e_i / mean load: the paper's proportional variant, in relative units
};

struct BiasBalancerOptions {
  double update_rate = 1e-3;  ///< u
  BiasUpdateRule rule = BiasUpdateRule::sign;
};

/// What a checkpoint keeps: the options and the bias after `steps` updates.
template <class S>
struct BiasBalancerState {
  BiasBalancerOptions options;
  Index steps = 0;
  Vector<S> bias;
};

/// b_i <- b_i + u sign(mean_j load_j - load_i), once per optimizer step (Wang et al. 2024,
/// DeepSeek-V3, Megatron-Core moe_router_enable_expert_bias). Loads are the routed choices kept
/// after dropping, padding excluded, summed over the step's micro-batches, each counted once.
/// The bias is kept in S (float for a float router, double for a double one), apart from the
/// unbiased scores; it feeds Router::selection_bias and never enters the gate weights.
template <class S>
class BiasBalancer {
 public:
  explicit BiasBalancer(Index num_experts, BiasBalancerOptions options = BiasBalancerOptions())
      : options_(options) {
    require(num_experts >= 1, "num_experts", ">= 1", num_experts);
    check_options(options_);
    bias_ = Vector<S>::Zero(num_experts);
  }

  Index num_experts() const noexcept { return bias_.size(); }

  /// Counts the routed experts of micro-batch `micro_batch` of this step. Counting the same
  /// micro-batch again (a recomputed forward) replaces its counts instead of adding to them.
  void accumulate(Index micro_batch, const ExpertIdMatrix& expert_ids,
                  const TokenMask& mask = TokenMask(), const ChoiceMask& kept = ChoiceMask()) {
    require(micro_batch >= 0, "micro_batch", ">= 0", micro_batch);
    detail::require_expert_ids(expert_ids, expert_ids.rows(), expert_ids.cols(), num_experts(),
                               "expert_ids");
    detail::require_token_mask(mask, expert_ids.rows(), "mask");
    detail::require_choice_mask(kept, expert_ids.rows(), expert_ids.cols(), "kept");
    Eigen::Matrix<Index, 1, Eigen::Dynamic> counts =
        Eigen::Matrix<Index, 1, Eigen::Dynamic>::Zero(num_experts());
    detail::add_expert_counts(
        expert_ids, expert_ids.cols(), mask, kept, detail::DropRule::excluded,
        [](Index) { return Index(0); }, counts);
    pending_[micro_batch] = counts.transpose();
  }

  /// Micro-batch counts already formed elsewhere, e.g. summed across data-parallel ranks.
  void accumulate_counts(Index micro_batch, const IndexVector& counts) {
    require(micro_batch >= 0, "micro_batch", ">= 0", micro_batch);
    require(counts.size() == num_experts(), "counts",
            detail::concat(num_experts(), " entries (one per expert)"), counts.size());
    require((counts.array() >= 0).all(), "counts", "non-negative counts", "a negative count");
    pending_[micro_batch] = counts;
  }

  /// Loads counted so far in this step.
  IndexVector pending_load() const {
    IndexVector load = IndexVector::Zero(num_experts());
    for (const auto& entry : pending_) load += entry.second;
    return load;
  }

  Index pending_micro_batches() const noexcept { return static_cast<Index>(pending_.size()); }

  /// Once per optimizer step: updates the bias from the step's loads and clears them. A step with
  /// no counted token leaves the bias unchanged.
  void step() {
    const IndexVector load = pending_load();
    pending_.clear();
    ++steps_;
    const double total = static_cast<double>(load.sum());
    if (!(total > 0)) return;
    const Index E = num_experts();
    const double mean = total / static_cast<double>(E);
    Vector<double> delta(E);
    for (Index i = 0; i < E; ++i) {
      const double error = mean - static_cast<double>(load(i));
      if (options_.rule == BiasUpdateRule::proportional)
        delta(i) = options_.update_rate * error / mean;
      else
        delta(i) = options_.update_rate * static_cast<double>((error > 0) - (error < 0));
    }
    if (options_.rule == BiasUpdateRule::centered_sign) delta.array() -= delta.mean();
    for (Index i = 0; i < E; ++i)
      bias_(i) = static_cast<S>(static_cast<double>(bias_(i)) + delta(i));
  }

  const Vector<S>& bias() const noexcept { return bias_; }
  const BiasBalancerOptions& options() const noexcept { return options_; }
  Index steps() const noexcept { return steps_; }

  /// Router::selection_bias = bias (any router type with that member).
  template <class RouterType>
  void apply_to(RouterType& router) const {
    require(router.selection_bias.size() == bias_.size(), "router.selection_bias",
            detail::concat(bias_.size(), " entries"), router.selection_bias.size());
    router.selection_bias = bias_;
  }

  BiasBalancerState<S> state() const { return {options_, steps_, bias_}; }

  /// Restores a saved state; the counts of an unfinished step are dropped.
  void restore(const BiasBalancerState<S>& state) {
    require(state.bias.size() == num_experts(), "state.bias",
            detail::concat(num_experts(), " entries (one per expert)"), state.bias.size());
    require(state.bias.allFinite(), "state.bias", "finite values", "a non-finite value");
    require(state.steps >= 0, "state.steps", ">= 0", state.steps);
    check_options(state.options);
    options_ = state.options;
    steps_ = state.steps;
    bias_ = state.bias;
    pending_.clear();
  }

  /// Text checkpoint, exact: every value written with max_digits10 digits.
  void save(std::ostream& out) const {
    out.precision(std::numeric_limits<double>::max_digits10);
    out << "moe-bias-balancer 1\n"
        << "experts " << num_experts() << "\n"
        << "rule " << rule_name(options_.rule) << "\n"
        << "update_rate " << options_.update_rate << "\n"
        << "steps " << steps_ << "\n"
        << "bias";
    for (Index i = 0; i < num_experts(); ++i) out << ' ' << static_cast<double>(bias_(i));
    out << "\n";
  }

  /// Reads what save wrote; throws moe::Error on a malformed stream or a different expert count.
  void load(std::istream& in) {
    std::string rule;
    Index version = 0, experts = 0;
    BiasBalancerState<S> s;
    expect(in, "moe-bias-balancer");
    in >> version;
    require(in && version == 1, "checkpoint version", 1, version);
    expect(in, "experts");
    in >> experts;
    require(in && experts == num_experts(), "checkpoint experts", num_experts(), experts);
    expect(in, "rule");
    in >> rule;
    s.options.rule = parse_rule(rule);
    expect(in, "update_rate");
    in >> s.options.update_rate;
    require(static_cast<bool>(in), "checkpoint update_rate", "a number", "unreadable text");
    expect(in, "steps");
    in >> s.steps;
    require(static_cast<bool>(in), "checkpoint steps", "an integer", "unreadable text");
    expect(in, "bias");
    s.bias.resize(experts);
    for (Index i = 0; i < experts; ++i) {
      double value = 0;
      in >> value;
      require(static_cast<bool>(in), "checkpoint bias", detail::concat(experts, " numbers"),
              detail::concat("only ", i));
      s.bias(i) = static_cast<S>(value);
    }
    restore(s);
  }

 private:
  static void check_options(const BiasBalancerOptions& o) {
    require(std::isfinite(o.update_rate) && o.update_rate >= 0.0,
            "BiasBalancerOptions::update_rate", "a finite value >= 0", o.update_rate);
  }

  static const char* rule_name(BiasUpdateRule rule) {
    switch (rule) {
      case BiasUpdateRule::sign:
        return "sign";
      case BiasUpdateRule::centered_sign:
        return "centered_sign";
      case BiasUpdateRule::proportional:
        break;
    }
    return "proportional";
  }

  static BiasUpdateRule parse_rule(const std::string& name) {
    for (BiasUpdateRule r :
         {BiasUpdateRule::sign, BiasUpdateRule::centered_sign, BiasUpdateRule::proportional})
      if (name == rule_name(r)) return r;
    detail::fail("checkpoint rule", "sign, centered_sign or proportional", name);
  }

  static void expect(std::istream& in, const char* key) {
    std::string word;
    in >> word;
    require(static_cast<bool>(in) && word == key, "checkpoint", detail::concat("'", key, "'"),
            in ? "'" + word + "'" : std::string("end of stream"));
  }

  BiasBalancerOptions options_;
  Vector<S> bias_;
  Index steps_ = 0;
  std::map<Index, IndexVector> pending_;
};

}  // namespace moe
