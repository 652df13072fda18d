// A block of token rows held transposed, one token per SIMD lane: expert e's column of the block
// is one packet. Routing work that is short per token (a softmax over 8 experts, picking 2 of
// them) runs packet-wide over the block instead of row by row.
#pragma once

#include <Eigen/Core>

#include "moe/core/types.hpp"

namespace moe::detail {

template <class S>
using LanePacket = typename Eigen::internal::packet_traits<S>::type;

/// Tokens per block: one per lane of S's widest packet.
template <class S>
inline constexpr Index kLanes = Eigen::internal::packet_traits<S>::size;

/// columns[e * lanes + lane] = rows[lane * row_stride + e] for e < experts.
template <class S>
void gather_columns(const S* rows, Index row_stride, Index experts, S* columns) {
  for (Index e = 0; e < experts; ++e)
    Eigen::internal::pstore(columns + e * kLanes<S>,
                            Eigen::internal::pgather<S, LanePacket<S>>(rows + e, row_stride));
}

/// rows[lane * row_stride + e] = columns[e * lanes + lane] for e < experts.
template <class S>
void scatter_columns(const S* columns, Index experts, S* rows, Index row_stride) {
  for (Index e = 0; e < experts; ++e)
    Eigen::internal::pscatter<S, LanePacket<S>>(
        rows + e, Eigen::internal::pload<LanePacket<S>>(columns + e * kLanes<S>), row_stride);
}

}  // namespace moe::detail
