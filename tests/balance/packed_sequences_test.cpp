// The sequence-level aux loss over packed sequences of varying length (cu_seqlens): hand-computed
// values, a per-sequence plain-loop reference, Megatron's padded batch, the fixed-length loss when
// every sequence has the same length, and central finite differences for the gradients.
#include <vector>

#include "moe/balance/load_balancing_loss.hpp"
#include "moe/core/random.hpp"
#include "support/balance_reference.hpp"
#include "support/catch.hpp"
#include "support/finite_difference.hpp"

namespace {

using moe::ExpertIdMatrix;
using moe::Index;
using moe::IndexVector;
using moe::SequenceNormalization;
using moe::TokenMask;
using Mat = moe::RowMatrix<double>;

constexpr double kTight = 1e-12;
constexpr double kFdTolerance = 1e-6;
constexpr SequenceNormalization kBoth[] = {SequenceNormalization::own_length,
                                           SequenceNormalization::mean_length};

Mat random_logits(Index rows, Index cols, std::uint64_t seed) {
  const moe::CounterRng rng(seed, 13);
  Mat m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal(static_cast<std::uint64_t>(i));
  return m;
}

moe::ref::Mat ref_rows(const Mat& m) {
  moe::ref::Mat out(static_cast<std::size_t>(m.rows()));
  for (Index r = 0; r < m.rows(); ++r) out[r].assign(m.row(r).data(), m.row(r).data() + m.cols());
  return out;
}

/// Scores the reference reads: softmax, or sigmoid divided by its row sum, by plain loops.
moe::ref::Mat ref_scores(const Mat& z, bool sigmoid) {
  moe::ref::Mat s = ref_rows(z);
  for (auto& row : s) {
    if (!sigmoid) {
      row = moe::ref::softmax(row);
      continue;
    }
    double sum = 0;
    for (double& v : row) sum += (v = moe::ref::sigmoid(v));
    for (double& v : row) v /= sum;
  }
  return s;
}

std::vector<std::vector<int>> ref_top_k(const moe::ref::Mat& s, int k) {
  std::vector<std::vector<int>> out;
  for (const auto& row : s) out.push_back(moe::ref::topk(row, k));
  return out;
}

IndexVector offsets(std::initializer_list<Index> v) {
  IndexVector cu(static_cast<Index>(v.size()));
  Index i = 0;
  for (Index o : v) cu(i++) = o;
  return cu;
}

std::vector<long> to_ref(const IndexVector& cu) {
  return std::vector<long>(cu.data(), cu.data() + cu.size());
}

std::vector<bool> to_ref(const TokenMask& m) {
  return std::vector<bool>(m.data(), m.data() + m.size());
}

moe::AuxLossConfig with(moe::AuxLossConfig c, SequenceNormalization n) {
  c.sequence_normalization = n;
  return c;
}

}  // namespace

TEST_CASE("packed aux loss: hand-computed value and gradient, both normalizations",
          "[balance][aux][packed]") {
  // Sequence A = token 0 (-> expert 0), sequence B = tokens 1, 2 (-> expert 1); E = 2, k = 1.
  Mat s(3, 2);
  s << 0.75, 0.25, 0.4, 0.6, 0.2, 0.8;
  ExpertIdMatrix ids(3, 1);
  ids << 0, 1, 1;
  auto c = moe::aux_presets::switch_transformer(0.1);
  c.divide_by_top_k = true;
  // Empty sequences (repeated offsets) are skipped: both offset vectors give the same loss.
  for (const IndexVector& cu : {offsets({0, 1, 3}), offsets({0, 0, 1, 1, 3, 3})}) {
    SECTION("own length: L_A = 2 * 0.75, L_B = 2 * (2/2) * (1.4/2)") {
      const auto out = moe::load_balancing_loss_packed(s, ids, c, cu);
      CHECK(out.value == Approx(0.1 * (1.5 + 1.4) / 2).epsilon(1e-14));
      Mat expected(3, 2);  // a E c_be / (k n_b^2 S)
      expected << 0.1, 0, 0, 0.05, 0, 0.05;
      CHECK(moe::test::relative_error(out.grad, expected) < kTight);
    }
    SECTION("mean length 3/2: L_A = 2 (2/3)(1/2), L_B = 2 (4/3)(14/15)") {
      const auto out =
          moe::load_balancing_loss_packed(s, ids, with(c, SequenceNormalization::mean_length), cu);
      CHECK(out.value == Approx(0.1 * (2.0 / 3 + 112.0 / 45) / 2).epsilon(1e-14));
      Mat expected(3, 2);  // a E c_be / (k (3/2)^2 S)
      expected << 2.0 / 45, 0, 0, 4.0 / 45, 0, 4.0 / 45;
      CHECK(moe::test::relative_error(out.grad, expected) < kTight);
    }
  }
}

