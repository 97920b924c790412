// CPU driver of adder2d_int8: input layout, weight packing, threads.
//
// - The input is read as NHWC bytes (converted once where it is not
//   channels_last). A position whose taps all lie inside the image is read
//   straight from it: where C/groups is a multiple of 8, every 8-byte piece
//   of K lies inside one tap, piece k of position q at base(q) + koff[k].
//   The other positions of a chunk (on the padding border, or all where
//   C/groups is not a multiple of 8) are im2col'ed into rows of K bytes
//   (padding taps = pad_value, K padded to 8 with zeros, as are the
//   weights: |0 - 0| adds nothing). Tiles take either kind, never both
//   (one koff table per tile), and write each position's output row
//   wherever it is, so only true border positions pay for the copy.
// - Weights are packed per call into [group][O-block][K/8][nob][8] by the
//   threads together, inside the call's one parallel region (per-block
//   claim flags instead of a second region): the region's barrier is the
//   only place threads wait for each other (on a loaded machine each extra
//   region can cost a scheduler time slice).
// - Tasks are (group, chunk of positions over all images); per chunk, for
//   each panel of O-blocks (weights L2-resident), each tile of positions
//   runs the panel's blocks, writing stretches of its NHWC output rows.
//   Each task writes its own rows. Integer sums are exact: any split gives
//   the same bits.
#include "adder2d_int8_cpu.h"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <cstring>
#include <vector>

#include "adder2d_int8_kernels.h"
#include "cpu_isa.h"
#include "cpu_scratch.h"

namespace adder_mm {

namespace {

using cpu::Scratch;

using cpu::Int8KernelTable;
using cpu::Int8Tile;

// Positions per chunk: about this many bytes of K rows (the im2col buffer,
// or the share of the input the chunk reads), L2-resident. Large enough
// that for K = 4608 the tiles of a chunk reuse each O-block's weights
// (147 KiB) ~16 times from L2: 128 KiB (4 tiles) left the 3x3 512-channel
// layers 25% slower, streaming their weights from L3.
constexpr int64_t kChunkBytes = 512 * 1024;
// Packed weight bytes of the O-blocks one pass over a chunk's tiles uses.
constexpr int64_t kPanelBytes = 256 * 1024;
// Outputs of at least this many bytes are written with non-temporal
// stores (they cannot stay in the cores' L2 anyway).
constexpr int64_t kStreamBytes = 4 * 1024 * 1024;
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

// Packing state of the weight blocks, shared by the threads of one call:
// a thread claims a free block (CAS 0 -> 1), packs it and publishes it
// (release store of 2); a thread that needs a block another is packing
// waits for it. Every thread first runs claim_all() from its own starting
// block, so the packing is split between the threads without a barrier,
// and a call running inline on one thread (nested parallelism) packs
// everything itself: nobody ever waits for a thread that is not running.
class WeightBlocks {
 public:
  explicit WeightBlocks(int64_t n) : n_(n), state_(new std::atomic<int>[n]) {
    for (int64_t i = 0; i < n; ++i)
      state_[i].store(0, std::memory_order_relaxed);
  }
  // Claims and packs every free block, starting at `first`.
  template <typename Pack>
  void claim_all(int64_t first, const Pack& pack) {
    for (int64_t i = 0; i < n_; ++i) {
      const int64_t b = (first + i) % n_;
      int expected = 0;
      if (state_[b].load(std::memory_order_relaxed) == 0 &&
          state_[b].compare_exchange_strong(expected, 1,
                                            std::memory_order_acquire)) {
        pack(b);
        state_[b].store(2, std::memory_order_release);
      }
    }
  }
  // Returns once block b is packed (after claim_all every block is claimed).
  void wait(int64_t b) const {
    for (int spins = 0; state_[b].load(std::memory_order_acquire) != 2;
         ++spins) {
      if (spins > 64) std::this_thread::yield();
    }
  }

