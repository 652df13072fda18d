// Plain-loop references of the product kernels, with the kernels' own signatures (BLIS's
// ref_kernels pattern): each states, element by element, the order of arithmetic its kernel
// documents, so a kernel must match its reference bit for bit.
#pragma once

#include <algorithm>
#include <cmath>

#include "moe/kernels/blocking.hpp"
#include "moe/kernels/prefetch.hpp"

namespace moe::test::ref {

/// Whether the kernels under test fuse their multiply-adds: the compiled instruction set does
/// where it has FMA, the run-time AVX-512 copy always. A test of one copy sets it for that copy.
inline bool fused_madd =
#if defined(__FMA__)
    true;
#else
    false;
#endif

/// a * b + c rounded once where the kernels' instruction set has a fused multiply-add, twice
/// elsewhere: the `madd` every kernel documents.
template <class S>
S madd(S a, S b, S c) {
  return fused_madd ? std::fma(a, b, c) : a * b + c;
}

/// sum_{p0 <= p < p1} lhs(i, p) * rhs(p, j) as the register tiles form it: madd in order of p
/// from 0.
template <class S, class Lhs, class Rhs>
S tile_sum(const Lhs& lhs, const Rhs& rhs, Index i, Index j, Index p0, Index p1) {
  S sum(0);
  for (Index p = p0; p < p1; ++p) sum = madd<S>(lhs(i, p), rhs(p, j), sum);
  return sum;
}

/// c[i, j] = madd chain over p = 0 .. k - 1 in order, from c (accumulate) or 0.
template <class S, class LhsAt>
void streamed_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsAt& lhs_at,
                      const S* rhs, Index rhs_stride, bool accumulate) {
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      S acc = accumulate ? c[i * c_stride + j] : S(0);
      for (Index p = 0; p < k; ++p) acc = madd<S>(lhs_at(i, p), rhs[p * rhs_stride + j], acc);
      c[i * c_stride + j] = acc;
    }
}

/// The sum over depth in chunks of `chunk` (each summed from 0 by tile_sum), the first chunk
/// stored or added to c, the later ones added: what skinny_product (one chunk), skinny_product_nt
/// and packed_product do.
template <class S, class Lhs, class Rhs>
void chunked_product(S* c, Index c_stride, Index m, Index n, Index k, const Lhs& lhs,
                     const Rhs& rhs, bool accumulate, Index chunk) {
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      S& out = c[i * c_stride + j];
      Index p0 = 0;
      do {
        const Index p1 = std::min(k, p0 + chunk);
        const S sum = tile_sum<S>(lhs, rhs, i, j, p0, p1);
        out = accumulate || p0 > 0 ? out + sum : sum;
        p0 = p1;
      } while (p0 < k);
    }
}

template <class S, class LhsRow>
void skinny_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsRow& lhs_row,
                    const S* rhs, Index rhs_stride, bool accumulate,
                    const kernels::PrefetchBlock& /*next*/) {
  chunked_product<S>(
      c, c_stride, m, n, k, [&](Index i, Index p) { return lhs_row(i)[p]; },
      [&](Index p, Index j) { return rhs[p * rhs_stride + j]; }, accumulate, std::max<Index>(k, 1));
}

template <class S, class LhsRow>
void skinny_product_nt(S* c, Index c_stride, Index m, Index n, Index k, const LhsRow& lhs_row,
                       const S* rhs, Index rhs_stride, bool accumulate,
                       const kernels::PrefetchBlock& /*next*/) {
  chunked_product<S>(
      c, c_stride, m, n, k, [&](Index i, Index p) { return lhs_row(i)[p]; },
      [&](Index p, Index j) { return rhs[j * rhs_stride + p]; }, accumulate,
      kernels::ProductBlocking<S>::kTransposeDepth);
}

template <class S>
void skinny_product_tn(S* c, Index c_stride, Index m, Index n, Index k, const S* a, Index a_stride,
                       const S* b, Index b_stride, bool accumulate) {
  chunked_product<S>(
      c, c_stride, m, n, k, [&](Index i, Index p) { return a[p * a_stride + i]; },
      [&](Index p, Index j) { return b[p * b_stride + j]; }, accumulate, std::max<Index>(k, 1));
}

/// lhs_group(first row, rows, first depth)(i, p) = lhs(first row + i, first depth + p).
template <class S, class LhsGroup>
void packed_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsGroup& lhs_group,
                    const S* rhs, Index rhs_stride, bool rhs_transposed, bool accumulate) {
  chunked_product<S>(
      c, c_stride, m, n, k, [&](Index i, Index p) { return lhs_group(i, 1, 0)(0, p); },
      [&](Index p, Index j) {
        return rhs_transposed ? rhs[j * rhs_stride + p] : rhs[p * rhs_stride + j];
      },
      accumulate, kernels::ProductBlocking<S>::kPackedDepth);
}

/// c (+)= lhs rows times columns [col0, col0 + n) of w (row-major [k, >= col0 + n]) in the order
/// panel_product states for m rows: gemm's own kernel's for m rows (streamed up to
/// kStreamedMaxRows, skinny up to kSkinnyMaxRows, packed past it).
template <class S, class LhsRow>
void panel_product(S* c, Index c_stride, Index m, Index n, Index k, const LhsRow& lhs_row,
                   const S* w, Index w_stride, bool accumulate) {
  using B = kernels::ProductBlocking<S>;
  const auto lhs = [&](Index i, Index p) { return lhs_row(i)[p]; };
  const auto rhs = [&](Index p, Index j) { return w[p * w_stride + j]; };
  if (m <= B::kStreamedMaxRows)
    streamed_product(c, c_stride, m, n, k, lhs, w, w_stride, accumulate);
  else if (m <= B::kSkinnyMaxRows)
    chunked_product<S>(c, c_stride, m, n, k, lhs, rhs, accumulate, std::max<Index>(k, 1));
  else
    chunked_product<S>(c, c_stride, m, n, k, lhs, rhs, accumulate, B::kPackedDepth);
}

/// buffer[p, j] = w[j, p], buffer rows buffer_stride apart (the kernels' kTileCols).
template <class S>
void transpose_into(S* buffer, Index buffer_stride, const S* w, Index w_stride, Index width,
                    Index depth) {
  for (Index p = 0; p < depth; ++p)
    for (Index j = 0; j < width; ++j) buffer[p * buffer_stride + j] = w[j * w_stride + p];
}

}  // namespace moe::test::ref
