// Communicator: the few MPI collectives expert parallelism needs (all-to-all of counts and of
// token rows, all-gather, all-reduce), typed over Eigen data, with MPI errors turned into
// moe::Error. Needs <mpi.h>: build with MOE_WITH_MPI (CMake links MPI::MPI_CXX).
#pragma once

#include <mpi.h>

#include <climits>
#include <cstdint>
#include <vector>

#include "moe/core/error.hpp"
#include "moe/core/types.hpp"

namespace moe {

namespace detail {

template <class T>
MPI_Datatype mpi_type();
template <>
inline MPI_Datatype mpi_type<float>() {
  return MPI_FLOAT;
}
template <>
inline MPI_Datatype mpi_type<double>() {
  return MPI_DOUBLE;
}
template <>
inline MPI_Datatype mpi_type<std::uint8_t>() {
  return MPI_UINT8_T;
}
template <>
inline MPI_Datatype mpi_type<std::int32_t>() {
  return MPI_INT32_T;
}
template <>
inline MPI_Datatype mpi_type<std::int64_t>() {
  return MPI_INT64_T;
}

inline void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  fail(call, "MPI_SUCCESS", std::string(text, static_cast<std::size_t>(length)));
}

/// MPI counts are int: a count past INT_MAX is an error, never a silent wrap.
inline std::vector<int> to_int_counts(const std::vector<Index>& counts, const char* argument) {
  std::vector<int> out(counts.size());
  for (std::size_t i = 0; i < counts.size(); ++i) {
    require(counts[i] >= 0 && counts[i] <= INT_MAX, argument,
            "counts in [0, INT_MAX] (MPI counts are int)", counts[i]);
    out[i] = static_cast<int>(counts[i]);
  }
  return out;
}

inline std::vector<int> exclusive_offsets(const std::vector<int>& counts, const char* argument) {
  std::vector<int> offsets(counts.size());
  Index next = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    require(next <= INT_MAX, argument, "a total <= INT_MAX (MPI displacements are int)", next);
    offsets[i] = static_cast<int>(next);
    next += counts[i];
  }
  return offsets;
}

}  // namespace detail

/// A non-owning view of an MPI communicator (MPI_COMM_WORLD or a sub-communicator the caller
/// built): the caller initializes MPI and keeps the communicator alive.
class Communicator {
 public:
  explicit Communicator(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    require(initialized != 0, "MPI", "MPI_Init called before building a Communicator",
            "MPI not initialized");
    int rank = 0, size = 0;
    detail::check_mpi(MPI_Comm_rank(comm_, &rank), "MPI_Comm_rank");
    detail::check_mpi(MPI_Comm_size(comm_, &size), "MPI_Comm_size");
    rank_ = rank;
    size_ = size;
  }

  MPI_Comm comm() const noexcept { return comm_; }
  Index rank() const noexcept { return rank_; }
  Index size() const noexcept { return size_; }

  /// out[block q] = what rank q sent to this rank in its block `rank()`: `send` holds size()
  /// blocks of `block` values each (MPI_Alltoall).
  template <class T>
  std::vector<T> alltoall(const std::vector<T>& send, Index block) const {
    require(static_cast<Index>(send.size()) == block * size_, "send",
            detail::concat(block * size_, " values (", size_, " blocks of ", block, ")"),
            send.size());
    require(block <= INT_MAX, "block", "<= INT_MAX (MPI counts are int)", block);
    std::vector<T> recv(send.size());
    detail::check_mpi(
        MPI_Alltoall(send.data(), static_cast<int>(block), detail::mpi_type<T>(), recv.data(),
                     static_cast<int>(block), detail::mpi_type<T>(), comm_),
        "MPI_Alltoall");
    return recv;
  }

  /// Rows of `width` values: send_rows[q] consecutive rows of `send` go to rank q, recv_rows[q]
  /// rows from rank q land consecutively in `recv`, in rank order (MPI_Alltoallv over a row
  /// datatype, so the int limit applies to rows rather than values).
  template <class T>
  void alltoallv_rows(const T* send, const std::vector<Index>& send_rows, T* recv,
                      const std::vector<Index>& recv_rows, Index width) const {
    check_per_rank(send_rows, "send_rows");
    check_per_rank(recv_rows, "recv_rows");
    require(width >= 1 && width <= INT_MAX, "width", "in [1, INT_MAX]", width);
    MPI_Datatype row;
    detail::check_mpi(MPI_Type_contiguous(static_cast<int>(width), detail::mpi_type<T>(), &row),
                      "MPI_Type_contiguous");
    detail::check_mpi(MPI_Type_commit(&row), "MPI_Type_commit");
    const std::vector<int> sc = detail::to_int_counts(send_rows, "send_rows");
    const std::vector<int> rc = detail::to_int_counts(recv_rows, "recv_rows");
    const std::vector<int> sd = detail::exclusive_offsets(sc, "send_rows");
    const std::vector<int> rd = detail::exclusive_offsets(rc, "recv_rows");
    const int code =
        MPI_Alltoallv(send, sc.data(), sd.data(), row, recv, rc.data(), rd.data(), row, comm_);
    MPI_Type_free(&row);
    detail::check_mpi(code, "MPI_Alltoallv");
  }

  /// Every rank's `send` concatenated in rank order, on every rank (MPI_Allgatherv); `counts[q]`
  /// is rank q's number of values, as allgather_counts returns.
  template <class T>
  void allgatherv(const T* send, const std::vector<Index>& counts, T* recv) const {
    check_per_rank(counts, "counts");
    const std::vector<int> c = detail::to_int_counts(counts, "counts");
    const std::vector<int> displacements = detail::exclusive_offsets(c, "counts");
    detail::check_mpi(
        MPI_Allgatherv(send, c[static_cast<std::size_t>(rank_)], detail::mpi_type<T>(), recv,
                       c.data(), displacements.data(), detail::mpi_type<T>(), comm_),
        "MPI_Allgatherv");
  }

  /// counts[q] = rank q's `value`, on every rank (MPI_Allgather).
  std::vector<Index> allgather(Index value) const {
    std::vector<Index> out(static_cast<std::size_t>(size_));
    const std::int64_t v = value;
    detail::check_mpi(MPI_Allgather(&v, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, comm_),
                      "MPI_Allgather");
    return out;
  }

  /// data[i] = sum over ranks of data[i], in place on every rank (MPI_Allreduce).
  template <class T>
  void allreduce_sum(T* data, Index n) const {
    require(n >= 0 && n <= INT_MAX, "n", "in [0, INT_MAX]", n);
    detail::check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), detail::mpi_type<T>(),
                                    MPI_SUM, comm_),
                      "MPI_Allreduce");
  }

 private:
  void check_per_rank(const std::vector<Index>& v, const char* argument) const {
    require(static_cast<Index>(v.size()) == size_, argument,
            detail::concat(size_, " entries (one per rank)"), v.size());
  }

  MPI_Comm comm_;
  Index rank_ = 0, size_ = 1;
};

}  // namespace moe
