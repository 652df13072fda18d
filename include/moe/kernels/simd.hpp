// The library's one SIMD seam: packets of the instruction set compiled for, the operations the
// kernels run on them, streaming stores, prefetches, and the entry of Eigen's blocked GEMM. This is
// the only header that names Eigen::internal or an intrinsic; every kernel is written against the
// names below, so a new instruction set or a new Eigen touches this file alone.
//
// Packets are Eigen's (packet_traits<S>::type): AVX-512, AVX, SSE, NEON, ... as Eigen was
// configured by the compiler flags, or S itself (one lane) when Eigen does not vectorize S.
#pragma once

#include <cstddef>
#include <type_traits>

#include <Eigen/Core>

#include "moe/core/types.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#if defined(__GNUC__)
#define MOE_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define MOE_ALWAYS_INLINE __forceinline
#else
#define MOE_ALWAYS_INLINE inline
#endif

namespace moe::simd {

namespace ei = Eigen::internal;

/// The widest packet of S the compiled instruction set has (S itself when S is not vectorized).
template <class S>
using Packet = typename ei::packet_traits<S>::type;

/// Lanes of Packet<S>.
template <class S>
inline constexpr Index kLanes = ei::packet_traits<S>::size;

/// Whether Packet<S> has more than one lane.
template <class S>
inline constexpr bool kVectorized = ei::packet_traits<S>::Vectorizable&& kLanes<S> > 1;

/// Vector registers of the instruction set (32 with AVX-512, 16 with AVX): the register tiles are
/// sized by it.
inline constexpr int kVectorRegisters = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS;

/// Bytes of a cache line: the unit kernels prefetch in.
inline constexpr Index kCacheLineBytes = 64;

// Loads and stores. `load`/`store` need a packet-aligned address; the `u` forms do not.
template <class S>
MOE_ALWAYS_INLINE Packet<S> load(const S* p) {
  return ei::pload<Packet<S>>(p);
}
template <class S>
MOE_ALWAYS_INLINE Packet<S> loadu(const S* p) {
  return ei::ploadu<Packet<S>>(p);
}
template <class S, class P>
MOE_ALWAYS_INLINE void store(S* p, const P& v) {
  ei::pstore(p, v);
}
template <class S, class P>
MOE_ALWAYS_INLINE void storeu(S* p, const P& v) {
  ei::pstoreu(p, v);
}

/// A non-temporal store of a whole packet at a packet-aligned address: the line goes to memory
/// without being read for ownership first (what glibc's memcpy does past the cache's size).
/// Instruction sets without one store normally.
template <class S>
MOE_ALWAYS_INLINE void stream(S* p, const Packet<S>& v) {
  constexpr std::size_t kBytes = sizeof(Packet<S>);
  constexpr bool kFloat = std::is_same_v<S, float>, kDouble = std::is_same_v<S, double>;
  if constexpr (false) {
#if defined(__AVX512F__)
  } else if constexpr (kBytes == 64 && kFloat) {
    _mm512_stream_ps(p, v);
  } else if constexpr (kBytes == 64 && kDouble) {
    _mm512_stream_pd(p, v);
#endif
#if defined(__AVX__)
  } else if constexpr (kBytes == 32 && kFloat) {
    _mm256_stream_ps(p, v);
  } else if constexpr (kBytes == 32 && kDouble) {
    _mm256_stream_pd(p, v);
#endif
#if defined(__SSE2__)
  } else if constexpr (kBytes == 16 && kFloat) {
    _mm_stream_ps(p, v);
  } else if constexpr (kBytes == 16 && kDouble) {
    _mm_stream_pd(p, v);
#endif
  } else {
    ei::pstore(p, v);
  }
}

/// Orders this thread's streaming stores before anything it does next.
MOE_ALWAYS_INLINE void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

/// Asks for the cache line holding `p` ahead of its use, for reading; `Locality` 3 keeps it in
/// every level, 2 in L2 and below (GCC's __builtin_prefetch scale).
template <int Locality>
MOE_ALWAYS_INLINE void prefetch(const void* p) {
#if defined(__GNUC__)
  __builtin_prefetch(p, 0, Locality);
#else
  (void)p;
#endif
}

// Arithmetic, lane by lane. `madd` is a fused multiply-add where the instruction set has one
// (a * b + c rounded once), a multiply then an add elsewhere; it also takes plain scalars.
template <class P>
MOE_ALWAYS_INLINE P set1(typename ei::unpacket_traits<P>::type x) {
  return ei::pset1<P>(x);
}
template <class S>
MOE_ALWAYS_INLINE Packet<S> broadcast(S x) {
  return ei::pset1<Packet<S>>(x);
}
template <class P>
MOE_ALWAYS_INLINE P add(const P& a, const P& b) {
  return ei::padd(a, b);
}
template <class P>
MOE_ALWAYS_INLINE P sub(const P& a, const P& b) {
  return ei::psub(a, b);
}
template <class P>
MOE_ALWAYS_INLINE P mul(const P& a, const P& b) {
  return ei::pmul(a, b);
}
template <class P>
MOE_ALWAYS_INLINE P div(const P& a, const P& b) {
  return ei::pdiv(a, b);
}
template <class P>
MOE_ALWAYS_INLINE P madd(const P& a, const P& b, const P& c) {
  return ei::pmadd(a, b, c);
}
template <class P>
MOE_ALWAYS_INLINE P max(const P& a, const P& b) {
  return ei::pmax(a, b);
}
/// exp of each lane, Eigen's vectorized exponential.
template <class P>
MOE_ALWAYS_INLINE P exp(const P& a) {
  return ei::pexp(a);
}

// Reductions over the lanes of one packet.
template <class P>
MOE_ALWAYS_INLINE typename ei::unpacket_traits<P>::type reduce_add(const P& a) {
  return ei::predux(a);
}
template <class P>
MOE_ALWAYS_INLINE typename ei::unpacket_traits<P>::type reduce_max(const P& a) {
  return ei::predux_max(a);
}
/// Whether any lane of a comparison mask is set.
template <class P>
MOE_ALWAYS_INLINE bool any(const P& mask) {
  return ei::predux_any(mask);
}

/// Lanes where a < b or either is NaN, as a mask for select.
template <class P>
MOE_ALWAYS_INLINE P less_or_nan(const P& a, const P& b) {
  return ei::pcmp_lt_or_nan(a, b);
}
/// mask ? a : b, lane by lane.
template <class P>
MOE_ALWAYS_INLINE P select(const P& mask, const P& a, const P& b) {
  return ei::pselect(mask, a, b);
}

/// One packet from p[0], p[stride], p[2 stride], ...
template <class S>
MOE_ALWAYS_INLINE Packet<S> gather(const S* p, Index stride) {
  return ei::pgather<S, Packet<S>>(p, stride);
}
/// p[0], p[stride], ... = the lanes of v.
template <class S>
MOE_ALWAYS_INLINE void scatter(S* p, const Packet<S>& v, Index stride) {
  ei::pscatter<S, Packet<S>>(p, v, stride);
}

// Eigen's packet types are compiler vector types; naming one as a template argument
// (PacketBlock<Packet, N>) makes GCC warn that their attributes are ignored, which is harmless
// here: the block only holds packets for the transposition.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

/// `kLanes<S>` packets, transposed in place: lane j of packet i becomes lane i of packet j.
template <class S>
struct PacketSquare {
  ei::PacketBlock<Packet<S>, static_cast<int>(kLanes<S>)> block;
  MOE_ALWAYS_INLINE Packet<S>& operator[](Index i) { return block.packet[i]; }
  MOE_ALWAYS_INLINE void transpose() { ei::ptranspose(block); }
};

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/// c = lhs * rhs (c row-major [m, n], rows c_stride apart) by Eigen's blocked GEMM on the calling
/// thread, its packing buffers at `packing` (blocking_scratch_size(m, n, k) scalars). lhs and rhs
/// are row- or column-major as LhsRowMajor and RhsRowMajor say, with outer strides. Eigen picks
/// the cache blocking from the shapes alone (one thread), so the bits depend on them alone.
template <class S>
class EigenGemm {
 public:
  EigenGemm(Index m, Index n, Index k) : blocking_(m, n, k) {}

