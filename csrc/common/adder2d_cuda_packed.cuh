// Packed-pair variants of the tiled adder2d kernels for float16 and bfloat16
// inputs (ADDER_MM_CUDA_HALF2=1): two terms per instruction in 16-bit
// arithmetic, flushed into the float32 accumulators once per reduction chunk.
//
// The float path converts 16-bit inputs to float32 on load and spends two
// FP32 instructions per term (forward: subtract, add with |.|; grad_X:
// saturating add, FMA). Here both operands stay 16-bit in shared memory and a
// thread's outputs are processed two columns at a time:
//   forward  part += |a - b|                 (HSUB2, |.|, HADD2)
//   grad_X   part = fma(sat(a - xh), g, part) (HSUB2.SAT + HFMA2; bfloat16:
//            relu-FMA, min, FMA), gpart += g
// with A stored as the pair (a, a), B as two neighbouring columns. `part` is
// a 16-bit partial sum of one chunk: BK terms (8, or 16 for the narrowest
// tile), after which it is added to the float32 accumulator and restarted.
// Why per chunk: a partial of BK terms of size ~1 stays below 32, where
// float16's spacing is 2^-6 and bfloat16's 2^-3, and its roundings are
// independent of the other chunks', so the float32 sum over K / BK chunks
// carries K = 4608 with the forward's error as the float path's and
// grad_X's a few times larger (docs/kernels.md); a partial over the whole
// reduction would grow to the output's size and lose its low bits.
//
// Every operation rounds to nearest even in the 16-bit format, on the device
// (cuda_fp16 / cuda_bf16 intrinsics; bfloat16 pairs need sm_80, older GPUs
// keep the float path) and in the host versions below (exact in double, one
// rounding), so the host emulation reproduces the kernels' results bit for
// bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "adder2d_cuda_tile.cuh"

