// Routing records over MPI: broadcast_record hands rank 0's record to every rank, allgather_record
// concatenates every rank's tokens in rank order; both checked against records every rank builds
// for itself from the same seeds. Runs under mpirun with 1, 2 and 4 processes; every comparison is
// a CHECK made after the collectives, and a malformed record on one rank raises on all.
#include <mpi.h>

#include <string>

#include <moe/parallel/routing_record_exchange.hpp>

#include "support/catch.hpp"
#include "support/random_matrix.hpp"

namespace {

using moe::Index;

/// Rank q's record: two layers (E = 8, k = 2 and E = 300, k = 3) over 3 q + 1 tokens.
moe::RoutingRecord record_of(Index rank) {
  moe::RoutingRecord r;
  const Index tokens = 3 * rank + 1;
  const auto seed = static_cast<std::uint64_t>(10 * rank);
  r.layers.push_back({8, moe::test::random_expert_ids(tokens, 2, 8, seed)});
  r.layers.push_back({300, moe::test::random_expert_ids(tokens, 3, 300, seed + 1)});
  return r;
}

}  // namespace

TEST_CASE("routing records are broadcast and gathered over MPI", "[parallel][replay]") {
  const moe::Communicator comm;
  const moe::RoutingRecord own = record_of(comm.rank());
  const moe::RoutingRecord from_root = moe::broadcast_record(comm, own, 0);
  const moe::RoutingRecord gathered = moe::allgather_record(comm, own);

  const moe::RoutingRecord root = record_of(0);
  REQUIRE(from_root.layers.size() == 2);
  for (std::size_t l = 0; l < 2; ++l) {
    CHECK(from_root.layers[l].num_experts == root.layers[l].num_experts);
    CHECK(from_root.layers[l].expert_ids == root.layers[l].expert_ids);
  }
  REQUIRE(gathered.layers.size() == 2);
  for (std::size_t l = 0; l < 2; ++l) {
    Index row = 0;
    for (Index q = 0; q < comm.size(); ++q) {
      const moe::ExpertIdMatrix part = record_of(q).layers[l].expert_ids;
      CHECK(gathered.layers[l].expert_ids.middleRows(row, part.rows()) == part);
      row += part.rows();
    }
    CHECK(gathered.layers[l].expert_ids.rows() == row);
  }
}

TEST_CASE("a malformed record on one rank raises moe::Error on every rank", "[parallel][replay]") {
  const moe::Communicator comm;
  moe::RoutingRecord own = record_of(comm.rank());
  if (comm.rank() == comm.size() - 1) own.layers[0].expert_ids(0, 0) = 8;  // E = 8: out of range
  std::string message;
  try {
    moe::allgather_record(comm, own);
  } catch (const moe::Error& e) {
    message = e.what();
  }
  const std::string last = std::to_string(comm.size() - 1);
  if (comm.rank() == comm.size() - 1)
    CHECK(message.find("RoutingRecord::layers[0]: expected expert ids in [0, 8)") == 0);
  else
    CHECK(message ==
          "record: expected a valid RoutingRecord on every rank, got a malformed one "
          "on rank " +
              last);
  // and layers that disagree across ranks
  moe::RoutingRecord other = record_of(comm.rank());
  if (comm.rank() == comm.size() - 1 && comm.size() > 1) other.layers.pop_back();
  std::string disagreement;
  try {
    moe::allgather_record(comm, other);
  } catch (const moe::Error& e) {
    disagreement = e.what();
  }
  if (comm.size() > 1)
    CHECK(disagreement ==
          "record: expected 2 layers on every rank (as on rank 0), got 1 on rank " + last);
  else
    CHECK(disagreement.empty());
}
