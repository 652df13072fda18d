// What the README's blocks take as given, for the test that runs them (extract_blocks.py): inputs
// of the shapes a block names, and the process setup of the MPI block.
#pragma once

#include <cstdint>

#include <Eigen/Core>

#include <moe/core/types.hpp>

#ifdef MOE_README_MPI
#include <mpi.h>

#include <filesystem>
#include <string>
#endif

namespace readme_setup {

/// [rows, cols] of uniform values in [-scale, scale], the same for the same seed.
template <class S = float>
moe::RowMatrix<S> random(moe::Index rows, moe::Index cols, std::uint32_t seed = 1,
                         double scale = 1.0) {
  moe::RowMatrix<S> m(rows, cols);
  std::uint32_t state = seed * 2654435761u + 12345u;
  for (moe::Index i = 0; i < m.size(); ++i) {
    state = state * 1664525u + 1013904223u;  // Numerical Recipes' LCG: enough for test inputs
    m.data()[i] = static_cast<S>(scale * (2.0 * (state >> 8) / double(1u << 24) - 1.0));
  }
  return m;
}

/// MPI for the process when the MPI block is compiled in, as the README's block asks for it.
/// Every process then runs every block: each works in a directory of its own (rank_<r>), so the
/// files a block writes and reads back (a routing record) are never another process's.
class Session {
 public:
  Session(int& argc, char**& argv) {
#ifdef MOE_README_MPI
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const std::filesystem::path own = "rank_" + std::to_string(rank);
    std::filesystem::create_directories(own);
    std::filesystem::current_path(own);
#else
    (void)argc;
    (void)argv;
#endif
  }
  ~Session() {
#ifdef MOE_README_MPI
    MPI_Finalize();
#endif
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

}  // namespace readme_setup
