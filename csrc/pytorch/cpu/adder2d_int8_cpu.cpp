// CPU driver of adder2d_int8: input layout, weight packing, threads.
//
// - The input is read as NHWC bytes. Where it has padding (or is not
//   channels_last) it is copied once into a padded NHWC buffer whose border
//   holds pad_value, so every tap of every position is in bounds: the tiles
//   read a position's bytes straight from it, with no bounds tests and no
//   im2col (a 3x3 im2col would write 9x the bytes of this copy).
// - Where C/groups is a multiple of 8, every 8-byte piece of K lies inside
//   one tap: piece k of position q is at base(q) + koff[k]. Otherwise each
//   chunk of positions is im2col'ed into rows of K bytes (padded to 8 with
//   zeros, as are the weights: |0 - 0| adds nothing) and the same tiles
//   read the rows.
// - Weights are packed once per call into [group][O-block][K/8][nob][8].
// - Tasks are (group, chunk of positions over all images); per chunk the
//   tiles of one O-block run over every position before the next block, so
//   the block's weights stay in L1/L2. Each task writes its own NHWC output
//   rows. Integer sums are exact: any split gives the same bits.
#include "adder2d_int8_cpu.h"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "adder2d_int8_kernels.h"
#include "cpu_isa.h"

namespace adder_mm {

namespace {

using cpu::Int8KernelTable;
using cpu::Int8Tile;

// Positions per chunk: about this many bytes of K rows (the im2col buffer,
// or the share of the input the chunk reads), L2-resident.
constexpr int64_t kChunkBytes = 128 * 1024;
// Chunks per group the chunk size aims to leave at least (batch-1 calls
// still feed every thread).
constexpr int64_t kMinChunks = 8;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The table of the active level, read once per call.
const Int8KernelTable& table(cpu::Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  static const Int8KernelTable avx512 = cpu::int8_avx512_table();
  static const Int8KernelTable avx2 = cpu::int8_avx2_table();
  if (isa >= cpu::Isa::kAvx512) return avx512;
  if (isa >= cpu::Isa::kAvx2) return avx2;
#endif
  static const Int8KernelTable generic = cpu::int8_generic_table();
  return generic;
}

// The tile shape with the least padded work for Og output channels (ties:
// the widest, whose loads feed more vpsadbw).
Int8KernelTable::Variant pick(const Int8KernelTable& t, int64_t Og) {
  Int8KernelTable::Variant best = t.v[0];
  int64_t best_pad = ceil_div(Og, best.nob) * best.nob;
  for (int i = 1; i < t.count; ++i) {
    const int64_t pad = ceil_div(Og, t.v[i].nob) * t.v[i].nob;
    if (pad < best_pad) {
      best = t.v[i];
      best_pad = pad;
    }
  }
  return best;
}

// Uninitialised scratch from the c10 CPU allocator, one 64-byte aligned
// slice per thread; allocated on the calling thread.
template <typename T>
class Scratch {
 public:
  Scratch(int64_t per_thread, int64_t threads)
      : stride_(((std::max<int64_t>(per_thread, 1) * sizeof(T) + 63) / 64) *
                64 / sizeof(T)),
        data_(c10::GetCPUAllocator()->allocate(stride_ * threads * sizeof(T))) {}
  T* slice(int64_t thread) const {
    return static_cast<T*>(data_.get()) + thread * stride_;
  }

