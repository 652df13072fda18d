// Every blocking constant of the kernels in one table, per instruction set: the register tiles and
// panels of the products, the split of work over threads, and the cache sizes the row kernels
// read. What depends on the instruction set derives from the packet width and the register count
// (simd.hpp); the measured values say where they were measured. Changing one changes no result's
// bits except where a comment says so.
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>

#include <Eigen/Core>

#include "moe/core/types.hpp"
#include "moe/kernels/simd.hpp"

namespace moe::kernels {

/// Rows up to which a product streams its right operand, whatever the scalar.
inline constexpr Index kStreamedProductMaxRows = 8;

/// The products' blocking for scalar S on an instruction set of `Lanes` lanes of S and `Registers`
/// vector registers: by default the one compiled for; the run-time AVX-512 copy of the kernels
/// (simd.hpp) passes its own.
///
/// | instruction set | float lanes | registers | register tile   | panel width (float) |
/// |-----------------|-------------|-----------|-----------------|---------------------|
/// | AVX-512         | 16          | 32        | 8 rows x 3 pkts | 48                  |
/// | AVX, AVX2       | 8           | 16        | 4 rows x 3 pkts | 24                  |
/// | SSE, NEON       | 4           | 16 / 32   | 4 / 8 rows      | 12                  |
template <class S, Index Lanes = simd::kLanes<S>, int Registers = simd::kVectorRegisters>
struct ProductBlocking {
  static constexpr Index kPacket = Lanes;

  /// Products of 1..kStreamedMaxRows rows stream the right operand (streamed_product). One
  /// AVX-512 core, [m, 2048] x [2048, 1024] float from memory, against Eigen's blocked GEMM:
  /// 2.0-2.4x faster at m = 2-4, 1.5-1.7x at m = 8, even at 12, slower from 16 on.
  static constexpr Index kStreamedMaxRows = kStreamedProductMaxRows;
  /// Products of up to kSkinnyMaxRows rows run register tiles over the right operand in place
  /// (skinny_product); past it the weights' reads are spread over enough rows that packing pays.
  static constexpr Index kSkinnyMaxRows = 64;
  /// Transposed-lhs products (weight gradients) of at most this depth sum straight into c.
  static constexpr Index kSkinnyMaxDepth = kSkinnyMaxRows;

  /// A register tile holds kTileRows x kTilePackets accumulators, the packets of weights of one
  /// depth step and one broadcast token value; each weight packet loaded serves every row. With
  /// 32 registers, 8 x 3 (28 registers) loads weights from L2 half as often per FMA as 4 x 4 did
  /// (1.34x faster in cache, 1.2x streaming); with 16, 4 x 3 fills them (4 x 4 spilled: 0.6x).
  static constexpr Index kTileRows = Registers >= 32 ? 8 : 4;
  static constexpr int kTilePackets = 3;
  static constexpr Index kTileCols = kTilePackets * kPacket;

  /// Rows of the weights skinny_product runs over, across all columns, before the next range
  /// resumes the sums: a kTileCols-wide panel of 256 rows is 48 KiB of float. 128 measured the
  /// same (prefill (512, 2048, 1408, 64, 6), one core: 1.49 against 1.53 of the dense GEMM);
  /// copying each panel into an L1 buffer first ran 20% slower. Changes no bit: the sums resume
  /// from c exactly.
  static constexpr Index kSkinnyDepth = 256;
  /// Depth of one transposed chunk of skinny_product_nt: kTileCols x 128 scalars (24 KiB of float
  /// at 48 columns) stays in L1; 256 deep spilled to L2 and ran 10-15% slower. Bits depend on it.
  static constexpr Index kTransposeDepth = 128;
  /// Depth of a packed block: each element's sum runs in registers over one block, the blocks'
  /// sums are added to it in order. Bits depend on it.
  static constexpr Index kPackedDepth = 256;
  /// Columns of a packed block of the right operand: 16 register tiles wide, 768 KiB of float at
  /// kPackedDepth, so it stays in L2 while every group of rows sweeps it.
  static constexpr Index kPackedCols = 16 * kTileCols;
  /// Products with m + n + k below this are left to Eigen's coefficient-wise product (Eigen's own
  /// EIGEN_GEMM_TO_COEFFBASED_THRESHOLD): packing buffers cost more than such a product.
  static constexpr Index kCoefficientProductMaxSize = 20;
};

/// How loops are split over threads. None of these changes a bit of any result.
struct ThreadBlocking {
  /// Iterations below which parallel_for stays on the calling thread: waking a team costs more
  /// than a few hundred cheap iterations.
  static constexpr Index kMinParallelIterations = 512;
  /// Values of row work (a copy, a weighted sum) below which a loop of rows stays on one thread.
  static constexpr Index kMinParallelValues = Index{1} << 15;
  /// Multiply-adds below which a product called outside a team stays on the calling thread.
  static constexpr double kMinThreadedProductWork = 1 << 21;
  /// Rows (or columns) of the fixed blocks fixed_block_product splits a product into.
  static constexpr Index kFixedProductBlock = 256;
  /// Target extent of a block-sparse product's tiles: large enough that packing stays a small
  /// fraction of a tile's work, small enough that a hot expert splits into many tiles.
  static constexpr Index kSparseTileRows = 1024;
  static constexpr Index kSparseTileCols = 1024;
  /// Column tiles of a block-sparse product whose every row tile streams the weights (a decode
  /// step: at most kStreamedProductMaxRows rows per expert): the weights' whole rows, split into
  /// the fewest equal pieces of at most this many columns. A 1024-column tile of a row 5.6 KB
  /// long read 4 KB runs one page apart, which the hardware prefetchers restart on at every page.
  static constexpr Index kStreamedTileCols = 4096;
};

/// The row kernels' (dispatch, combine) prefetch distance and batch.
struct RowBlocking {
  /// Work items between the one a row kernel runs and the one whose source rows it prefetches.
  static constexpr Index kPrefetchDistance = 4;
  /// Source rows one work item may prefetch (a token's kept choices).
  static constexpr int kPrefetchRows = 8;
  /// Cache lines a copy that stays in cache hands to memcpy at once, after prefetching as many of
  /// the row ahead: a loop of vector copies in its place cost 10-25% where the rows were in cache.
  static constexpr Index kCopyChunkLines = 16;
};

/// Cache sizes of this machine as Eigen detects them (CPUID), and the hardware threads.
struct CacheSizes {
  std::ptrdiff_t l1 = 0, l2 = 0, l3 = 0;
  unsigned threads = 1;
};

/// Read once, on first use.
inline const CacheSizes& cache_sizes() {
  static const CacheSizes sizes{Eigen::l1CacheSize(), Eigen::l2CacheSize(), Eigen::l3CacheSize(),
                                std::max(1u, std::thread::hardware_concurrency())};
  return sizes;
}

/// Bytes a kernel may write before its output no longer stays in cache: 3/4 of one hardware
/// thread's share of the last-level cache (at least 1 MiB), the rule glibc's memcpy applies to its
/// non-temporal path.
inline double streaming_threshold_bytes() {
  static const double threshold = [] {
    const CacheSizes& c = cache_sizes();
    const double cache = static_cast<double>(std::max<std::ptrdiff_t>(c.l3, 1 << 20));
    return 0.75 * cache / static_cast<double>(c.threads);
  }();
  return threshold;
}

}  // namespace moe::kernels