 private:
  int64_t n_;
  std::unique_ptr<std::atomic<int>[]> state_;
};

}  // namespace

void adder2d_int8_cpu(const at::Tensor& qx, const at::Tensor& qw,
                      int64_t pad_value, const float* scale,
                      const float* bias, at::Tensor& out,
                      const Adder2dParams& p) {
  if (p.K() == 0) {  // no input channels: empty sums
    if (scale == nullptr) {
      out.zero_();
    } else {
      // fma(-scale, 0, bias) = bias
      at::Tensor b = bias != nullptr
                         ? at::from_blob(const_cast<float*>(bias), {p.O},
                                         out.options())
                         : at::zeros({p.O}, out.options());
      out.copy_(b.view({1, p.O, 1, 1}).expand_as(out));
    }
    return;
  }
  const Int8KernelTable& kt = table(cpu::active_isa());
  const int64_t G = p.groups, Cg = p.cin_per_group(), Og = p.cout_per_group();
  const int64_t KK = p.KH * p.KW, K = p.K(), L = p.L(), NL = p.N * L;
  const int64_t K8 = ceil_div(K, 8), Kp = K8 * 8;
  const Int8KernelTable::Variant var = pick(kt, Og);
  const int nob = var.nob, mp = var.mp;
  const int64_t nobk = ceil_div(Og, nob);

  const at::Tensor xc = qx.contiguous(at::MemoryFormat::ChannelsLast);
  const uint8_t* const xp = xc.data_ptr<uint8_t>();

  // Byte offsets of the 8-byte pieces of K as the tiles read them: from an
  // interior position's (0, 0) tap in the input, or along an im2col row.
  const bool direct = Cg % 8 == 0;
  std::vector<int64_t> koff_in(K8), koff_row(K8);
  for (int64_t k = 0; k < K8; ++k) {
    const int64_t t = (8 * k) / Cg, c = (8 * k) % Cg;
    koff_in[k] =
        ((t / p.KW) * p.dil_h * p.W + (t % p.KW) * p.dil_w) * p.C + c;
    koff_row[k] = 8 * k;
  }
  const int64_t span_h = (p.KH - 1) * p.dil_h, span_w = (p.KW - 1) * p.dil_w;
  // Row and column offset of each tap (im2col of the border positions).
  std::vector<int64_t> tap_dh(KK), tap_dw(KK);
  for (int64_t t = 0; t < KK; ++t) {
    tap_dh[t] = (t / p.KW) * p.dil_h;
    tap_dw[t] = (t % p.KW) * p.dil_w;
  }

  // Weights packed as [G][nobk][K8][nob][8], zero past K and past Og, from
  // rows in (kh, kw, c) order: qw's own rows where it is channels_last,
  // else gathered through its strides into one row at a time (L1-sized;
  // ATen's permute().contiguous() took 2.4 ms for 512x512x3x3 uint8, this
  // 0.5 ms on one core, a channels_last qw only the 8-byte copies). The
  // threads pack the blocks together inside the one parallel region (see
  // WeightBlocks), so the call keeps a single barrier.
  const uint8_t* const wsrc = qw.data_ptr<uint8_t>();
  const int64_t sO = qw.stride(0), sC = qw.stride(1), sH = qw.stride(2),
                sW = qw.stride(3);
  const bool rows_direct = (Cg == 1 || sC == 1) && (p.KW == 1 || sW == Cg) &&
                           (p.KH == 1 || sH == p.KW * Cg);
  const int64_t wblk = K8 * nob * 8;
  Scratch<uint8_t> wpk_(G * nobk * wblk, 1);
  uint8_t* const wpk = wpk_.slice(0);
  // Packs block gb; row_buf holds K bytes.
  auto pack_block = [&](int64_t gb, uint8_t* row_buf) {
    // Locals, not the captured references: the byte stores below may alias
    // anything, which made the compiler reload those in the inner loop.
    const int64_t kh = p.KH, kw = p.KW, cg = Cg, sc = sC, sh = sH, sw = sW;
    const int64_t k_ = K, k8 = K8, og = Og, o_base = (gb / nobk) * Og;
    const int nb = nob;
    const bool direct_rows = rows_direct;
    const uint8_t* const src0 = wsrc;
    const int64_t so = sO, ob = gb % nobk;
    uint8_t* const dst = wpk + gb * wblk;
    for (int r = 0; r < nb; ++r) {
      const int64_t o = ob * nb + r;
      if (o >= og) {
        for (int64_t k = 0; k < k8; ++k)
          std::memset(dst + (k * nb + r) * 8, 0, 8);
        continue;
      }
      const uint8_t* src = src0 + (o_base + o) * so;
      const uint8_t* row = src;
      if (!direct_rows) {
        uint8_t* rb = row_buf;
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j, rb += cg) {
            const uint8_t* s = src + i * sh + j * sw;
            for (int64_t c = 0; c < cg; ++c) rb[c] = s[c * sc];
          }
        row = row_buf;
      }
      for (int64_t k = 0; k < k_ / 8; ++k)
        std::memcpy(dst + (k * nb + r) * 8, row + 8 * k, 8);
      if (k_ % 8 != 0) {
        uint8_t* d = dst + ((k8 - 1) * nb + r) * 8;
        for (int64_t i = 0; i < 8; ++i)
          d[i] = 8 * (k8 - 1) + i < k_ ? row[8 * (k8 - 1) + i] : 0;
      }
    }
  };
  WeightBlocks wblocks(G * nobk);

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