TEST_CASE("packed aux loss: Megatron and DeepSeek-V3 forms against the per-sequence reference",
          "[balance][aux][packed]") {
  const Index T = 17, E = 6;
  const int k = 2;
  const Mat z = random_logits(T, E, 1);
  const IndexVector cu = offsets({0, 4, 4, 9, 10, 17});  // lengths 4, 0, 5, 1, 7
  TokenMask mask = TokenMask::Ones(T);
  mask(2) = mask(8) = mask(9) = mask(16) = false;  // sequence 3 (row 9) is all padding
  for (bool masked : {false, true}) {
    const TokenMask m = masked ? mask : TokenMask();
    for (SequenceNormalization norm : kBoth) {
      const bool mean = norm == SequenceNormalization::mean_length;
      for (bool sigmoid : {false, true}) {
        INFO("masked " << masked << ", mean_length " << mean << ", sigmoid " << sigmoid);
        const auto fn = sigmoid ? moe::ScoreFunction::sigmoid : moe::ScoreFunction::softmax;
        const auto c = with(moe::aux_presets::megatron_packed_sequence(k, 0.02, fn), norm);
        const auto out = moe::load_balancing_loss_packed_from_logits(z, fn, {}, c, cu, m);
        const auto s = ref_scores(z, sigmoid);
        CHECK(out.value == Approx(moe::ref::packed_seq_aux_loss(s, ref_top_k(s, k), to_ref(cu),
                                                                to_ref(m), k, 0.02, mean))
                               .epsilon(kTight));
        Mat zz = z;
        const Mat numeric = moe::test::numerical_gradient(zz, [&] {
          return moe::load_balancing_loss_packed_from_logits(zz, fn, {}, c, cu, m).value;
        });
        CHECK(moe::test::relative_error(out.grad, numeric) < kFdTolerance);
        for (Index t = 0; t < T; ++t)
          if (!moe::detail::is_real_token(m, t)) CHECK(out.grad.row(t).isZero(0.0));
      }
      // DeepSeek-V3: the caller's (biased) selection, normalized sigmoid scores, dL/d scores.
      const Mat sig = z.unaryExpr([](double v) { return moe::ref::sigmoid(v); });
      Mat biased = sig;
      biased.col(3).array() += 0.4;
      const auto s = ref_rows(biased);
      const auto choices = ref_top_k(s, k);
      ExpertIdMatrix ids(T, k);
      for (Index t = 0; t < T; ++t)
        for (int j = 0; j < k; ++j) ids(t, j) = choices[t][j];
      const auto c = with(moe::aux_presets::deepseek_v3_packed_sequence(k, 1e-3), norm);
      const auto out = moe::load_balancing_loss_packed(sig, ids, c, cu, m);
      CHECK(out.value == Approx(moe::ref::packed_seq_aux_loss(ref_scores(z, true), choices,
                                                              to_ref(cu), to_ref(m), k, 1e-3, mean))
                             .epsilon(kTight));
      Mat ss = sig;
      const Mat numeric = moe::test::numerical_gradient(
          ss, [&] { return moe::load_balancing_loss_packed(ss, ids, c, cu, m).value; });
      CHECK(moe::test::relative_error(out.grad, numeric) < kFdTolerance);
    }
  }
  SECTION("the two normalizations differ for unequal lengths and agree for equal ones") {
    const auto c = moe::aux_presets::megatron_packed_sequence(k);
    const auto own = with(c, SequenceNormalization::own_length);
    const auto sm = moe::ScoreFunction::softmax;
    CHECK(moe::load_balancing_loss_packed_from_logits(z, sm, {}, c, cu).value !=
          Approx(moe::load_balancing_loss_packed_from_logits(z, sm, {}, own, cu).value));
    const Mat z16 = z.topRows(16);
    const IndexVector equal = offsets({0, 4, 8, 12, 16});
    CHECK(moe::load_balancing_loss_packed_from_logits(z16, sm, {}, c, equal).value ==
          Approx(moe::load_balancing_loss_packed_from_logits(z16, sm, {}, own, equal).value)
              .epsilon(kTight));
  }
}