namespace adder_mm {
namespace cuda_tile {

enum class Fmt { kF16, kBF16 };

// ---- one 16-bit value ------------------------------------------------------

// Round to nearest even in `F`, from a double (host only: the device uses
// the intrinsics). Values past the largest finite one become inf.
template <Fmt F>
inline double round_host(double v) {
  constexpr int kBits = F == Fmt::kF16 ? 11 : 8;    // significand
  constexpr int kMinExp = F == Fmt::kF16 ? -14 : -126;
  if (v == 0 || !std::isfinite(v)) return v;
  int e;
  std::frexp(v, &e);  // 2^(e-1) <= |v| < 2^e
  if (e - 1 < kMinExp) e = kMinExp + 1;  // subnormal: fixed spacing
  const double q = std::ldexp(1.0, e - kBits);
  const double r = std::nearbyint(v / q) * q;  // ties to even
  const double big = F == Fmt::kF16 ? 65504.0 : 3.3895313892515355e38;
  return std::fabs(r) > big ? std::copysign(INFINITY, v) : r;
}

template <Fmt F>
ADDER_HD float bits_to_float(uint16_t b) {
#ifdef __CUDA_ARCH__
  if constexpr (F == Fmt::kF16) return __half2float(__ushort_as_half(b));
  else return __bfloat162float(__ushort_as_bfloat16(b));
#else
  if constexpr (F == Fmt::kBF16) {
    const uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  } else {
    const int exp = (b >> 10) & 31, man = b & 1023;
    const double s = (b & 0x8000) ? -1.0 : 1.0;
    if (exp == 31) return man ? NAN : float(s * INFINITY);
    if (exp == 0) return float(s * std::ldexp(double(man), -24));
    return float(s * std::ldexp(double(1024 + man), exp - 25));
  }
#endif
}

// float -> F, round to nearest even.
template <Fmt F>
ADDER_HD uint16_t float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  if constexpr (F == Fmt::kF16) return __half_as_ushort(__float2half_rn(f));
  else return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
  if (std::isnan(f)) return F == Fmt::kF16 ? 0x7e00 : 0x7fc0;
  const double r = round_host<F>(double(f));
  const uint16_t sign = std::signbit(r) ? 0x8000 : 0;
  const double a = std::fabs(r);
  if constexpr (F == Fmt::kBF16) {
    const float rf = static_cast<float>(a);  // exact
    uint32_t u;
    std::memcpy(&u, &rf, 4);
    return static_cast<uint16_t>(sign | (u >> 16));
  } else {
    if (std::isinf(a)) return sign | 0x7c00;
    if (a < std::ldexp(1.0, -14))  // subnormal (or zero)
      return static_cast<uint16_t>(sign | int(std::ldexp(a, 24)));
    int e;
    const double m = std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
    const int man = int(std::ldexp(m, 11)) - 1024;
    return static_cast<uint16_t>(sign | ((e + 14) << 10) | man);
  }
#endif
}

// A 16-bit float in global memory. It converts to and from float (rounding
// to nearest even), so the float path's index code and epilogues take it as
// their element type; the packed arithmetic reads `bits`.
template <Fmt F>
struct Half16 {
  uint16_t bits;
  Half16() = default;
  ADDER_HD explicit Half16(float f) : bits(float_to_bits<F>(f)) {}
  ADDER_HD explicit operator float() const { return bits_to_float<F>(bits); }
};

// ---- pairs: two 16-bit values in 32 bits, low half first --------------------

ADDER_HD uint32_t pk_pair(uint16_t lo, uint16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}
ADDER_HD uint16_t pk_lo(uint32_t v) { return static_cast<uint16_t>(v); }
ADDER_HD uint16_t pk_hi(uint32_t v) { return static_cast<uint16_t>(v >> 16); }

#ifdef __CUDA_ARCH__
template <Fmt F>
struct PairType {
  using type = __half2;
};
template <>
struct PairType<Fmt::kBF16> {
  using type = __nv_bfloat162;
};
template <class V>
__device__ __forceinline__ V pk_as(uint32_t u) {
  V v;
  memcpy(&v, &u, 4);
  return v;
}
template <class V>
__device__ __forceinline__ uint32_t pk_bits(V v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}
#endif

#ifndef __CUDA_ARCH__
// Host pair arithmetic: op(shift) gives one half's exact result in double
// (exact for the operands of these kernels), rounded once to F.
template <Fmt F>
inline double lane(uint32_t v, int shift) {
  return double(bits_to_float<F>(static_cast<uint16_t>(v >> shift)));
}
template <Fmt F, class Op>
inline uint32_t host_pairwise(Op op) {
  return pk_pair(float_to_bits<F>(static_cast<float>(round_host<F>(op(0)))),
                 float_to_bits<F>(static_cast<float>(round_host<F>(op(16)))));
}
#endif

// acc + |a - b| per half, two roundings each.
template <Fmt F>
ADDER_HD uint32_t pk_add_absdiff(uint32_t acc, uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  using V = typename PairType<F>::type;
  const V d = __habs2(__hsub2(pk_as<V>(a), pk_as<V>(b)));
  return pk_bits(__hadd2(pk_as<V>(acc), d));
#else
  return host_pairwise<F>([&](int s) {
    return lane<F>(acc, s) +
           std::fabs(round_host<F>(lane<F>(a, s) - lane<F>(b, s)));
  });
#endif
}

// fma(clamp(a - x, 0, 1), g, acc) per half: a rounded, saturated difference,
// then one fused multiply-add (one rounding).
template <Fmt F>
ADDER_HD uint32_t pk_fma_sat(uint32_t acc, uint32_t a, uint32_t x,
                             uint32_t g) {
#ifdef __CUDA_ARCH__
  using V = typename PairType<F>::type;
  if constexpr (F == Fmt::kBF16) {
#if __CUDA_ARCH__ >= 800
    // bfloat16 has no saturating subtract (it would take a subtract, a max
    // and a min): relu(a - x) is one fused op with the same rounding.
    const V s = __hmin2(__hfma2_relu(pk_as<V>(x), __float2bfloat162_rn(-1.f),
                                     pk_as<V>(a)),
                        __float2bfloat162_rn(1.f));
    return pk_bits(__hfma2(s, pk_as<V>(g), pk_as<V>(acc)));
#else
    __trap();  // not reached: no packed bfloat16 kernel below sm_80
    return 0u;
#endif
  } else {
    const V s = __hsub2_sat(pk_as<V>(a), pk_as<V>(x));
    return pk_bits(__hfma2(s, pk_as<V>(g), pk_as<V>(acc)));
  }
#else
  return host_pairwise<F>([&](int s) {
    const double d = round_host<F>(lane<F>(a, s) - lane<F>(x, s));
    return (d > 1.0 ? 1.0 : (d > 0.0 ? d : 0.0)) * lane<F>(g, s) +
           lane<F>(acc, s);
  });
#endif
}

// a + b per half.
template <Fmt F>
ADDER_HD uint32_t pk_add(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  using V = typename PairType<F>::type;
  return pk_bits(__hadd2(pk_as<V>(a), pk_as<V>(b)));
#else
  return host_pairwise<F>(
      [&](int s) { return lane<F>(a, s) + lane<F>(b, s); });
#endif
}

// Four 16-bit values from shared memory (8-byte aligned) as two pairs, one
// vector load on the device; A's pairs load with lds4 (adder2d_cuda_tile.cuh).
ADDER_HD void lds4_pairs(const uint16_t* s, uint32_t* v) {
#ifdef __CUDA_ARCH__
  const uint2 t = *reinterpret_cast<const uint2*>(s);
  v[0] = t.x;
  v[1] = t.y;
#else
  v[0] = pk_pair(s[0], s[1]);
  v[1] = pk_pair(s[2], s[3]);
#endif
}

// Shared memory of the packed kernels: A as (a, a) pairs, B as 16-bit values.
template <class Cfg>
struct alignas(16) SmemPacked {
  uint32_t a[2][Cfg::BK][Cfg::BM];
  uint16_t b[2][Cfg::BK][Cfg::BN];
};

// Operand moves of a packed thread (the float path's TileThread with 16-bit
// registers): A values arrive as (a, a) pairs, B as single values.
template <class Cfg>
struct PackedOperands {
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK;
  static constexpr int NT = Cfg::NT, KSTEP = Cfg::KSTEP;
  uint32_t pa[Cfg::A_PER];
  uint16_t pb[Cfg::B_PER];