  /// Scalars of packing buffer the product needs.
  std::size_t scratch_size() const { return blocking_.scratch_size(); }

  template <bool LhsRowMajor, bool RhsRowMajor>
  void run(Index m, Index n, Index k, const S* lhs, Index lhs_stride, const S* rhs,
           Index rhs_stride, S* c, Index c_stride, S* scratch) {
    blocking_.use(scratch);
    using Product =
        ei::general_matrix_matrix_product<Index, S, LhsRowMajor ? Eigen::RowMajor : Eigen::ColMajor,
                                          false, S, RhsRowMajor ? Eigen::RowMajor : Eigen::ColMajor,
                                          false, Eigen::RowMajor, 1>;
    Product::run(m, n, k, lhs, lhs_stride, rhs, rhs_stride, c, 1, c_stride, S(1), blocking_);
  }

 private:
  /// The blocking Eigen picks for a row-major [m, n] result over depth k, which it computes as the
  /// column-major product of the transposes: mc runs over n, nc over m.
  class Blocking : public ei::level3_blocking<S, S> {
   public:
    Blocking(Index m, Index n, Index k) {
      this->m_mc = n;
      this->m_nc = m;
      this->m_kc = k;
      ei::computeProductBlockingSizes<S, S, 1, Index>(this->m_kc, this->m_mc, this->m_nc, Index{1});
    }
    std::size_t scratch_size() const {
      return lhs_size() + static_cast<std::size_t>(this->m_kc * this->m_nc);
    }
    void use(S* scratch) {
      this->m_blockA = scratch;
      this->m_blockB = scratch + lhs_size();
    }

   private:
    /// The packed lhs block, rounded up to whole cache lines so the rhs block starts on one.
    std::size_t lhs_size() const {
      constexpr std::size_t kPerLine = kCacheLineBytes / sizeof(S);
      return (static_cast<std::size_t>(this->m_mc * this->m_kc) + kPerLine - 1) / kPerLine *
             kPerLine;
    }
  };

  Blocking blocking_;
};

}  // namespace moe::simd
