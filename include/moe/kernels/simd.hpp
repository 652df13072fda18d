// The library's one SIMD seam: packets of the instruction set compiled for, the operations the
// kernels run on them, streaming stores, prefetches, and the entry of Eigen's blocked GEMM. This is
// the only header that names Eigen::internal or an intrinsic; every kernel is written against the
// names below, so a new instruction set or a new Eigen touches this file alone.
//
// Packets are Eigen's (packet_traits<S>::type): AVX-512, AVX, SSE, NEON, ... as Eigen was
// configured by the compiler flags, or S itself (one lane) when Eigen does not vectorize S.
//
// A build for an x86-64 older than AVX-512 (CMake's default flags: SSE2) also gets
// moe::simd::avx512, the same names over AVX-512 intrinsics inside a target region
// (MOE_BEGIN_AVX512 ... MOE_END_AVX512), which the product kernels are compiled against a second
// time and take when the CPU has AVX-512 (cpu_has_avx512): the instruction set picked at run time,
// as oneDNN and OpenBLAS pick theirs. A build older than AVX2 with FMA also gets moe::simd::avx2,
// for CPUs with AVX2 and without AVX-512. Eigen's packets cannot serve there: Eigen is configured
// once, by the flags of the translation unit.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#include "moe/core/types.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

/// Whether the product kernels are also compiled for AVX-512 and picked at run time: x86-64, GCC or
/// Clang, a target without AVX-512, and not turned off with MOE_NO_RUNTIME_ISA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX512F__) && \
    !defined(MOE_NO_RUNTIME_ISA)
#define MOE_RUNTIME_AVX512 1
#else
#define MOE_RUNTIME_AVX512 0
#endif
/// The same for AVX2 with FMA (x86-64-v3), for CPUs that have it without AVX-512.
#if defined(__x86_64__) && defined(__GNUC__) && !(defined(__AVX2__) && defined(__FMA__)) && \
    !defined(MOE_NO_RUNTIME_ISA)
#define MOE_RUNTIME_AVX2 1
#else
#define MOE_RUNTIME_AVX2 0
#endif

#if MOE_RUNTIME_AVX512
// Every function defined between these two is compiled for AVX-512 (x86-64-v4's set), lambdas
// included; nothing may be #included in between.
// GCC 12 reports its own AVX-512 shuffles (an _mm512_undefined_ps() operand under a full mask) as
// maybe uninitialized: a false report, silenced inside the region only.
// clang-format off
#if defined(__clang__)
#define MOE_BEGIN_AVX512 \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,popcnt\"))), apply_to = function)")
#define MOE_END_AVX512 _Pragma("clang attribute pop")
#else
#define MOE_BEGIN_AVX512 \
  _Pragma("GCC push_options") \
  _Pragma("GCC target(\"avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,popcnt\")") \
  _Pragma("GCC diagnostic push") \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define MOE_END_AVX512 _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#endif
// clang-format on
#endif

#if MOE_RUNTIME_AVX2
// The same for AVX2 and FMA.
// clang-format off
#if defined(__clang__)
#define MOE_BEGIN_AVX2 \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma\"))), apply_to = function)")
#define MOE_END_AVX2 _Pragma("clang attribute pop")
#else
#define MOE_BEGIN_AVX2 \
  _Pragma("GCC push_options") \
  _Pragma("GCC target(\"avx2,fma\")") \
  _Pragma("GCC diagnostic push") \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define MOE_END_AVX2 _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#endif
// clang-format on
#endif

/// Whether the bf16 products have their AVX512-BF16 kernel (vdpbf16ps): compiled for a target
/// with it, or inside a target region (MOE_BEGIN_AVX512BF16 ... MOE_END_AVX512BF16) on any x86-64
/// built by GCC or Clang, taken where the CPU has it (cpu_has_avx512bf16).
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define MOE_AVX512BF16 1
#define MOE_BEGIN_AVX512BF16
#define MOE_END_AVX512BF16
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(MOE_NO_RUNTIME_ISA)
#define MOE_AVX512BF16 1
// clang-format off
#if defined(__clang__)
#define MOE_BEGIN_AVX512BF16 \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma\"))), apply_to = function)")
#define MOE_END_AVX512BF16 _Pragma("clang attribute pop")
#else
#define MOE_BEGIN_AVX512BF16 \
  _Pragma("GCC push_options") \
  _Pragma("GCC target(\"avx512f,avx512dq,avx512vl,avx512bw,avx512bf16,avx2,fma\")") \
  _Pragma("GCC diagnostic push") \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define MOE_END_AVX512BF16 _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#endif
