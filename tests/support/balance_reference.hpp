// Plain-loop transcriptions of each system's balancing loss, written the way the system computes
// it (its own order of sums, its own normalizers), independent of moe/balance.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe::ref {

using Mat = std::vector<std::vector<double>>;

inline Mat zeros(std::size_t r, std::size_t c) { return Mat(r, std::vector<double>(c, 0.0)); }

inline std::vector<double> softmax(const std::vector<double>& z) {
  double m = z[0];
  for (double v : z) m = std::max(m, v);
  std::vector<double> p(z.size());
  double s = 0;
  for (std::size_t i = 0; i < z.size(); ++i) s += (p[i] = std::exp(z[i] - m));
  for (double& v : p) v /= s;
  return p;
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

/// Indices of the k largest entries, largest first, ties to the lower index (selection sort).
inline std::vector<int> topk(const std::vector<double>& v, int k) {
  std::vector<int> out;
  std::vector<bool> used(v.size(), false);
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int e = 0; e < static_cast<int>(v.size()); ++e)
      if (!used[e] && (best < 0 || v[e] > v[best])) best = e;
    used[best] = true;
    out.push_back(best);
  }
  return out;
}

/// Megatron-Core switch_load_balancing_loss_func:
/// sum_e (sum_t probs_te) * tokens_per_expert_e * E * coeff / (topk * T * T).
inline double megatron_switch_loss(const Mat& probs, const std::vector<double>& tokens_per_expert,
                                   double total_tokens, int topk, double coeff) {
  const std::size_t E = tokens_per_expert.size();
  double acc = 0;
  for (std::size_t e = 0; e < E; ++e) {
    double agg = 0;
    for (const auto& row : probs) agg += row[e];
    acc += agg * tokens_per_expert[e];
  }
  return acc * (static_cast<double>(E) * coeff / (topk * total_tokens * total_tokens));
}

/// Megatron aux_loss: probs = softmax(logits) (or sigmoid or sqrtsoftplus / sum), routing map =
/// top-k of probs;
/// with a padding mask, padded rows are zeroed in probs and map, T = sum(map) / k.
/// `score`: 0 softmax, 1 sigmoid, 2 sqrt(softplus) (the last two divided by their row sum).
inline double megatron_aux_loss(const Mat& logits, int k, double coeff, int score,
                                const std::vector<bool>& valid) {
  const std::size_t T = logits.size(), E = logits[0].size();
  Mat probs = zeros(T, E);
  std::vector<double> tpe(E, 0.0);
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<double> s(E);
    if (score != 0) {
      double sum = 0;
      for (std::size_t e = 0; e < E; ++e) {
        const double z = logits[t][e];
        sum += (s[e] = score == 1 ? sigmoid(z) : std::sqrt(std::log1p(std::exp(z))));
      }
      for (double& v : s) v /= sum;
    } else {
      s = softmax(logits[t]);
    }
    if (!valid.empty() && !valid[t]) continue;
    probs[t] = s;
    for (int e : topk(s, k)) tpe[e] += 1;
  }
  double tokens = 0;
  for (double c : tpe) tokens += c;
  tokens /= k;
  return megatron_switch_loss(probs, tpe, tokens, k, coeff);
}

/// Megatron seq_aux_loss: tokens in [S, B] order (row = i * B + b), the scores reshaped to
/// [S, B * E], one loss over the B * E columns with T = S, divided by B. With a padding mask
/// (router.py _apply_seq_aux_loss, moe_utils.py get_tokens_per_expert_and_token_count with
/// topk * B): padded rows zeroed in probs and map, T = sum(map) / (k * B).
inline double megatron_seq_aux_loss(const Mat& logits, int S, int B, int k, double coeff,
                                    const std::vector<bool>& valid = {}) {
  const std::size_t E = logits[0].size();
  Mat probs = zeros(S, B * E);
  std::vector<double> tpe(B * E, 0.0);
  for (int i = 0; i < S; ++i)
    for (int b = 0; b < B; ++b) {
      if (!valid.empty() && !valid[i * B + b]) continue;
      const auto p = softmax(logits[i * B + b]);
      for (std::size_t e = 0; e < E; ++e) probs[i][b * E + e] = p[e];
      for (int e : topk(p, k)) tpe[b * E + e] += 1;
    }
  double T = S;
  if (!valid.empty()) {
    double routed = 0;
    for (double c : tpe) routed += c;
    T = routed / (double(k) * B);
  }
  // num_experts in the function is the real E (the column count is B * E).
  double acc = 0;
  for (std::size_t c = 0; c < B * E; ++c) {
    double agg = 0;
    for (int i = 0; i < S; ++i) agg += probs[i][c];
    acc += agg * tpe[c];
  }
  return acc * (static_cast<double>(E) * coeff / (k * T * T)) / B;
}

