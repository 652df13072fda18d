// Token exchange of expert parallelism: this rank's routed (token, choice) rows sorted by the rank
// and local expert that owns their expert, sent with one all-to-all and returned with the reverse
// one (Megatron-Core MoEAlltoAllTokenDispatcher; DeepSpeed _AllToAll). Forward and backward.
#pragma once

#include <vector>

#include "moe/balance/token_mask.hpp"
#include "moe/core/types.hpp"
#include "moe/dispatch/dropless_permute.hpp"
#include "moe/dispatch/dropless_plan.hpp"
#include "moe/parallel/communicator.hpp"
#include "moe/parallel/expert_placement.hpp"

namespace moe {

/// Where this rank's entries go and what it receives, for one step. Built by
/// make_exchange_plan; read by the row exchanges of forward and backward.
struct ExchangePlan {
  /// This rank's T*k entries sorted by (owner rank, local expert), block 1, so rank q's rows are
  /// one contiguous range of the send buffer. Entries not sent (dropped by capacity, unused) sort
  /// into an extra last bucket, after every sent row.
  DroplessPlan send;
  std::vector<Index> send_rows;  ///< [P] rows this rank sends to each rank
  std::vector<Index> recv_rows;  ///< [P] rows this rank receives from each rank
  Index rows_sent = 0;
  Index rows_received = 0;
  /// The received rows (rank order, then the sender's local-expert order) grouped by this rank's
  /// local experts and padded to the block size: the expert FFN's plan, one "token" per row.
  DroplessPlan experts;
  Index num_local_experts = 0;
};

/// Builds `plan` from this rank's expert_ids [T, k] and which entries are sent (`sent`, [T, k],
/// empty = all): counts per (rank, local expert) go out with one MPI_Alltoall. Collective.
inline void make_exchange_plan(const Communicator& comm, const ExpertPlacement& placement,
                               const ExpertIdMatrix& expert_ids, const ChoiceMask& sent,
                               Index block_size, ExchangePlan& plan) {
  const Index E = placement.num_experts(), P = comm.size();
  require(placement.num_ranks() == P, "placement",
          detail::concat("a placement over ", P, " ranks (the communicator's size)"),
          placement.num_ranks());
  const Index tokens = expert_ids.rows(), k = expert_ids.cols();
  if (sent.size() != 0) require_shape(sent, "sent", tokens, k);

  // Bucket of every entry: its expert's exchange position, or E when it stays here (dropped, or
  // an unused slot).
  ExpertIdMatrix bucket(tokens, k);
  for (Index t = 0; t < tokens; ++t)
    for (Index j = 0; j < k; ++j) {
      const ExpertId e = expert_ids(t, j);
      const bool goes =
          detail::routed_slot(e, E, "expert_ids", t, j) && (sent.size() == 0 || sent(t, j));
      bucket(t, j) = static_cast<ExpertId>(goes ? placement.exchange_position(e) : E);
    }
  make_dropless_plan(bucket, E + 1, 1, plan.send);

  // Count blocks of equal width for MPI_Alltoall: block q lists rank q's local experts.
  const Index width = placement.max_local_experts();
  std::vector<Index> counts(static_cast<std::size_t>(P * width), 0);
  plan.send_rows.assign(static_cast<std::size_t>(P), 0);
  for (Index q = 0; q < P; ++q) {
    const std::vector<Index>& local = placement.experts_of(q);
    for (std::size_t l = 0; l < local.size(); ++l) {
      const Index n = plan.send.tokens_per_expert[placement.exchange_position(local[l])];
      counts[static_cast<std::size_t>(q * width) + l] = n;
      plan.send_rows[static_cast<std::size_t>(q)] += n;
    }
  }
  plan.rows_sent = plan.send.offsets[E];
  const std::vector<Index> received = comm.alltoall(counts, width);

  // Received rows arrive by sender, each sender's rows grouped by this rank's local experts.
  plan.num_local_experts = placement.num_local_experts(comm.rank());
  plan.recv_rows.assign(static_cast<std::size_t>(P), 0);
  plan.rows_received = 0;
  for (Index q = 0; q < P; ++q)
    for (Index l = 0; l < plan.num_local_experts; ++l)
      plan.recv_rows[static_cast<std::size_t>(q)] +=
          received[static_cast<std::size_t>(q * width + l)];
  for (Index n : plan.recv_rows) plan.rows_received += n;
  ExpertIdMatrix local_expert(plan.rows_received, 1);
  Index row = 0;
  for (Index q = 0; q < P; ++q)
    for (Index l = 0; l < plan.num_local_experts; ++l)
      for (Index i = 0; i < received[static_cast<std::size_t>(q * width + l)]; ++i)
        local_expert(row++, 0) = static_cast<ExpertId>(l);
  if (plan.num_local_experts > 0)
    make_dropless_plan(local_expert, plan.num_local_experts, block_size, plan.experts);
  else
    plan.experts = DroplessPlan();
}

/// send_buffer [T*k, d] (entries in plan.send order) -> received [rows_received, d]: rows to
/// their experts' owners (MPI_Alltoallv). The backward of return_rows. Collective.
template <class S>
void send_rows(const Communicator& comm, const ExchangePlan& plan, ConstMatrixRef<S> send_buffer,
               MatrixRef<S> received) {
  require_shape(send_buffer, "send_buffer", plan.send.num_pairs(), -1);
  require_shape(received, "received", plan.rows_received, send_buffer.cols());
  comm.alltoallv_rows(send_buffer.data(), plan.send_rows, received.data(), plan.recv_rows,
                      send_buffer.cols());
}

/// The reverse exchange: rows computed here [rows_received, d] back to the ranks that sent them,
/// into returned [T*k, d] in plan.send order; rows of entries that were not sent are zero. The
/// backward of send_rows. Collective.
template <class S>
void return_rows(const Communicator& comm, const ExchangePlan& plan, ConstMatrixRef<S> computed,
                 MatrixRef<S> returned) {
  require_shape(computed, "computed", plan.rows_received, -1);
  require_shape(returned, "returned", plan.send.num_pairs(), computed.cols());
  comm.alltoallv_rows(computed.data(), plan.recv_rows, returned.data(), plan.send_rows,
                      computed.cols());
  const Index unsent = plan.send.num_pairs() - plan.rows_sent;
  if (unsent > 0) returned.bottomRows(unsent).setZero();
}

}  // namespace moe