// clang-format on
#else
#define MOE_AVX512BF16 0
#endif

#if defined(__GNUC__)
#define MOE_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define MOE_ALWAYS_INLINE __forceinline
#else
#define MOE_ALWAYS_INLINE inline
#endif

/// Unrolls the loop that follows completely (up to n iterations) at any optimization level, so a
/// register tile's accumulators stay in registers in a -O2 build too.
#if defined(__GNUC__)
#define MOE_UNROLL(n) _Pragma(MOE_UNROLL_STRING(GCC unroll n))
#define MOE_UNROLL_STRING(text) #text
#else
#define MOE_UNROLL(n)
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

/// Whether this CPU runs the AVX-512 copy of the product kernels (and the OS saves its registers),
/// read once. Always false where that copy is not compiled (MOE_RUNTIME_AVX512).
inline bool cpu_has_avx512() {
#if MOE_RUNTIME_AVX512
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
           __builtin_cpu_supports("popcnt");
  }();
  return has;
#else
  return false;
#endif
}

/// Whether this CPU runs the AVX2 copy of the product kernels (AVX2 and FMA), read once. Always
/// false where that copy is not compiled (MOE_RUNTIME_AVX2).
inline bool cpu_has_avx2() {
#if MOE_RUNTIME_AVX2
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

/// Whether this CPU runs the AVX512-BF16 kernel of the bf16 products (vdpbf16ps with AVX-512BW and
/// VL), read once. Always false where that kernel is not compiled (MOE_AVX512BF16).
inline bool cpu_has_avx512bf16() {
#if MOE_AVX512BF16
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
  }();
  return has;
#else
  return false;
#endif
}

}  // namespace moe::simd

#if MOE_RUNTIME_AVX512
MOE_BEGIN_AVX512
/// The names above over AVX-512 packets of float and double, for the product kernels' run-time
/// copy. `madd` is fused, scalars included (std::fma), as in a build for AVX-512.
namespace moe::simd::avx512 {

template <class S>
struct PacketOf;
template <>
struct PacketOf<float> {
  using type = __m512;
};
template <>
struct PacketOf<double> {
  using type = __m512d;
};

template <class S>
using Packet = typename PacketOf<S>::type;
template <class S>
inline constexpr Index kLanes = static_cast<Index>(64 / sizeof(S));
template <class S>
inline constexpr bool kVectorized = true;
inline constexpr int kVectorRegisters = 32;
using moe::simd::kCacheLineBytes;
using moe::simd::prefetch;

MOE_ALWAYS_INLINE __m512 load(const float* p) { return _mm512_load_ps(p); }
MOE_ALWAYS_INLINE __m512d load(const double* p) { return _mm512_load_pd(p); }
MOE_ALWAYS_INLINE __m512 loadu(const float* p) { return _mm512_loadu_ps(p); }
MOE_ALWAYS_INLINE __m512d loadu(const double* p) { return _mm512_loadu_pd(p); }
MOE_ALWAYS_INLINE void store(float* p, __m512 v) { _mm512_store_ps(p, v); }
MOE_ALWAYS_INLINE void store(double* p, __m512d v) { _mm512_store_pd(p, v); }
MOE_ALWAYS_INLINE void storeu(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
MOE_ALWAYS_INLINE void storeu(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
MOE_ALWAYS_INLINE __m512 broadcast(float x) { return _mm512_set1_ps(x); }
MOE_ALWAYS_INLINE __m512d broadcast(double x) { return _mm512_set1_pd(x); }
MOE_ALWAYS_INLINE __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
MOE_ALWAYS_INLINE __m512d add(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
MOE_ALWAYS_INLINE __m512 madd(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
MOE_ALWAYS_INLINE __m512d madd(__m512d a, __m512d b, __m512d c) { return _mm512_fmadd_pd(a, b, c); }
MOE_ALWAYS_INLINE float madd(float a, float b, float c) { return std::fma(a, b, c); }
MOE_ALWAYS_INLINE double madd(double a, double b, double c) { return std::fma(a, b, c); }
MOE_ALWAYS_INLINE __m512 sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
MOE_ALWAYS_INLINE __m512d sub(__m512d a, __m512d b) { return _mm512_sub_pd(a, b); }
MOE_ALWAYS_INLINE __m512 mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
MOE_ALWAYS_INLINE __m512d mul(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
MOE_ALWAYS_INLINE __m512 div(__m512 a, __m512 b) { return _mm512_div_ps(a, b); }
MOE_ALWAYS_INLINE __m512d div(__m512d a, __m512d b) { return _mm512_div_pd(a, b); }

/// The first `count` < kLanes<S> lanes of p (the rest zero), and their store: a row's last
/// partial packet, without reading or writing past the row.
MOE_ALWAYS_INLINE __m512 load_first(const float* p, Index count) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p);
}
MOE_ALWAYS_INLINE __m512d load_first(const double* p, Index count) {
  return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p);
}
MOE_ALWAYS_INLINE void store_first(float* p, __m512 v, Index count) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v);
}
MOE_ALWAYS_INLINE void store_first(double* p, __m512d v, Index count) {
  _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << count) - 1), v);
}