  // Chunks of positions over all images: whole tiles, at most about
  // kChunkBytes of im2col rows, at least kMinChunks per group, and as many
  // tasks of about equal size as make whole rounds of the threads (the
  // static split of parallel_for then gives every thread the same work:
  // 15 chunks on 2 threads left one idle 1/15 of the call). Sums are
  // exact, so the split changes no result.
  const int64_t nthreads = at::get_num_threads();
  const int64_t pc_cache = std::max<int64_t>(1, kChunkBytes / Kp / mp) * mp;
  const int64_t ntiles = ceil_div(NL, mp);
  int64_t nchunk = std::max(ceil_div(NL, pc_cache), kMinChunks);
  nchunk = std::min(ntiles, ceil_div(G * nchunk, nthreads) * nthreads / G);
  nchunk = std::max<int64_t>(1, nchunk);
  const int64_t PC = ceil_div(ntiles, nchunk) * mp;
  nchunk = ceil_div(NL, PC);

  // O-blocks whose packed weights (about kPanelBytes, L2-resident) the
  // tiles of a chunk run through position by position: a tile's outputs
  // are then whole stretches of the NHWC rows, written once, instead of
  // narrow columns of a chunk-sized block revisited per O-block.
  const int64_t obs_per_panel =
      std::max<int64_t>(1, std::min(nobk, kPanelBytes / wblk));

  // Per thread: the chunk's positions in two lists, those read straight
  // from the input ([0, S)) and those read from im2col rows ([S, 2S)), each
  // padded to whole tiles.
  const int64_t S = PC + mp;
  Scratch<const uint8_t*> ptrs_(2 * S, nthreads);
  Scratch<int64_t> orows_(2 * S, nthreads);
  Scratch<uint8_t> rows_(PC * Kp, nthreads);
  Scratch<uint8_t> wrow_(rows_direct ? 1 : K, nthreads);
  const uint8_t padb = static_cast<uint8_t>(pad_value);
  const bool is_f32 = scale != nullptr;
  int32_t* const yi = is_f32 ? nullptr : out.data_ptr<int32_t>();
  float* const yf = is_f32 ? out.data_ptr<float>() : nullptr;
  const int64_t O = p.O;
  // Non-temporal stores where the output outgrows the L2 caches: storing
  // through the cache reads every line first (RFO) and evicts the weights
  // and input rows the tiles reuse; 15-30% on the 56x56 and 28x28 1x1
  // layers of ResNet-50. Every full-width store is then 64-byte aligned:
  // rows and group offsets are multiples of 16 channels.
  const bool stream =
      out.numel() * 4 >= kStreamBytes && O % 16 == 0 && Og % 16 == 0 &&
      reinterpret_cast<uintptr_t>(out.data_ptr()) % 64 == 0;