  // As TileThread::load_a / load_b, keeping the bits; kHalf stores
  // 0.5 W + 0.5 rounded to F. Zero bits are +0 in both formats.
  template <bool kHalf, Fmt F>
  ADDER_HD void load_a(const Half16<F>* w, int tid, int r0, int mlim,
                       int64_t R, int64_t M) {
    ADDER_UNROLL
    for (int q = 0; q < Cfg::A_PER; ++q) {
      const int e = tid + q * NT;
      const int r = e / BM, m = e % BM;
      const bool ok = r0 + r < R && m < mlim;
      uint16_t v = w[ok ? r * M + m : 0].bits;
      if (kHalf)
        v = float_to_bits<F>(0.5f * bits_to_float<F>(v) + 0.5f);
      pa[q] = ok ? pk_pair(v, v) : 0u;
    }
  }
  template <Fmt F>
  ADDER_HD void load_b(const Half16<F>* col, const Half16<F>* any,
                       int64_t plane, int tid, int r0, int64_t R) {
    const Half16<F>* src = col != nullptr ? col : any;
    ADDER_UNROLL
    for (int q = 0; q < Cfg::B_PER; ++q) {
      const int r = r0 + tid / BN + q * KSTEP;
      const bool ok = col != nullptr && r < R;
      const uint16_t v = src[ok ? r * plane : 0].bits;
      pb[q] = ok ? v : uint16_t(0);
    }
  }
  ADDER_HD void store(SmemPacked<Cfg>& sm, int stage, int tid) const {
    ADDER_UNROLL
    for (int q = 0; q < Cfg::A_PER; ++q) {
      const int e = tid + q * NT;
      sm.a[stage][e / BM][e % BM] = pa[q];
    }
    ADDER_UNROLL
    for (int q = 0; q < Cfg::B_PER; ++q)
      sm.b[stage][tid / BN + q * KSTEP][tid % BN] = pb[q];
  }
  // This thread's TM A pairs and TN / 2 B pairs at step kk (the float
  // path's fragment layout: groups of four rows / columns).
  ADDER_HD static void fragments(const SmemPacked<Cfg>& sm, int stage, int kk,
                                 int tid, uint32_t* av, uint32_t* bv) {
    const int tx = tid % Cfg::TX, ty = tid / Cfg::TX;
    ADDER_UNROLL
    for (int q = 0; q < Cfg::TM / 4; ++q)
      lds4(&sm.a[stage][kk][q * Cfg::TY * 4 + ty * 4], &av[q * 4]);
    ADDER_UNROLL
    for (int q = 0; q < Cfg::TN / 4; ++q)
      lds4_pairs(&sm.b[stage][kk][q * Cfg::TX * 4 + tx * 4], &bv[q * 2]);
  }
};

// ---- forward ---------------------------------------------------------------

// The float path's forward thread (index math, cursor, float32 accumulators,
// epilogue) with packed loads and arithmetic.
template <class Cfg, Fmt F>
struct FwdThreadPacked : FwdThread<Cfg, Half16<F>, float> {
  using Base = FwdThread<Cfg, Half16<F>, float>;
  using Sm = SmemPacked<Cfg>;
  using Args = FwdArgs<Half16<F>>;
  static constexpr int TM = Cfg::TM, TN = Cfg::TN, BK = Cfg::BK;
  PackedOperands<Cfg> ops;