/// exp of each lane, Cephes' expf (S. Moshier): x clamped to +-88.723, n = floor(x log2(e) + 1/2),
/// r = x - n ln 2 in two parts, a degree-5 polynomial in r, scaled by 2^n. Relative error below
/// 2 ulp; +inf gives +inf (the final max with x, as Eigen's pexp).
MOE_ALWAYS_INLINE __m512 exp(__m512 x) {
  const __m512 clamped =
      _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.723f)), _mm512_set1_ps(-88.723f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_fmadd_ps(clamped, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), clamped);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  const __m512 r2 = _mm512_mul_ps(r, r), r3 = _mm512_mul_ps(r2, r);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
  __m512 y1 =
      _mm512_fmadd_ps(_mm512_set1_ps(4.1665795894e-2f), r, _mm512_set1_ps(1.6666665459e-1f));
  const __m512 y2 = _mm512_add_ps(r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y1 = _mm512_fmadd_ps(y1, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, r3, y1);
  y = _mm512_fmadd_ps(y, r2, y2);
  return _mm512_max_ps(_mm512_scalef_ps(y, n), x);
}

/// exp of each lane, Cephes' exp (S. Moshier): x clamped to +-709.784, n = floor(x log2(e) + 1/2),
/// r = x - n ln 2 in two parts, the rational approximation 1 + 2 P(r^2) r / (Q(r^2) - P(r^2) r),
/// scaled by 2^n.
MOE_ALWAYS_INLINE __m512d exp(__m512d x) {
  const __m512d clamped =
      _mm512_max_pd(_mm512_min_pd(x, _mm512_set1_pd(709.784)), _mm512_set1_pd(-709.784));
  const __m512d n = _mm512_roundscale_pd(
      _mm512_fmadd_pd(_mm512_set1_pd(1.4426950408889634073599), clamped, _mm512_set1_pd(0.5)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_sub_pd(clamped, _mm512_mul_pd(n, _mm512_set1_pd(0.693145751953125)));
  r = _mm512_sub_pd(r, _mm512_mul_pd(n, _mm512_set1_pd(1.42860682030941723212e-6)));
  const __m512d r2 = _mm512_mul_pd(r, r);
  __m512d p = _mm512_fmadd_pd(_mm512_set1_pd(1.26177193074810590878e-4), r2,
                              _mm512_set1_pd(3.02994407707441961300e-2));
  p = _mm512_mul_pd(_mm512_fmadd_pd(p, r2, _mm512_set1_pd(9.99999999999999999910e-1)), r);
  __m512d q = _mm512_fmadd_pd(_mm512_set1_pd(3.00198505138664455042e-6), r2,
                              _mm512_set1_pd(2.52448340349684104192e-3));
  q = _mm512_fmadd_pd(q, r2, _mm512_set1_pd(2.27265548208155028766e-1));
  q = _mm512_fmadd_pd(q, r2, _mm512_set1_pd(2.00000000000000000009e0));
  const __m512d e = _mm512_fmadd_pd(_mm512_set1_pd(2.0), _mm512_div_pd(p, _mm512_sub_pd(q, p)),
                                    _mm512_set1_pd(1.0));
  return _mm512_max_pd(_mm512_scalef_pd(e, n), x);
}

/// `kLanes<S>` packets, transposed in place: lane j of packet i becomes lane i of packet j.
template <class S>
struct PacketSquare;

/// 16 x 16 floats: pairs of rows interleaved (unpack), then pairs of pairs (as doubles), then
/// 128-bit lanes gathered across four rows twice (shuffle_f32x4).
template <>
struct PacketSquare<float> {
  __m512 rows[16];
  MOE_ALWAYS_INLINE __m512& operator[](Index i) { return rows[i]; }
  MOE_ALWAYS_INLINE void transpose() {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4i + c], 128-bit lane L: column 4L + c of rows 4i .. 4i + 3.
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 2; ++h) {
        const __m512d a = _mm512_castps_pd(t[4 * i + h]), b = _mm512_castps_pd(t[4 * i + h + 2]);
        u[4 * i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        u[4 * i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
      }
    for (int c = 0; c < 4; ++c) {
      const __m512 even_lo = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
      const __m512 odd_lo = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xdd);
      const __m512 even_hi = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
      const __m512 odd_hi = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xdd);
      rows[c] = _mm512_shuffle_f32x4(even_lo, even_hi, 0x88);
      rows[8 + c] = _mm512_shuffle_f32x4(even_lo, even_hi, 0xdd);
      rows[4 + c] = _mm512_shuffle_f32x4(odd_lo, odd_hi, 0x88);
      rows[12 + c] = _mm512_shuffle_f32x4(odd_lo, odd_hi, 0xdd);
    }
  }
};

