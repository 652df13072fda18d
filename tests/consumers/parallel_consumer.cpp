// A user's program of expert parallelism: links moe::parallel (moe + MPI), starts MPI and builds a
// moe::Communicator over MPI_COMM_WORLD. Run under mpiexec with 2 processes: each rank checks the
// size and a sum over the ranks.
#include <mpi.h>

#include <cstdio>

#include <moe/parallel/communicator.hpp>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  bool ok = false;
  {
    const moe::Communicator comm;
    double value = static_cast<double>(comm.rank() + 1);
    comm.allreduce_sum(&value, 1);  // 1 + 2 + ... + size
    const double expected = static_cast<double>(comm.size() * (comm.size() + 1) / 2);
    ok = comm.size() == 2 && value == expected;
    std::printf("consumer: rank %d of %d, sum over ranks %g (expected %g) -> %s\n",
                static_cast<int>(comm.rank()), static_cast<int>(comm.size()), value, expected,
                ok ? "ok" : "WRONG");
  }
  MPI_Finalize();
  return ok ? 0 : 1;
}
