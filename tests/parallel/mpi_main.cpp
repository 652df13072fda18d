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
  MPI_Init(&argc, &argv);
  const int failed = Catch::Session().run(argc, argv);
  MPI_Finalize();
  return failed;
}