TEST_CASE("packed aux loss: sequences of equal length give the fixed-length loss",
          "[balance][aux][packed]") {
  const int S = 5, B = 3, k = 2;
  const Index E = 4, T = S * B;
  const Mat z = random_logits(T, E, 2);
  const IndexVector cu = offsets({0, 5, 10, 15});
  TokenMask mask = TokenMask::Ones(T);
  mask(1) = mask(7) = mask(8) = false;
  const auto fn = moe::ScoreFunction::softmax;
  for (SequenceNormalization norm : kBoth)
    for (bool masked : {false, true}) {
      INFO("mean_length " << (norm == SequenceNormalization::mean_length) << ", masked " << masked);
      const TokenMask m = masked ? mask : TokenMask();
      SECTION("[B, S] order: the same rows") {
        auto fixed = with(moe::aux_presets::megatron_sequence(k, S, 0.02), norm);
        fixed.layout = moe::SequenceLayout::batch_major;
        const auto packed = moe::load_balancing_loss_packed_from_logits(
            z, fn, {}, with(moe::aux_presets::megatron_packed_sequence(k, 0.02), norm), cu, m);
        const auto expected = moe::load_balancing_loss_from_logits(z, fn, {}, fixed, m);
        CHECK(packed.value == Approx(expected.value).epsilon(kTight));
        CHECK(moe::test::relative_error(packed.grad, expected.grad) < kTight);
      }
      SECTION("[S, B] order: the rows regrouped by sequence") {
        Mat by_sequence(T, E);  // row b * S + i of the pack = row i * B + b of the [S, B] batch
        TokenMask m_by_sequence(m.size());
        for (int i = 0; i < S; ++i)
          for (int b = 0; b < B; ++b) {
            by_sequence.row(b * S + i) = z.row(i * B + b);
            if (masked) m_by_sequence(b * S + i) = m(i * B + b);
          }
        const auto fixed = with(moe::aux_presets::megatron_sequence(k, S, 0.02), norm);
        const auto expected = moe::load_balancing_loss_from_logits(z, fn, {}, fixed, m);
        const auto packed = moe::load_balancing_loss_packed_from_logits(
            by_sequence, fn, {}, with(moe::aux_presets::megatron_packed_sequence(k, 0.02), norm),
            cu, m_by_sequence);
        CHECK(packed.value == Approx(expected.value).epsilon(kTight));
        for (int i = 0; i < S; ++i)
          for (int b = 0; b < B; ++b)
            CHECK(moe::test::relative_error(packed.grad.row(b * S + i),
                                            expected.grad.row(i * B + b)) < kTight);
        // Megatron's own seq_aux_loss over the [S, B] batch, padding mask included.
        if (norm == SequenceNormalization::mean_length)
          CHECK(packed.value ==
                Approx(moe::ref::megatron_seq_aux_loss(ref_rows(z), S, B, k, 0.02, to_ref(m)))
                    .epsilon(kTight));
      }
    }
}

