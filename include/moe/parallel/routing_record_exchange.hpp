// Routing records over MPI: one rank's record sent to all (an inference engine's choices handed
// to the training ranks), and every rank's record gathered (the routing of an expert-parallel
// batch, to be saved by one rank).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/parallel/communicator.hpp"
#include "moe/routing/replay.hpp"

namespace moe {

namespace detail {

/// Every rank's RoutingRecord bytes, gathered on every rank in rank order; a rank whose record
/// does not serialize sends a count of -1 instead, and then every rank throws (never a hang).
inline std::vector<std::uint8_t> allgather_record_bytes(const Communicator& comm,
                                                        const RoutingRecord* own,
                                                        std::vector<Index>& counts) {
  std::vector<std::uint8_t> bytes;
  std::string failure;
  if (own != nullptr) {
    try {
      bytes = own->to_bytes();
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  counts = comm.allgather(failure.empty() ? static_cast<Index>(bytes.size()) : -1);
  for (std::size_t q = 0; q < counts.size(); ++q) {
    if (counts[q] >= 0) continue;
    if (!failure.empty()) throw Error(failure);
    fail("record", detail::concat("a valid RoutingRecord on every rank"),
         detail::concat("a malformed one on rank ", q));
  }
  Index total = 0;
  for (Index c : counts) total = checked_add(total, c, "gathered record bytes");
  std::vector<std::uint8_t> all(static_cast<std::size_t>(total));
  comm.allgatherv(bytes.data(), counts, all.data());
  return all;
}

}  // namespace detail

/// `record` of rank `root` on every rank (other ranks' `record` is not read).
inline RoutingRecord broadcast_record(const Communicator& comm, const RoutingRecord& record,
                                      Index root) {
  require(root >= 0 && root < comm.size(), "root",
          detail::concat("a rank in [0, ", comm.size(), ")"), root);
  std::vector<Index> counts;
  const std::vector<std::uint8_t> all =
      detail::allgather_record_bytes(comm, comm.rank() == root ? &record : nullptr, counts);
  return RoutingRecord::from_bytes(all.data(), all.size(), "broadcast record");
}

/// Every rank's `own` record, layer by layer with the tokens of rank 0 first, then rank 1, ...:
/// the token order of an expert-parallel batch. Every rank must hold the same number of layers,
/// and each layer the same num_experts and top_k on every rank (moe::Error on all ranks if not).
inline RoutingRecord allgather_record(const Communicator& comm, const RoutingRecord& own) {
  std::vector<Index> counts;
  const std::vector<std::uint8_t> all = detail::allgather_record_bytes(comm, &own, counts);
  RoutingRecord gathered;
  std::size_t offset = 0;
  for (std::size_t q = 0; q < counts.size(); ++q) {
    const std::size_t n = static_cast<std::size_t>(counts[q]);
    const RoutingRecord part = RoutingRecord::from_bytes(all.data() + offset, n, "gathered record");
    offset += n;
    if (q == 0) {
      gathered = part;
      continue;
    }
    require(part.layers.size() == gathered.layers.size(), "record",
            detail::concat(gathered.layers.size(), " layers on every rank (as on rank 0)"),
            detail::concat(part.layers.size(), " on rank ", q));
    for (std::size_t l = 0; l < part.layers.size(); ++l) {
      RecordedLayer& into = gathered.layers[l];
      const RecordedLayer& from = part.layers[l];
      require(from.num_experts == into.num_experts &&
                  (from.expert_ids.cols() == into.expert_ids.cols() ||
                   from.expert_ids.rows() == 0 || into.expert_ids.rows() == 0),
              "record",
              detail::concat("layer ", l, " with E = ", into.num_experts,
                             ", k = ", into.expert_ids.cols(), " on every rank"),
              detail::concat("E = ", from.num_experts, ", k = ", from.expert_ids.cols(),
                             " on rank ", q));
      if (from.expert_ids.rows() == 0) continue;
      if (into.expert_ids.rows() == 0) {
        into.expert_ids = from.expert_ids;
        continue;
      }
      ExpertIdMatrix joined(into.expert_ids.rows() + from.expert_ids.rows(),
                            into.expert_ids.cols());
      joined << into.expert_ids, from.expert_ids;
      into.expert_ids = std::move(joined);
    }
  }
  return gathered;
}

}  // namespace moe