/// 8 x 8 doubles: pairs of rows interleaved, then 128-bit lanes gathered across rows twice.
template <>
struct PacketSquare<double> {
  __m512d rows[8];
  MOE_ALWAYS_INLINE __m512d& operator[](Index i) { return rows[i]; }
  MOE_ALWAYS_INLINE void transpose() {
    __m512d t[8];
    // t[2i + c], 128-bit lane L: column 2L + c of rows 2i, 2i + 1.
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm512_unpacklo_pd(rows[2 * i], rows[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_pd(rows[2 * i], rows[2 * i + 1]);
    }
    for (int c = 0; c < 2; ++c) {
      const __m512d even_lo = _mm512_shuffle_f64x2(t[c], t[2 + c], 0x88);
      const __m512d odd_lo = _mm512_shuffle_f64x2(t[c], t[2 + c], 0xdd);
      const __m512d even_hi = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0x88);
      const __m512d odd_hi = _mm512_shuffle_f64x2(t[4 + c], t[6 + c], 0xdd);
      rows[c] = _mm512_shuffle_f64x2(even_lo, even_hi, 0x88);
      rows[4 + c] = _mm512_shuffle_f64x2(even_lo, even_hi, 0xdd);
      rows[2 + c] = _mm512_shuffle_f64x2(odd_lo, odd_hi, 0x88);
      rows[6 + c] = _mm512_shuffle_f64x2(odd_lo, odd_hi, 0xdd);
    }
  }
};

}  // namespace moe::simd::avx512
MOE_END_AVX512
#endif

