// Catch2 under MPI: every rank runs every test case in the same order, so the collectives inside
// them match; mpirun fails the run when any rank fails.
#include <mpi.h>

#if defined(MOE_CATCH3)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

int main(int argc, char** argv) {
  // Only the main thread calls MPI, outside OpenMP regions: FUNNELED is the level that allows that.
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const int failed = Catch::Session().run(argc, argv);
  MPI_Finalize();
  return failed;
}