 private:
  int64_t stride_;
  at::DataPtr data_;
};

// qx as NHWC bytes with the padding materialised (pad_value), or qx itself
// where it already is channels_last without padding.
at::Tensor padded_nhwc(const at::Tensor& qx, int64_t pad_value,
                       const Adder2dParams& p) {
  if (p.pad_h == 0 && p.pad_w == 0)
    return qx.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t Hp = p.H + 2 * p.pad_h, Wp = p.W + 2 * p.pad_w;
  at::Tensor xb = at::empty(
      {p.N, p.C, Hp, Wp},
      qx.options().memory_format(at::MemoryFormat::ChannelsLast));
  const at::Scalar pad(pad_value);
  if (p.pad_h > 0) {
    xb.narrow(2, 0, p.pad_h).fill_(pad);
    xb.narrow(2, p.pad_h + p.H, p.pad_h).fill_(pad);
  }
  at::Tensor rows = xb.narrow(2, p.pad_h, p.H);
  if (p.pad_w > 0) {
    rows.narrow(3, 0, p.pad_w).fill_(pad);
    rows.narrow(3, p.pad_w + p.W, p.pad_w).fill_(pad);
  }
  rows.narrow(3, p.pad_w, p.W).copy_(qx);
  return xb;
}

}  // namespace

void adder2d_int8_cpu(const at::Tensor& qx, const at::Tensor& qw,
                      int64_t pad_value, const float* scale,
                      const float* bias, at::Tensor& out,
                      const Adder2dParams& p) {
  const Int8KernelTable& kt = table(cpu::active_isa());
  const int64_t G = p.groups, Cg = p.cin_per_group(), Og = p.cout_per_group();
  const int64_t KK = p.KH * p.KW, K = p.K(), L = p.L(), NL = p.N * L;
  const int64_t K8 = ceil_div(K, 8), Kp = K8 * 8;
  const Int8KernelTable::Variant var = pick(kt, Og);
  const int nob = var.nob, mp = var.mp;
  const int64_t nobk = ceil_div(Og, nob);

  const at::Tensor xb = padded_nhwc(qx, pad_value, p);
  const int64_t Hp = p.H + 2 * p.pad_h, Wp = p.W + 2 * p.pad_w;
  const uint8_t* const xp = xb.data_ptr<uint8_t>();

  // Byte offsets from a position's (0, 0) tap: of each tap, and of each
  // 8-byte piece of K as the tiles read it.
  std::vector<int64_t> toff(KK);
  for (int64_t t = 0; t < KK; ++t)
    toff[t] = ((t / p.KW) * p.dil_h * Wp + (t % p.KW) * p.dil_w) * p.C;
  const bool direct = Cg % 8 == 0;
  std::vector<int64_t> koff(K8);
  for (int64_t k = 0; k < K8; ++k)
    koff[k] = direct ? toff[(8 * k) / Cg] + (8 * k) % Cg : 8 * k;

  // Weight rows in (kh, kw, c) order (a view when qw is channels_last),
  // packed as [G][nobk][K8][nob][8], zero past K and past Og.
  const at::Tensor wr = qw.permute({0, 2, 3, 1}).contiguous();
  const uint8_t* const wrp = wr.data_ptr<uint8_t>();
  const int64_t wblk = K8 * nob * 8;
  Scratch<uint8_t> wpk_(G * nobk * wblk, 1);
  uint8_t* const wpk = wpk_.slice(0);
  at::parallel_for(0, G * nobk, 1, [&](int64_t b, int64_t e) {
    for (int64_t gb = b; gb < e; ++gb) {
      const int64_t g = gb / nobk, ob = gb % nobk;
      uint8_t* dst = wpk + gb * wblk;
      for (int c = 0; c < nob; ++c) {
        const int64_t o = ob * nob + c;
        const uint8_t* row = wrp + (g * Og + o) * K;
        for (int64_t k = 0; k < K8; ++k) {
          uint8_t* d = dst + (k * nob + c) * 8;
          if (o < Og && 8 * k + 8 <= K) {
            std::memcpy(d, row + 8 * k, 8);
          } else {
            for (int64_t i = 0; i < 8; ++i)
              d[i] = (o < Og && 8 * k + i < K) ? row[8 * k + i] : 0;
          }
        }
      }
    }
  });

  // Scale and bias per group, padded to whole blocks.
  std::vector<float> sc, bi;
  if (scale != nullptr) {
    sc.assign(G * nobk * nob, 0.f);
    bi.assign(G * nobk * nob, 0.f);
    for (int64_t g = 0; g < G; ++g)
      for (int64_t o = 0; o < Og; ++o) {
        sc[g * nobk * nob + o] = scale[g * Og + o];
        bi[g * nobk * nob + o] = bias != nullptr ? bias[g * Og + o] : 0.f;
      }
  }

  // Chunks of positions over all images: whole tiles, about kChunkBytes of
  // K rows, at least kMinChunks per group where there are that many tiles.
  const int64_t pc_cache = std::max<int64_t>(1, kChunkBytes / Kp / mp) * mp;
  const int64_t pc_split = ceil_div(ceil_div(NL, kMinChunks), mp) * mp;
  const int64_t PC = std::max<int64_t>(mp, std::min(pc_cache, pc_split));
  const int64_t nchunk = ceil_div(NL, PC);

  const int64_t nthreads = at::get_num_threads();
  Scratch<const uint8_t*> ptrs_(PC, nthreads);
  Scratch<uint8_t> rows_(direct ? 1 : PC * Kp, nthreads);
  const bool is_f32 = scale != nullptr;
  int32_t* const yi = is_f32 ? nullptr : out.data_ptr<int32_t>();
  float* const yf = is_f32 ? out.data_ptr<float>() : nullptr;
  const int64_t O = p.O;

  at::parallel_for(0, G * nchunk, 1, [&](int64_t begin, int64_t end) {
    // Clamped: a call nested in another parallel region runs inline on a
    // thread whose number may exceed this call's thread count.
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), nthreads - 1);
    const uint8_t** const ptrs = ptrs_.slice(tid);
    uint8_t* const rows = rows_.slice(tid);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / nchunk, q0 = (task % nchunk) * PC;
      const int64_t len = std::min(PC, NL - q0);
      for (int64_t i = 0; i < len; ++i) {
        const int64_t q = q0 + i, n = q / L, l = q % L;
        const int64_t oh = l / p.OW, ow = l % p.OW;
        const uint8_t* base =
            xp + ((n * Hp + oh * p.stride_h) * Wp + ow * p.stride_w) * p.C +
            g * Cg;
        if (direct) {
          ptrs[i] = base;
        } else {
          uint8_t* row = rows + i * Kp;
          for (int64_t t = 0; t < KK; ++t)
            std::memcpy(row + t * Cg, base + toff[t], Cg);
          std::memset(row + K, 0, Kp - K);
          ptrs[i] = row;
        }
      }
      // Tail slots of the last tile read valid rows; their results are
      // not stored.
      const int64_t len_pad = ceil_div(len, mp) * mp;
      for (int64_t i = len; i < len_pad; ++i) ptrs[i] = ptrs[0];

      Int8Tile tile;
      tile.k8 = K8;
      tile.koff = koff.data();
      tile.ldo = O;
      for (int64_t ob = 0; ob < nobk; ++ob) {
        tile.w = wpk + (g * nobk + ob) * wblk;
        tile.no = static_cast<int>(std::min<int64_t>(nob, Og - ob * nob));
        const int64_t oc = g * Og + ob * nob;  // first output channel
        if (is_f32) {
          tile.scale = sc.data() + (g * nobk + ob) * nob;
          tile.bias = bi.data() + (g * nobk + ob) * nob;
        } else {
          tile.scale = tile.bias = nullptr;
        }
        for (int64_t i0 = 0; i0 < len; i0 += mp) {
          tile.x = ptrs + i0;
          tile.np = static_cast<int>(std::min<int64_t>(mp, len - i0));
          const int64_t o_off = (q0 + i0) * O + oc;
          tile.out_i32 = is_f32 ? nullptr : yi + o_off;
          tile.out_f32 = is_f32 ? yf + o_off : nullptr;
          var.fn(tile);
        }
      }
    }
  });
}

}  // namespace adder_mm