/// Packed sequences, one sequence at a time: sequence b is rows [cu[b], cu[b + 1]); its loss is
/// E * sum_e (c_e / (k m)) (sum_t s_te / m) over its real rows, with m its own real-token count
/// or (mean_length) the real tokens of the pack / the number of sequences with rows; the loss is
/// coeff times the mean over the sequences with rows. `scores` are the scores the loss reads,
/// `choices` each row's counted experts.
inline double packed_seq_aux_loss(const Mat& scores, const std::vector<std::vector<int>>& choices,
                                  const std::vector<long>& cu, const std::vector<bool>& valid,
                                  int k, double coeff, bool mean_length) {
  const std::size_t E = scores[0].size();
  auto real = [&](long t) { return valid.empty() || valid[t]; };
  double sequences = 0, real_tokens = 0;
  for (std::size_t b = 0; b + 1 < cu.size(); ++b) {
    if (cu[b + 1] > cu[b]) sequences += 1;
    for (long t = cu[b]; t < cu[b + 1]; ++t) real_tokens += real(t) ? 1 : 0;
  }
  double total = 0;
  for (std::size_t b = 0; b + 1 < cu.size(); ++b) {
    std::vector<double> count(E, 0.0), sum(E, 0.0);
    double n = 0;
    for (long t = cu[b]; t < cu[b + 1]; ++t) {
      if (!real(t)) continue;
      n += 1;
      for (int e : choices[t]) count[e] += 1;
      for (std::size_t e = 0; e < E; ++e) sum[e] += scores[t][e];
    }
    if (n == 0) continue;
    const double m = mean_length ? real_tokens / sequences : n;
    double l = 0;
    for (std::size_t e = 0; e < E; ++e) l += (count[e] / (k * m)) * (sum[e] / m);
    total += static_cast<double>(E) * l;
  }
  return sequences == 0 ? 0.0 : coeff * total / sequences;
}

/// HF load_balancing_loss_func (Mixtral / Qwen): layers concatenated, softmax, top-k,
/// tokens_per_expert [k, E] = masked mean of one_hot, router_prob [E] = masked mean,
/// sum(tokens_per_expert * router_prob) * E (the caller multiplies by the coefficient).
inline double hf_mixtral_loss(const std::vector<Mat>& layers, int k,
                              const std::vector<bool>& mask) {
  const std::size_t E = layers[0][0].size();
  Mat tpe = zeros(k, E);
  std::vector<double> prob(E, 0.0);
  double denom = 0;
  for (const auto& layer : layers)
    for (std::size_t t = 0; t < layer.size(); ++t) {
      const double m = mask.empty() ? 1.0 : (mask[t] ? 1.0 : 0.0);
      const auto p = softmax(layer[t]);
      const auto idx = topk(p, k);
      for (int j = 0; j < k; ++j) tpe[j][idx[j]] += m;
      for (std::size_t e = 0; e < E; ++e) prob[e] += m * p[e];
      denom += m;
    }
  double overall = 0;
  for (int j = 0; j < k; ++j)
    for (std::size_t e = 0; e < E; ++e) overall += (tpe[j][e] / denom) * (prob[e] / denom);
  return overall * static_cast<double>(E);
}

/// HF SwitchTransformers load_balancing_loss_func: router_probs [G, S, E], expert index =
/// argmax(router_mask) (an all-zero row of a dropped token gives 0); E^2 * mean over (G, E) of
/// mean_s(one_hot) * mean_s(probs).
inline double hf_switch_loss(const std::vector<Mat>& probs, const std::vector<Mat>& router_mask) {
  const std::size_t G = probs.size(), S = probs[0].size(), E = probs[0][0].size();
  double total = 0;
  for (std::size_t g = 0; g < G; ++g)
    for (std::size_t e = 0; e < E; ++e) {
      double f = 0, p = 0;
      for (std::size_t s = 0; s < S; ++s) {
        std::size_t arg = 0;
        for (std::size_t j = 1; j < E; ++j)
          if (router_mask[g][s][j] > router_mask[g][s][arg]) arg = j;
        f += (arg == e) ? 1.0 : 0.0;
        p += probs[g][s][e];
      }
      total += (f / S) * (p / S);
    }
  return total / static_cast<double>(G * E) * static_cast<double>(E * E);
}

/// DeepSpeed top2gating: l_aux = mean_e(mean_t gates * mean_t mask1) * E * E, mask1 = top-1.
inline double deepspeed_top2_loss(const Mat& gates) {
  const std::size_t T = gates.size(), E = gates[0].size();
  double l = 0;
  for (std::size_t e = 0; e < E; ++e) {
    double me = 0, ce = 0;
    for (std::size_t t = 0; t < T; ++t) {
      me += gates[t][e];
      ce += (topk(gates[t], 1)[0] == static_cast<int>(e)) ? 1.0 : 0.0;
    }
    l += (me / T) * (ce / T);
  }
  return l / E * E * E;
}