  at::parallel_for(0, G * nchunk, 1, [&](int64_t begin, int64_t end) {
    // Clamped: a call nested in another parallel region runs inline on a
    // thread whose number may exceed this call's thread count.
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), nthreads - 1);
    const uint8_t** const ptrs = ptrs_.slice(tid);
    int64_t* const orows = orows_.slice(tid);
    uint8_t* const rows = rows_.slice(tid);
    // Threads start packing at blocks spread like their tasks.
    wblocks.claim_all(begin * G * nobk / std::max<int64_t>(1, G * nchunk),
                      [&](int64_t gb) { pack_block(gb, wrow_.slice(tid)); });
    // Locals, not the captured references, in the per-position loop: its
    // int64 and byte stores may alias them, which made the compiler reload
    // every one per position (the loop cost as much as the tiles where
    // O = 16 and K = 144).
    const int64_t H = p.H, W = p.W, C = p.C, OH = p.OH, OW = p.OW;
    const int64_t sh = p.stride_h, sw = p.stride_w, ph = p.pad_h,
                  pw = p.pad_w;
    const int64_t* const tap_h = tap_dh.data();
    const int64_t* const tap_w = tap_dw.data();
    const int64_t cg = Cg, kk = KK, k_ = K, kp = Kp, l_ = L, o_ = O;
    const int64_t sph = span_h, spw = span_w, S_ = S;
    const bool dir = direct;
    // Output columns whose taps all lie inside the image horizontally.
    const int64_t ow_lo = std::min(OW, (pw + sw - 1) / sw);
    const int64_t ow_hi =
        W - 1 - spw + pw >= 0 ? std::min(OW, (W - 1 - spw + pw) / sw + 1) : 0;
    // 1x1 layers with rows of at least 4 cache lines: the next tile's rows
    // are prefetched (10-30% on ResNet-50's 256- and 512-channel 1x1
    // layers, whose input streams from memory; it cost time below that).
    const int64_t pf_bytes = (KK == 1 && Cg >= 256) ? Cg : 0;
    const uint8_t pad_byte = padb;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / nchunk, q0 = (task % nchunk) * PC;
      const int64_t len = std::min(PC, NL - q0);
      const uint8_t* const xg = xp + g * cg;
      int64_t nd = 0, nr = 0;  // positions read directly / via rows
      // One output row (n, oh) at a time: its interior columns [ow_lo,
      // ow_hi) are read in place (when the row's taps are inside the image
      // vertically) in a tight loop, the others are im2col'ed. Per position
      // the old test-every-position loop cost as much as a third of the
      // tiles where C = 16 and K = 144.
      int64_t n = q0 / l_, oh = (q0 % l_) / OW, ow = (q0 % l_) % OW;
      for (int64_t q = q0; q < q0 + len;) {
        const int64_t ow_end = std::min(OW, ow + (q0 + len - q));
        const int64_t qrow = q - ow;  // q of column 0 of this row
        const int64_t ih0 = oh * sh - ph;
        const bool rows_in = dir && ih0 >= 0 && ih0 + sph < H;
        const int64_t d0 = rows_in ? std::min(std::max(ow_lo, ow), ow_end)
                                   : ow_end;
        const int64_t d1 = rows_in ? std::min(std::max(ow_hi, d0), ow_end)
                                   : ow_end;
        auto border = [&](int64_t c) {
          const int64_t iw0 = c * sw - pw;
          uint8_t* row = rows + nr * kp;
          for (int64_t t = 0; t < kk; ++t) {
            const int64_t ih = ih0 + tap_h[t], iw = iw0 + tap_w[t];
            uint8_t* dst = row + t * cg;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
              const uint8_t* src = xg + ((n * H + ih) * W + iw) * C;
              if (cg % 8 == 0) {  // fixed-size copies, inlined
                for (int64_t ci = 0; ci < cg; ci += 8)
                  std::memcpy(dst + ci, src + ci, 8);
              } else {
                std::memcpy(dst, src, cg);
              }
            } else {
              std::memset(dst, pad_byte, cg);
            }
          }
          if (kp > k_) std::memset(row + k_, 0, kp - k_);
          ptrs[S_ + nr] = row;
          orows[S_ + nr++] = (qrow + c) * o_;
        };
        for (int64_t c = ow; c < d0; ++c) border(c);
        {
          // iw0 = c * sw - pw >= 0 for every c here
          const uint8_t* const base = xg + ((n * H + ih0) * W - pw) * C;
          const int64_t step = sw * C;
          for (int64_t c = d0; c < d1; ++c, ++nd) {
            ptrs[nd] = base + c * step;
            orows[nd] = (qrow + c) * o_;
          }
        }
        for (int64_t c = d1; c < ow_end; ++c) border(c);
        q += ow_end - ow;
        ow = 0;
        if (++oh == OH) {
          oh = 0;
          ++n;
        }
      }
      const int64_t n_list[2] = {nd, nr};

      Int8Tile tile;
      tile.k8 = K8;
      tile.stream = stream;
      tile.scale = tile.bias = nullptr;
      for (int list = 0; list < 2; ++list) {
        // Tail slots of the list's last tile read a valid position; their
        // results are not stored.
        const uint8_t** lp = ptrs + list * S;
        for (int64_t i = n_list[list]; i < ceil_div(n_list[list], mp) * mp;
             ++i)
          lp[i] = lp[0];
      }
      for (int64_t ob0 = 0; ob0 < nobk; ob0 += obs_per_panel) {
        const int64_t ob1 = std::min(nobk, ob0 + obs_per_panel);
        for (int64_t ob = ob0; ob < ob1; ++ob) wblocks.wait(g * nobk + ob);
        for (int list = 0; list < 2; ++list) {
          tile.koff = list == 0 ? koff_in.data() : koff_row.data();
          for (int64_t i0 = 0; i0 < n_list[list]; i0 += mp) {
            tile.x = ptrs + list * S + i0;
            tile.orow = orows + list * S + i0;
            tile.np =
                static_cast<int>(std::min<int64_t>(mp, n_list[list] - i0));
#if defined(__x86_64__) || defined(__i386__)
            if (pf_bytes > 0 && list == 0 && ob0 == 0) {
              const int64_t e = std::min(n_list[0], i0 + 2 * mp);
              for (int64_t i = i0 + mp; i < e; ++i)
                for (int64_t b = 0; b < pf_bytes; b += 64)
                  _mm_prefetch(reinterpret_cast<const char*>(ptrs[i]) + b,
                               _MM_HINT_T0);
            }
#endif
            for (int64_t ob = ob0; ob < ob1; ++ob) {
              tile.w = wpk + (g * nobk + ob) * wblk;
              tile.no =
                  static_cast<int>(std::min<int64_t>(nob, Og - ob * nob));
              const int64_t oc = g * Og + ob * nob;  // first output channel
              if (is_f32) {
                tile.scale = sc.data() + (g * nobk + ob) * nob;
                tile.bias = bi.data() + (g * nobk + ob) * nob;
                tile.out_f32 = yf + oc;
              } else {
                tile.out_i32 = yi + oc;
              }
              var.fn(tile);
            }
          }
        }
      }
    }
#if defined(__x86_64__) || defined(__i386__)
    if (stream) _mm_sfence();  // order the streamed rows before the barrier
#endif
  });
}

}  // namespace adder_mm