#if MOE_RUNTIME_AVX2
MOE_BEGIN_AVX2
/// The names above over AVX2 packets of float and double, for the product kernels' run-time copy
/// on CPUs without AVX-512. `madd` is fused, scalars included (std::fma).
namespace moe::simd::avx2 {

template <class S>
struct PacketOf;
template <>
struct PacketOf<float> {
  using type = __m256;
};
template <>
struct PacketOf<double> {
  using type = __m256d;
};

template <class S>
using Packet = typename PacketOf<S>::type;
template <class S>
inline constexpr Index kLanes = static_cast<Index>(32 / sizeof(S));
template <class S>
inline constexpr bool kVectorized = true;
inline constexpr int kVectorRegisters = 16;
using moe::simd::kCacheLineBytes;
using moe::simd::prefetch;

MOE_ALWAYS_INLINE __m256 load(const float* p) { return _mm256_load_ps(p); }
MOE_ALWAYS_INLINE __m256d load(const double* p) { return _mm256_load_pd(p); }
MOE_ALWAYS_INLINE __m256 loadu(const float* p) { return _mm256_loadu_ps(p); }
MOE_ALWAYS_INLINE __m256d loadu(const double* p) { return _mm256_loadu_pd(p); }
MOE_ALWAYS_INLINE void store(float* p, __m256 v) { _mm256_store_ps(p, v); }
MOE_ALWAYS_INLINE void store(double* p, __m256d v) { _mm256_store_pd(p, v); }
MOE_ALWAYS_INLINE void storeu(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
MOE_ALWAYS_INLINE void storeu(double* p, __m256d v) { _mm256_storeu_pd(p, v); }
MOE_ALWAYS_INLINE __m256 broadcast(float x) { return _mm256_set1_ps(x); }
MOE_ALWAYS_INLINE __m256d broadcast(double x) { return _mm256_set1_pd(x); }
MOE_ALWAYS_INLINE __m256 add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
MOE_ALWAYS_INLINE __m256d add(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
MOE_ALWAYS_INLINE __m256 madd(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
MOE_ALWAYS_INLINE __m256d madd(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
MOE_ALWAYS_INLINE float madd(float a, float b, float c) { return std::fma(a, b, c); }
MOE_ALWAYS_INLINE double madd(double a, double b, double c) { return std::fma(a, b, c); }

/// `kLanes<S>` packets, transposed in place: lane j of packet i becomes lane i of packet j.
template <class S>
struct PacketSquare;

/// 8 x 8 floats: pairs of rows interleaved, then pairs of pairs (shuffle), then the 128-bit halves
/// of rows i and i + 4 exchanged.
template <>
struct PacketSquare<float> {
  __m256 rows[8];
  MOE_ALWAYS_INLINE __m256& operator[](Index i) { return rows[i]; }
  MOE_ALWAYS_INLINE void transpose() {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(rows[2 * i], rows[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4h + c], 128-bit half L: column 4L + c of rows 4h .. 4h + 3.
    for (int h = 0; h < 2; ++h) {
      u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
      u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xee);
      u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
      u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xee);
    }
    for (int c = 0; c < 4; ++c) {
      rows[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
      rows[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
  }
};

/// 4 x 4 doubles: pairs of rows interleaved, then the 128-bit halves exchanged.
template <>
struct PacketSquare<double> {
  __m256d rows[4];
  MOE_ALWAYS_INLINE __m256d& operator[](Index i) { return rows[i]; }
  MOE_ALWAYS_INLINE void transpose() {
    const __m256d t0 = _mm256_unpacklo_pd(rows[0], rows[1]);
    const __m256d t1 = _mm256_unpackhi_pd(rows[0], rows[1]);
    const __m256d t2 = _mm256_unpacklo_pd(rows[2], rows[3]);
    const __m256d t3 = _mm256_unpackhi_pd(rows[2], rows[3]);
    rows[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    rows[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    rows[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    rows[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
};

}  // namespace moe::simd::avx2
MOE_END_AVX2
#endif

#if MOE_AVX512BF16
MOE_BEGIN_AVX512BF16
/// vdpbf16ps and what its kernel needs around it: 16 float sums per register, each fed two bf16
/// products per instruction (a pair of depth rows side by side).
namespace moe::simd::avx512bf16 {

/// 16 float sums.
using Sums = __m512;
/// 16 pairs of bf16 values: (a, b) of lane j in its two halves, a in the low one.
using Pairs = __m512i;

/// Columns of float sums in one register.
inline constexpr Index kLanes = 16;

MOE_ALWAYS_INLINE Sums zero() { return _mm512_setzero_ps(); }
/// The 16 pairs at a 64-byte aligned `pairs`.
MOE_ALWAYS_INLINE Pairs load_pairs(const void* pairs) { return _mm512_load_si512(pairs); }
/// The pair (pair[0], pair[1]) in every lane; `pair` need not be aligned.
MOE_ALWAYS_INLINE Pairs broadcast_pair(const void* pair) {
  std::int32_t bits;
  std::memcpy(&bits, pair, sizeof bits);
  return _mm512_set1_epi32(bits);
}
/// The pair (value[0], 0) in every lane: the last of an odd depth.
MOE_ALWAYS_INLINE Pairs broadcast_first(const void* value) {
  std::uint16_t bits;
  std::memcpy(&bits, value, sizeof bits);
  return _mm512_set1_epi32(static_cast<std::int32_t>(bits));
}
/// sums[j] + a[j].high * b[j].high, then + a[j].low * b[j].low, each rounded to nearest even;
/// bf16 inputs below the normal range read as zero and such sums flush to zero (vdpbf16ps, as
/// the Intel SDM specifies it and AMD Zen 4/5 run it).
MOE_ALWAYS_INLINE Sums dot_pairs(Sums sums, Pairs a, Pairs b) {
  return _mm512_dpbf16_ps(sums, (__m512bh)a, (__m512bh)b);
}
MOE_ALWAYS_INLINE Sums add(Sums a, Sums b) { return _mm512_add_ps(a, b); }
/// The first `count` <= 16 floats at `p` (the rest 0), and stores of them.
MOE_ALWAYS_INLINE Sums load_first(const float* p, Index count) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1u), p);
}
MOE_ALWAYS_INLINE void store_first(float* p, Sums v, Index count) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1u), v);
}

}  // namespace moe::simd::avx512bf16
MOE_END_AVX512BF16
#endif