/// DeepSpeed topkgating: l_aux = mean_e(me * ce) * E * E / k, ce over all k choices.
inline double deepspeed_topk_loss(const Mat& gates, int k) {
  const std::size_t T = gates.size(), E = gates[0].size();
  std::vector<double> me(E, 0.0), ce(E, 0.0);
  for (std::size_t t = 0; t < T; ++t) {
    for (std::size_t e = 0; e < E; ++e) me[e] += gates[t][e] / T;
    for (int e : topk(gates[t], k)) ce[e] += 1.0 / T;
  }
  double l = 0;
  for (std::size_t e = 0; e < E; ++e) l += me[e] * ce[e];
  return l / E * E * E / k;
}

/// DeepSeek MoEGate seq_aux form with V3's normalized affinities: per sequence b,
/// ce_be = count_be / (S * k / E), loss = alpha * mean_b sum_e ce_be * mean_s s'_bse.
inline double deepseek_seq_loss(const std::vector<Mat>& sigmoid_scores,
                                const std::vector<std::vector<std::vector<int>>>& topk_idx, int k,
                                double alpha) {
  const std::size_t B = sigmoid_scores.size(), S = sigmoid_scores[0].size(),
                    E = sigmoid_scores[0][0].size();
  double total = 0;
  for (std::size_t b = 0; b < B; ++b) {
    std::vector<double> ce(E, 0.0), mean(E, 0.0);
    for (std::size_t s = 0; s < S; ++s) {
      for (int e : topk_idx[b][s]) ce[e] += 1;
      double sum = 0;
      for (double v : sigmoid_scores[b][s]) sum += v;
      for (std::size_t e = 0; e < E; ++e) mean[e] += sigmoid_scores[b][s][e] / sum / S;
    }
    double l = 0;
    for (std::size_t e = 0; e < E; ++e) l += ce[e] / (double(S) * k / E) * mean[e];
    total += l;
  }
  return alpha * total / B;
}

/// Megatron z_loss_func with a padding mask: sum_valid logsumexp^2 / max(n_valid, 1) * coeff.
inline double z_loss(const Mat& logits, const std::vector<bool>& valid, double coeff) {
  double sum = 0;
  double n = 0;
  for (std::size_t t = 0; t < logits.size(); ++t) {
    if (!valid.empty() && !valid[t]) continue;
    double s = 0;
    for (double v : logits[t]) s += std::exp(v);
    sum += std::log(s) * std::log(s);
    n += 1;
  }
  return sum / std::max(n, 1.0) * coeff;
}

/// cv_squared of the reference PyTorch port: x.var() / (x.mean()^2 + 1e-10), 0 for one entry.
inline double cv_squared(const std::vector<double>& x, bool unbiased) {
  if (x.size() <= 1) return 0.0;
  double mean = 0;
  for (double v : x) mean += v / x.size();
  double var = 0;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= unbiased ? (x.size() - 1.0) : double(x.size());
  return var / (mean * mean + 1e-10);
}

/// _prob_in_top_k of the reference port, summed over tokens: the smooth load of each expert.
inline std::vector<double> smooth_load(const Mat& clean, const Mat& noisy, const Mat& stddev,
                                       int k) {
  const std::size_t E = clean[0].size();
  std::vector<double> load(E, 0.0);
  for (std::size_t t = 0; t < clean.size(); ++t) {
    const auto top = topk(noisy[t], k + 1);
    const double if_in = noisy[t][top[k]], if_out = noisy[t][top[k - 1]];
    for (std::size_t e = 0; e < E; ++e) {
      const double thr = noisy[t][e] > if_in ? if_in : if_out;
      load[e] += 0.5 * std::erfc(-((clean[t][e] - thr) / stddev[t][e]) / std::sqrt(2.0));
    }
  }
  return load;
}

/// One aux-loss-free update: e_i = mean(load) - load_i; rule 0: b += u sign(e) (paper, Megatron);
/// 1: the same minus its mean (torchtitan); 2: b += u e / mean(load).
inline std::vector<double> bias_update(std::vector<double> bias, const std::vector<double>& load,
                                       double u, int rule) {
  double mean = 0;
  for (double c : load) mean += c / load.size();
  std::vector<double> delta(load.size());
  for (std::size_t i = 0; i < load.size(); ++i) {
    const double e = mean - load[i];
    delta[i] = rule == 2 ? u * e / mean : u * (e > 0 ? 1.0 : (e < 0 ? -1.0 : 0.0));
  }
  if (rule == 1) {
    double m = 0;
    for (double d : delta) m += d / delta.size();
    for (double& d : delta) d -= m;
  }
  for (std::size_t i = 0; i < bias.size(); ++i) bias[i] += delta[i];
  return bias;
}

}  // namespace moe::ref