  ADDER_HD void load(const Args& a) {
    ops.template load_a<false>(
        this->wa + ((this->ti * a.p.KW + this->tj) * a.R + this->r0) * a.M,
        this->tid, this->r0, this->mlim, a.R, a.M);
    ops.load_b(this->xb, a.x, a.p.H * a.p.W, this->tid, this->r0, a.R);
  }
  ADDER_HD void store(Sm& sm, int stage) const {
    ops.store(sm, stage, this->tid);
  }
  ADDER_HD void compute(const Sm& sm, int stage) {
    uint32_t part[TM][TN / 2];
    ADDER_UNROLL
    for (int i = 0; i < TM; ++i)
      ADDER_UNROLL
      for (int j = 0; j < TN / 2; ++j) part[i][j] = 0u;
    ADDER_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      uint32_t av[TM], bv[TN / 2];
      PackedOperands<Cfg>::fragments(sm, stage, kk, this->tid, av, bv);
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i)
        ADDER_UNROLL
        for (int j = 0; j < TN / 2; ++j)
          part[i][j] = pk_add_absdiff<F>(part[i][j], av[i], bv[j]);
    }
    ADDER_UNROLL
    for (int i = 0; i < TM; ++i)
      ADDER_UNROLL
      for (int j = 0; j < TN / 2; ++j) {
        this->acc[i][2 * j] += bits_to_float<F>(pk_lo(part[i][j]));
        this->acc[i][2 * j + 1] += bits_to_float<F>(pk_hi(part[i][j]));
      }
  }
};

// ---- input gradient --------------------------------------------------------

// The float path's input-gradient thread with packed loads and arithmetic:
// A holds (0.5 W + 0.5) rounded to F, 0.5 X is kept as pairs, and the sums of
// sat(.) G and of G are 16-bit partials per chunk, flushed into the float32
// acc and gsum; the epilogue (2 acc - gsum) is the float path's.
template <class Cfg, Fmt F>
struct BwdThreadPacked : BwdThread<Cfg, Half16<F>, float> {
  using Base = BwdThread<Cfg, Half16<F>, float>;
  using Sm = SmemPacked<Cfg>;
  using Args = BwdArgs<Half16<F>>;
  static constexpr int TM = Cfg::TM, TN = Cfg::TN, BK = Cfg::BK;
  PackedOperands<Cfg> ops;
  uint32_t xhp[TM][TN / 2];  // 0.5 X of this thread's outputs, as pairs

  ADDER_HD void init(const Args& a, int64_t block, int tid_) {
    Base::init(a, block, tid_);
    ADDER_UNROLL
    for (int i = 0; i < TM; ++i)
      ADDER_UNROLL
      for (int j = 0; j < TN / 2; ++j)
        xhp[i][j] = pk_pair(float_to_bits<F>(this->xh[i][2 * j]),
                            float_to_bits<F>(this->xh[i][2 * j + 1]));
  }
  ADDER_HD void load(const Args& a) {
    ops.template load_a<true>(
        this->wa + ((this->ti * a.p.KW + this->tj) * a.R + this->r0) * a.M,
        this->tid, this->r0, this->mlim, a.R, a.M);
    ops.load_b(this->gb, a.go, a.p.L(), this->tid, this->r0, a.R);
  }
  ADDER_HD void store(Sm& sm, int stage) const {
    ops.store(sm, stage, this->tid);
  }
  ADDER_HD void compute(const Sm& sm, int stage) {
    uint32_t part[TM][TN / 2], gpart[TN / 2];
    ADDER_UNROLL
    for (int j = 0; j < TN / 2; ++j) {
      gpart[j] = 0u;
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i) part[i][j] = 0u;
    }
    ADDER_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      uint32_t av[TM], bv[TN / 2];
      PackedOperands<Cfg>::fragments(sm, stage, kk, this->tid, av, bv);
      ADDER_UNROLL
      for (int j = 0; j < TN / 2; ++j) gpart[j] = pk_add<F>(gpart[j], bv[j]);
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i)
        ADDER_UNROLL
        for (int j = 0; j < TN / 2; ++j)
          part[i][j] = pk_fma_sat<F>(part[i][j], av[i], xhp[i][j], bv[j]);
    }
    ADDER_UNROLL
    for (int j = 0; j < TN / 2; ++j) {
      this->gsum[2 * j] += bits_to_float<F>(pk_lo(gpart[j]));
      this->gsum[2 * j + 1] += bits_to_float<F>(pk_hi(gpart[j]));
      ADDER_UNROLL
      for (int i = 0; i < TM; ++i) {
        this->acc[i][2 * j] += bits_to_float<F>(pk_lo(part[i][j]));
        this->acc[i][2 * j + 1] += bits_to_float<F>(pk_hi(part[i][j]));
      }
    }
  }
};

}  // namespace cuda_tile
}  // namespace adder_mm
