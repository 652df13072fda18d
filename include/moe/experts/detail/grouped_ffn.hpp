// The expert FFN over rows grouped by expert (a BlockSparseTopology), forward and backward through
// the block-sparse products. Shared by the dropless and the capacity FFNs, which differ only in how
// rows get into and out of the grouped buffer.
#pragma once

#include <cstddef>

#include "moe/core/types.hpp"
#include "moe/core/workspace.hpp"
#include "moe/experts/activation.hpp"
#include "moe/experts/expert_weights.hpp"
#include "moe/experts/packed_expert_weights.hpp"
#include "moe/kernels/parallel.hpp"
#include "moe/sparse/ops.hpp"
#include "moe/sparse/panel_ops.hpp"
#include "moe/sparse/topology.hpp"

namespace moe::detail {

/// Workspace slots of the grouped FFN. Forward fills x..y; backward reads them.
enum GroupedSlot : std::size_t { kX = 0, kH1, kH3, kA, kY, kDY, kDH1, kDH3, kDX, kFirstFreeSlot };

/// Saved activations and scratch of one grouped FFN step, all in one Workspace.
template <class S>
struct GroupedBuffers {
  Workspace& ws;
  Index rows, d, f;
  bool gated;

  auto x() { return ws.matrix<S>(kX, rows, d); }
  auto h1() { return ws.matrix<S>(kH1, rows, f); }
  auto h3() { return ws.matrix<S>(kH3, gated ? rows : 0, gated ? f : 0); }
  auto a() { return ws.matrix<S>(kA, rows, f); }
  auto y() { return ws.matrix<S>(kY, rows, d); }
  auto dy() { return ws.matrix<S>(kDY, rows, d); }
  auto dh1() { return ws.matrix<S>(kDH1, rows, f); }
  auto dh3() { return ws.matrix<S>(kDH3, gated ? rows : 0, gated ? f : 0); }
  auto dx() { return ws.matrix<S>(kDX, rows, d); }
};

/// rows[g0, g0 + n) += bias.row(e) for each expert's data rows.
template <class S>
void add_group_bias(const BlockSparseTopology& topo, ConstMatrixRef<S> bias, MatrixRef<S> values) {
  if (bias.size() == 0) return;
  kernels::parallel_for(0, topo.num_experts, [&](Index e) {
    const Index n = topo.group_rows[e];
    if (n > 0) values.middleRows(topo.group_offsets[e], n).rowwise() += bias.row(e);
  });
}

/// grad_bias.row(e) = sum of each expert's data rows, in row order.
template <class S>
void group_column_sums(const BlockSparseTopology& topo, ConstMatrixRef<S> values,
                       MatrixRef<S> grad_bias) {
  if (grad_bias.size() == 0) return;
  kernels::parallel_for(0, topo.num_experts, [&](Index e) {
    grad_bias.row(e).setZero();
    const Index g0 = topo.group_offsets[e];
    for (Index r = g0; r < g0 + topo.group_rows[e]; ++r) grad_bias.row(e) += values.row(r);
  });
}

/// y = act(x W1[e] + b1[e]) W2[e] + b2[e] for every data row of the grouped input `x`: buffers.x(),
/// the caller's grouped rows, or the token rows read in place (GatheredRows); padding rows are
/// neither read nor written in y (buffers.y(), or the caller's output). MegaBlocks SparseMLP:
/// sdd -> act -> dsd. With `panels` the products read W1, W3 and W2 from that copy of w's
/// matrices (the same bits), the biases from w.
template <class S, class Rows>
void grouped_ffn_forward(const ExpertWeights<S>& w, const BlockSparseTopology& topo, const Rows& x,
                         GroupedBuffers<S>& buf, MatrixRef<S> y,
                         const PackedExpertWeights<S>* panels = nullptr) {
  const ExpertFFNConfig& c = w.config;
  auto h1 = buf.h1();
  auto h3 = buf.h3();
  auto a = buf.a();
  // h1 = x W1 + b1 (and h3 = x W3 + b3), activated per tile while the tiles are in cache.
  const auto activate = [&](Index e, Index r0, Index n, Index c0, Index cw) {
    auto tile = h1.block(r0, c0, n, cw);
    if (w.b1.size()) tile.rowwise() += w.b1.row(e).segment(c0, cw);
    if (!buf.gated)
      return activation_forward(c.activation, c.swiglu_limit, tile, tile, a.block(r0, c0, n, cw));
    auto up = h3.block(r0, c0, n, cw);
    if (w.b3.size()) up.rowwise() += w.b3.row(e).segment(c0, cw);
    activation_forward(c.activation, c.swiglu_limit, tile, up, a.block(r0, c0, n, cw));
  };
  if (panels != nullptr && buf.gated)
    sdd_pair_panels<S>(x, panels->w1(), panels->w3(), topo, h1, h3, activate);
  else if (panels != nullptr)
    sdd_panels<S>(x, panels->w1(), topo, h1, activate);
  else if (buf.gated)
    sdd_pair_rows<S>(x, w.w1, w.w3, topo, h1, h3, activate);
  else
    sdd_rows<S>(x, w.w1, topo, h1, activate);
  // Padding rows of a (and of dh3 below) are never read: the products touch data rows only.
  if (panels != nullptr)
    dsd_panels<S>(a, panels->w2(), topo, y);
  else
    dsd<S>(a, w.w2, topo, y);
  add_group_bias<S>(topo, w.b2, y);
}

/// Backward of grouped_ffn_forward given its grouped input x (buffers.x() or the caller's) and
/// buffers.dy() (padding rows are never read): fills every gradient in `grads` and buffers.dx()
/// (MegaBlocks MemoryOptimizedMLP: sdd / dsd^T / dds^T / dsd^T).
template <class S>
void grouped_ffn_backward(const ExpertWeights<S>& w, const BlockSparseTopology& topo,
                          ConstMatrixRef<S> x, GroupedBuffers<S>& buf, ExpertGradients<S>& grads) {
  const ExpertFFNConfig& c = w.config;
  auto h1 = buf.h1();
  auto h3 = buf.h3();
  auto a = buf.a();
  auto dy = buf.dy();
  auto dh1 = buf.dh1();
  auto dh3 = buf.dh3();
  auto dx = buf.dx();
  // dA = dY W2^T, then through the activation in place: dh1 (and dh3) per tile.
  sdd_nt<S>(dy, w.w2, topo, dh1, [&](Index, Index r0, Index n, Index c0, Index cw) {
    auto tile = dh1.block(r0, c0, n, cw);
    if (buf.gated)
      activation_backward(c.activation, c.swiglu_limit, h1.block(r0, c0, n, cw),
                          h3.block(r0, c0, n, cw), tile, dh3.block(r0, c0, n, cw));
    else
      activation_backward(c.activation, c.swiglu_limit, h1.block(r0, c0, n, cw), tile, tile, tile);
  });
  dsd_tn<S>(a, dy, topo, grads.w2);
  dds_tn<S>(x, dh1, topo, grads.w1);
  if (buf.gated) dds_tn<S>(x, dh3, topo, grads.w3);
  dsd_nt<S>(dh1, w.w1, topo, dx);
  if (buf.gated) dsd_nt<S>(dh3, w.w3, topo, dx, /*accumulate=*/true);
  group_column_sums<S>(topo, dy, grads.b2);
  group_column_sums<S>(topo, dh1, grads.b1);
  if (buf.gated) group_column_sums<S>(topo, dh3, grads.b3);
}

}  // namespace moe::detail