TEST_CASE("packed aux loss: mean_length gives Megatron's loss of the padded batch (PR #6115)",
          "[balance][aux][packed]") {
  // Lengths 2, 5, 3 packed without gaps, against the [5, 3] batch that pads each to 5 tokens.
  const int S = 5, B = 3, k = 2;
  const Index E = 5;
  const std::vector<int> lengths = {2, 5, 3};
  const IndexVector cu = offsets({0, 2, 7, 10});
  const Mat padded = random_logits(S * B, E, 3);  // [S, B] order, row i * B + b
  TokenMask valid(S * B);
  Mat pack(10, E);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < S; ++i) {
      valid(i * B + b) = i < lengths[b];
      if (i < lengths[b]) pack.row(cu(b) + i) = padded.row(i * B + b);
    }
  const auto fn = moe::ScoreFunction::softmax;
  const auto out = moe::load_balancing_loss_packed_from_logits(
      pack, fn, {}, moe::aux_presets::megatron_packed_sequence(k, 0.02), cu);
  CHECK(out.value ==
        Approx(moe::ref::megatron_seq_aux_loss(ref_rows(padded), S, B, k, 0.02, to_ref(valid)))
            .epsilon(kTight));
  auto fixed = moe::aux_presets::megatron_sequence(k, S, 0.02);
  fixed.sequence_normalization = SequenceNormalization::mean_length;
  const auto batch = moe::load_balancing_loss_from_logits(padded, fn, {}, fixed, valid);
  CHECK(out.value == Approx(batch.value).epsilon(kTight));
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < lengths[b]; ++i)
      CHECK(moe::test::relative_error(out.grad.row(cu(b) + i), batch.grad.row(i * B + b)) < kTight);
}

TEST_CASE("packed aux loss: edge cases", "[balance][aux][packed]") {
  const auto c = moe::aux_presets::deepseek_v3_packed_sequence(2);
  SECTION("no tokens, no sequence or only empty ones: value 0") {
    for (const IndexVector& cu : {offsets({0}), offsets({0, 0, 0})}) {
      const auto out = moe::load_balancing_loss_packed(Mat(0, 4), ExpertIdMatrix(0, 2), c, cu);
      CHECK(out.value == 0.0);
      CHECK(out.grad.rows() == 0);
      CHECK(out.grad.cols() == 4);
    }
  }
  SECTION("one sequence is the whole-batch loss") {
    const Mat s = random_logits(6, 4, 4).cwiseAbs();
    ExpertIdMatrix ids(6, 2);
    ids << 0, 1, 1, 2, 2, 3, 3, 0, 0, 2, 1, 3;
    for (SequenceNormalization norm : kBoth) {
      const auto packed = moe::load_balancing_loss_packed(s, ids, with(c, norm), offsets({0, 6}));
      const auto whole = moe::load_balancing_loss(s, ids, c);
      CHECK(packed.value == Approx(whole.value).epsilon(kTight));
      CHECK(moe::test::relative_error(packed.grad, whole.grad) < kTight);
    }
  }
  SECTION("all padding: value 0, zero gradient") {
    const auto out = moe::load_balancing_loss_packed(Mat::Ones(4, 3), ExpertIdMatrix::Zero(4, 1),
                                                     moe::aux_presets::switch_transformer(),
                                                     offsets({0, 1, 4}), TokenMask::Zero(4));
    CHECK(out.value == 0.0);
    CHECK(out.grad.isZero(0.0));
  }
  SECTION("float scores") {
    const Mat s = random_logits(5, 3, 5).cwiseAbs();
    ExpertIdMatrix ids(5, 1);
    ids << 0, 1, 2, 0, 1;
    const auto sw = moe::aux_presets::switch_transformer();
    const auto d = moe::load_balancing_loss_packed(s, ids, sw, offsets({0, 2, 5}));
    const moe::RowMatrix<float> sf = s.cast<float>();
    const auto f = moe::load_balancing_loss_packed(sf, ids, sw, offsets({0, 2, 5}));
    CHECK(f.value == Approx(d.value).epsilon(1e-6));
  }
}
