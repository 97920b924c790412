// CPU kernels of adder2d: GEMM-like blocking over packed im2col strips.
//
// Forward, per task (group g, chunk of at most PC output positions):
//   im2col the chunk into a per-thread buffer packed as [strip][K][NR], then
//   for every strip and every block of MR output channels run the register
//   tile of adder2d_cpu_kernels.h over the full K (weights packed once per
//   call as [G][O-block][K][MR]).
// grad_X, per task (image n, group g, block of input channels): for each
//   chunk, im2col the block's rows, pack grad_out as [strip][Og][NR], reduce
//   over o in the grad tile into a column buffer, and fold (col2im) it into
//   grad_X. The task owns every pixel it writes: no atomics, and each pixel
//   sums its terms in an order fixed by the shape alone, so results are
//   bit-identical run to run and for any thread count.
// Temporaries: per thread, a few chunk-sized buffers (PC*K elements, bounded
// by kChunkBytes), far below one image's im2col.
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "../adder2d.h"
#include "adder2d_cpu_isa.h"
#include "cpu_isa.h"
#include "cpu_scratch.h"

namespace adder_mm {

namespace {

using cpu::Scratch;

using cpu::KernelTable;

// Packed im2col bytes per chunk: fits the 512 KiB L2 of current cores with
// room for the weight panel.
constexpr int64_t kChunkBytes = 128 * 1024;
// Weight-panel bytes reused across the strips of a chunk (L2-resident).
constexpr int64_t kPanelBytes = 192 * 1024;
// Forward: bytes of one K-block of a strip (L1-resident while the output
// channel blocks run over it).
constexpr int64_t kStripBlockBytes = 16 * 1024;
// Forward: bytes of the per-thread accumulator [strip][Og][NR] that carries
// the partial sums of a chunk across K-blocks; it sets the strips per chunk,
// i.e. how many positions reuse each L2-resident weight block.
constexpr int64_t kFwdAccBytes = 256 * 1024;
// Forward: im2col bytes of one K-block of a chunk.
constexpr int64_t kFwdChunkBytes = 256 * 1024;
// Forward: chunks per group the chunk size aims to leave at least.
constexpr int64_t kFwdMinChunks = 4;
// grad_X: positions (over whole images) that one task owns at least.
constexpr int64_t kGradImgPositions = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The kernel table of the active ISA level (cpu_isa.h), read once per call
// so that one call never mixes the tiles of two levels. Levels without a
// table of their own use the next lower one.
template <typename T>
struct Tables;

template <>
struct Tables<float> {
  static KernelTable<float> get(cpu::Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
    static const KernelTable<float> avx512 = cpu::avx512_table_float();
    static const KernelTable<float> avx2 = cpu::avx2_table_float();
    if (isa >= cpu::Isa::kAvx512) return avx512;
    if (isa >= cpu::Isa::kAvx2) return avx2;
#endif
    static const KernelTable<float> generic = cpu::generic_table_float();
    return generic;
  }
};

template <>
struct Tables<double> {
  static KernelTable<double> get(cpu::Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
    static const KernelTable<double> avx512 = cpu::avx512_table_double();
    static const KernelTable<double> avx2 = cpu::avx2_table_double();
    if (isa >= cpu::Isa::kAvx512) return avx512;
    if (isa >= cpu::Isa::kAvx2) return avx2;
#endif
    static const KernelTable<double> generic = cpu::generic_table_double();
    return generic;
  }
};

template <typename T>
KernelTable<T> kernels() {
  return Tables<T>::get(cpu::active_isa());
}

// A run of strip slots that lie on one output row of one image.
struct Segment {
  int slot, count;
  int64_t img, oh, ow;
};

// Splits strip slots [0, valid) starting at position q into row segments.
// Positions run over images (q = img * OH * OW + oh * OW + ow), so a strip
// may span the end of one image and the start of the next: small maps (7x7)
// then waste no lanes.
int make_segments(int64_t q, int valid, int64_t OH, int64_t OW,
                  Segment* segs) {
  int n = 0, slot = 0;
  while (slot < valid) {
    const int64_t row = (q + slot) / OW, ow = (q + slot) % OW;
    const int count =
        static_cast<int>(std::min<int64_t>(valid - slot, OW - ow));
    segs[n++] = Segment{slot, count, row / OH, row % OH, ow};
    slot += count;
  }
  return n;
}

// Geometry of one im2col/col2im chunk.
struct ChunkGeom {
  const Adder2dParams* p;
  int64_t channels;  // input channels of this block
  int64_t rows;      // channels * KH * KW
  int64_t rows_pad;  // rows padded to the tile height (zero rows)
  int64_t img_stride;  // elements between images of x / grad_X
};

// im2col / col2im work one segment (a run of strip slots on one output row
// of one image) at a time: per (c, i) one bounds test, per tap one bounds
// test and a copy of `count` slots. A full-width segment at stride 1 (NR
// divides OW: the common case) is a fixed-size copy (NR elements).
// Before this structure the copies cost more than the tile reading them
// at O = 16 (ResNet-20 stage 1).

// Where a segment's taps start: the offset of its image in x / grad_X and
// the input row and column of tap (0, 0) (negative inside the padding).
struct SegmentOrigin {
  int64_t img_off, ih0, iw0;
};

inline SegmentOrigin segment_origin(const ChunkGeom& cg, const Segment& sg) {
  const Adder2dParams& p = *cg.p;
  return {sg.img * cg.img_stride, sg.oh * p.stride_h - p.pad_h,
          sg.ow * p.stride_w - p.pad_w};
}

// The slots [lo, hi) of a stride-1 run of `cnt` slots starting at input
// column iw0 that read real pixels (the rest read padding).
inline void clip_run(int64_t iw0, int cnt, int64_t W, int* lo, int* hi) {
  *lo = static_cast<int>(std::min<int64_t>(cnt, std::max<int64_t>(0, -iw0)));
  *hi = static_cast<int>(
      std::max<int64_t>(*lo, std::min<int64_t>(cnt, W - iw0)));
}

// dst[k][sg.slot + t] = Xcol[k, segment position t] for every row k of the
// block's channels (zero for padding taps).
template <typename T, int NR>
void im2col_segment(const T* x, const ChunkGeom& cg, const Segment& sg,
                    T* dst) {
  const Adder2dParams& p = *cg.p;
  const int cnt = sg.count;
  const int64_t sw = p.stride_w;
  const SegmentOrigin so = segment_origin(cg, sg);
  const T* ximg = x + so.img_off;
  const int64_t ih0 = so.ih0, iw00 = so.iw0;
  dst += sg.slot;
  for (int64_t c = 0; c < cg.channels; ++c) {
    for (int64_t i = 0; i < p.KH; ++i, dst += p.KW * NR) {
      const int64_t ih = ih0 + i * p.dil_h;
      if (ih < 0 || ih >= p.H) {
        for (int64_t j = 0; j < p.KW; ++j)
          std::memset(dst + j * NR, 0, sizeof(T) * cnt);
        continue;
      }
      const T* src = ximg + (c * p.H + ih) * p.W;
      for (int64_t j = 0; j < p.KW; ++j) {
        T* out = dst + j * NR;
        const int64_t iw0 = iw00 + j * p.dil_w;
        if (iw0 >= 0 && iw0 + (cnt - 1) * sw < p.W) {
          if (sw == 1 && cnt == NR) {
            std::memcpy(out, src + iw0, sizeof(T) * NR);
          } else if (sw == 1) {
            for (int t = 0; t < cnt; ++t) out[t] = src[iw0 + t];
          } else {
            for (int t = 0; t < cnt; ++t) out[t] = src[iw0 + t * sw];
          }
        } else if (sw == 1) {  // a padding edge: clipped copy
          int lo, hi;
          clip_run(iw0, cnt, p.W, &lo, &hi);
          for (int t = 0; t < lo; ++t) out[t] = T(0);
          for (int t = lo; t < hi; ++t) out[t] = src[iw0 + t];
          for (int t = hi; t < cnt; ++t) out[t] = T(0);
        } else {
          for (int t = 0; t < cnt; ++t) {
            const int64_t iw = iw0 + t * sw;
            out[t] = (iw >= 0 && iw < p.W) ? src[iw] : T(0);
          }
        }
      }
    }
  }
}

// buf[s][k][slot] = Xcol[k, q0 + s*NR + slot] for the block's channels
// (zero for padding taps, slots past `len` and rows past `rows`).
template <typename T, int NR>
void im2col_chunk(const T* x, const ChunkGeom& cg, int64_t q0, int64_t len,
                  T* buf) {
  const Adder2dParams& p = *cg.p;
  static_assert(NR <= 64, "a strip has at most one segment per slot");
  Segment segs[64];
  const int64_t ns = ceil_div(len, NR);
  for (int64_t s = 0; s < ns; ++s) {
    T* dst = buf + s * cg.rows_pad * NR;
    const int valid = static_cast<int>(std::min<int64_t>(NR, len - s * NR));
    const int nseg = make_segments(q0 + s * NR, valid, p.OH, p.OW, segs);
    for (int e = 0; e < nseg; ++e) im2col_segment<T, NR>(x, cg, segs[e], dst);
    if (valid < NR)
      for (int64_t k = 0; k < cg.rows; ++k)
        for (int t = valid; t < NR; ++t) dst[k * NR + t] = T(0);
    for (int64_t k = cg.rows; k < cg.rows_pad; ++k)
      for (int t = 0; t < NR; ++t) dst[k * NR + t] = T(0);
  }
}

// d[0:N] += a[0:N] in 16-byte vectors (GCC leaves the plain loop scalar
// here: it cannot rule out that d and a overlap).
template <typename T, int N>
inline void add_row(T* d, const T* a) {
  typedef T V __attribute__((vector_size(16)));
  constexpr int kV = 16 / sizeof(T);
  static_assert(N % kV == 0, "strip width must fill 16-byte vectors");
  for (int t = 0; t < N; t += kV) {
    V u, v;
    std::memcpy(&u, d + t, sizeof(V));
    std::memcpy(&v, a + t, sizeof(V));
    u += v;
    std::memcpy(d + t, &u, sizeof(V));
  }
}

// gx[c, y, x] += col[k][sg.slot + t] for every real (non-padding) pixel
// that segment position t reads at tap k: the adjoint of im2col_segment.
template <typename T, int NR>
void col2im_segment(const T* col, const ChunkGeom& cg, const Segment& sg,
                    T* gx) {
  const Adder2dParams& p = *cg.p;
  const int cnt = sg.count;
  const int64_t sw = p.stride_w;
  const SegmentOrigin so = segment_origin(cg, sg);
  T* gimg = gx + so.img_off;
  const int64_t ih0 = so.ih0, iw00 = so.iw0;
  col += sg.slot;
  for (int64_t c = 0; c < cg.channels; ++c) {
    for (int64_t i = 0; i < p.KH; ++i, col += p.KW * NR) {
      const int64_t ih = ih0 + i * p.dil_h;
      if (ih < 0 || ih >= p.H) continue;
      T* dst = gimg + (c * p.H + ih) * p.W;
      for (int64_t j = 0; j < p.KW; ++j) {
        const T* in = col + j * NR;
        const int64_t iw0 = iw00 + j * p.dil_w;
        if (iw0 >= 0 && iw0 + (cnt - 1) * sw < p.W) {
          if (sw == 1 && cnt == NR) {
            add_row<T, NR>(dst + iw0, in);
          } else {
            for (int t = 0; t < cnt; ++t) dst[iw0 + t * sw] += in[t];
          }
        } else if (sw == 1) {  // a padding edge: clipped add
          int lo, hi;
          clip_run(iw0, cnt, p.W, &lo, &hi);
          T* __restrict d = dst + iw0;
          const T* __restrict a = in;
          for (int t = lo; t < hi; ++t) d[t] += a[t];
        } else {
          for (int t = 0; t < cnt; ++t) {
            const int64_t iw = iw0 + t * sw;
            if (iw >= 0 && iw < p.W) dst[iw] += in[t];
          }
        }
      }
    }
  }
}

// gx[c, y, x] += buf[s][k][slot] for every real (non-padding) pixel read by
// slot at tap k: the adjoint of im2col_chunk, in an order fixed by the shape
// (strip, segment, tap).
template <typename T, int NR>
void col2im_chunk(const T* buf, const ChunkGeom& cg, int64_t q0, int64_t len,
                  T* gx) {
  const Adder2dParams& p = *cg.p;
  Segment segs[64];
  const int64_t ns = ceil_div(len, NR);
  for (int64_t s = 0; s < ns; ++s) {
    const T* col = buf + s * cg.rows_pad * NR;
    const int valid = static_cast<int>(std::min<int64_t>(NR, len - s * NR));
    const int nseg = make_segments(q0 + s * NR, valid, p.OH, p.OW, segs);
    for (int e = 0; e < nseg; ++e) col2im_segment<T, NR>(col, cg, segs[e], gx);
  }
}

// Virtual grid (stride-1 layers). With output positions counted on an
// OH x Wp grid (Wp >= OW, see make_vgrid; the columns ow >= OW are
// computed and dropped), tap (i, j) of position l = oh*Wp + ow reads pixel
// l + i*dh*Wp + j*dw of a zero-padded copy of the image, so the slots of a
// strip read consecutive addresses within an image: im2col is one
// contiguous copy per row k and image (fixed-size for a full strip), with
// no row segments and no bounds tests, and col2im one contiguous add. On
// maps that NR does not divide (all of ResNet-50's; ResNet-20's 16x16 and
// 8x8) and at padding edges the segment copies above cost more than the
// extra (Wp - OW)/OW lanes, the more so the larger the share of the copies
// (small O/groups, fast tiles): used where O/groups * (Wp - OW) <= lim * OW
// with the table's lim (KernelTable::vgrid_*_lim), which always includes
// the 1x1 stride-1 layers (Wp == OW: no extra lanes). The padded copies
// are per chunk (forward: the rows its positions need) or per task
// (grad_X: whole images), so scratch stays per-thread and small.
struct VGrid {
  int64_t Wp;     // padded row length
  int64_t LV;     // OH * Wp positions per image
  int64_t slack;  // elements read past a padded plane: (KW-1)*dw
};

// One zero gap of pad_w columns between rows serves as the right padding
// of a row and the left padding of the next (stride 1 reads at most pad_w
// columns past either edge), so Wp = W + pad_w, not W + 2*pad_w: half the
// extra lanes of a 3x3 layer (forward 7x7 at O = 512: 1.21x -> 1.06x the
// segment path). At least OW, which exceeds it when the padding is wider
// than the taps reach.
inline VGrid make_vgrid(const Adder2dParams& p) {
  const int64_t Wp = std::max(p.W + p.pad_w, p.OW);
  return VGrid{Wp, p.OH * Wp, (p.KW - 1) * p.dil_w};
}

inline bool use_vgrid(const Adder2dParams& p, int64_t lim) {
  const int64_t extra = make_vgrid(p).Wp - p.OW;
  return p.stride_h == 1 && p.stride_w == 1 &&
         p.cout_per_group() * extra <= lim * p.OW;
}

// dst[r][pw + x] = src[ih0 + r][x] for the rows r in [0, rows) whose input
// row ih0 + r lies in [0, H); every other element of the `rows` x Wp block
// is zero.
template <typename T>
void pad_rows(const T* src, const Adder2dParams& p, int64_t Wp, int64_t ih0,
              int64_t rows, T* dst) {
  for (int64_t r = 0; r < rows; ++r, dst += Wp) {
    const int64_t ih = ih0 + r;
    if (ih < 0 || ih >= p.H) {
      std::memset(dst, 0, sizeof(T) * Wp);
      continue;
    }
    std::memset(dst, 0, sizeof(T) * p.pad_w);
    std::memcpy(dst + p.pad_w, src + ih * p.W, sizeof(T) * p.W);
    std::memset(dst + p.pad_w + p.W, 0, sizeof(T) * (Wp - p.W - p.pad_w));
  }
}

// One image's part of a zero-padded window: `base` holds `chans` planes of
// `plane` elements (padded rows r0 .. of the image) + slack; virtual
// position l of the image (l >= r0 * Wp) reads base + l - r0 * Wp + off(k).
template <typename T>
struct WinImage {
  int64_t img, r0;
  const T* base;
  int64_t plane;
};

// im2col on the virtual grid: buf[s][k][slot] = window pixel of position
// q0 + s*NR + slot at tap k of the `chans` channels (zero for slots past
// `len` and rows past `rows`). `imgs` covers every image of [q0, q0+len).
template <typename T, int NR>
void im2col_vgrid(const WinImage<T>* imgs, const Adder2dParams& p,
                  const VGrid& vg, int64_t chans, int64_t rows,
                  int64_t rows_pad, int64_t q0, int64_t len, T* buf) {
  const int64_t ns = ceil_div(len, NR), img0 = q0 / vg.LV;
  const int64_t rstep = p.dil_h * vg.Wp;
  for (int64_t s = 0; s < ns; ++s) {
    T* dst = buf + s * rows_pad * NR;
    const int valid = static_cast<int>(std::min<int64_t>(NR, len - s * NR));
    for (int u0 = 0; u0 < valid;) {  // runs within one image
      const int64_t q = q0 + s * NR + u0, n = q / vg.LV, l = q % vg.LV;
      const int cnt =
          static_cast<int>(std::min<int64_t>(valid - u0, vg.LV - l));
      const WinImage<T>& wi = imgs[n - img0];
      const T* src = wi.base + (l - wi.r0 * vg.Wp);
      T* out = dst + u0;
      for (int64_t c = 0; c < chans; ++c)
        for (int64_t i = 0; i < p.KH; ++i)
          for (int64_t j = 0; j < p.KW; ++j, out += NR) {
            const T* in = src + c * wi.plane + i * rstep + j * p.dil_w;
            if (cnt == NR)
              std::memcpy(out, in, sizeof(T) * NR);
            else
              std::memcpy(out, in, sizeof(T) * cnt);
          }
      u0 += cnt;
    }
    if (valid < NR)
      for (int64_t k = 0; k < rows; ++k)
        for (int t = valid; t < NR; ++t) dst[k * NR + t] = T(0);
    for (int64_t k = rows; k < rows_pad; ++k)
      for (int t = 0; t < NR; ++t) dst[k * NR + t] = T(0);
  }
}

// col2im on the virtual grid, the adjoint of im2col_vgrid for a window that
// holds whole padded images (r0 = 0): gxpad pixel += buf[s][k][slot]. Taps
// j run outermost so that consecutive adds go to different rows (taps j
// and j+1 of one row overlap shifted by one element, which would stall
// store-to-load forwarding). The order is fixed by the shape.
template <typename T, int NR>
void col2im_vgrid(const T* buf, const Adder2dParams& p, const VGrid& vg,
                  int64_t chans, int64_t rows_pad, int64_t img_stride,
                  int64_t plane, int64_t q0, int64_t len, T* gxpad) {
  const int64_t ns = ceil_div(len, NR);
  const int64_t rstep = p.dil_h * vg.Wp;
  for (int64_t s = 0; s < ns; ++s) {
    const T* col = buf + s * rows_pad * NR;
    const int valid = static_cast<int>(std::min<int64_t>(NR, len - s * NR));
    for (int u0 = 0; u0 < valid;) {
      const int64_t q = q0 + s * NR + u0, n = q / vg.LV, l = q % vg.LV;
      const int cnt =
          static_cast<int>(std::min<int64_t>(valid - u0, vg.LV - l));
      T* dst = gxpad + n * img_stride + l;
      for (int64_t j = 0; j < p.KW; ++j)
        for (int64_t c = 0; c < chans; ++c)
          for (int64_t i = 0; i < p.KH; ++i) {
            T* __restrict d = dst + c * plane + i * rstep + j * p.dil_w;
            const T* __restrict a =
                col + ((c * p.KH + i) * p.KW + j) * NR + u0;
            if (cnt == NR)
              add_row<T, NR>(d, a);
            else
              for (int t = 0; t < cnt; ++t) d[t] += a[t];
          }
      u0 += cnt;
    }
  }
}

// Calls f(u, cnt, n, l) for each run of slots [u, u + cnt) of a strip
// starting at virtual position q that are real output positions (ow < OW)
// of image n, starting at output position l = oh*OW + ow.
template <typename F>
void vgrid_output_runs(const Adder2dParams& p, const VGrid& vg, int64_t q,
                       int valid, F f) {
  for (int u = 0; u < valid;) {
    const int64_t n = (q + u) / vg.LV, lv = (q + u) % vg.LV;
    const int64_t oh = lv / vg.Wp, ow = lv % vg.Wp;
    const int left = static_cast<int>(std::min<int64_t>(valid - u, vg.Wp - ow));
    if (ow < p.OW) {
      const int cnt = static_cast<int>(std::min<int64_t>(left, p.OW - ow));
      f(u, cnt, n, oh * p.OW + ow);
    }
    u += left;
  }
}

// Whether the NR slots of a strip starting at position q (virtual on the
// grid) are NR consecutive output positions of one image, which the tiles
// can then store to directly (row stride L); if so, its image n and the
// output position l of its first slot.
inline bool strip_output(const Adder2dParams& p, bool vgrid, const VGrid& vg,
                         int64_t q, int64_t nr, int64_t* n, int64_t* l) {
  if (!vgrid || vg.Wp == p.OW) {  // positions are output positions
    const int64_t L = p.L();
    *n = q / L;
    *l = q % L;
    return *l + nr <= L;
  }
  const int64_t lv = q % vg.LV, ow = lv % vg.Wp;
  *n = q / vg.LV;
  *l = lv / vg.Wp * p.OW + ow;
  return ow + nr <= p.OW;  // within the real columns of one row
}

// Forward weight panel a[k*MR + r] = w0[r*ldw + k] for k < kc, rows from
// `rows` on zero: written in order, MR rows read side by side. The loop
// with the rows outermost (strided stores) took about 3.5 cycles per
// element: 40% of a batch-1 forward of a 7x7 layer with C = O = 512.
template <int MR, typename T>
void pack_panel(const T* w0, int64_t ldw, int rows, int64_t kc, T* a) {
  const T* src[MR];
  for (int r = 0; r < MR; ++r) src[r] = w0 + (r < rows ? r : 0) * ldw;
  if (rows == MR) {
    for (int64_t k = 0; k < kc; ++k)
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) a[k * MR + r] = src[r][k];
    return;
  }
  for (int64_t k = 0; k < kc; ++k)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) a[k * MR + r] = r < rows ? src[r][k] : T(0);
}

// Chunks per group for S strips at most `most` strips each, as many as
// needed and then a few more so that the G * chunks tasks split evenly
// over `threads` (at::parallel_for gives each thread a contiguous equal
// share); chunk c holds strips [c*S/n, (c+1)*S/n), so sizes differ by at
// most one. ResNet-50's 7x7 layers (49 strips, 4 per chunk) otherwise ran
// 13 chunks on 2 threads: 28 strips against 21. Results do not depend on
// the split (each output is one chain over k in one lane).
int64_t balanced_chunks(int64_t S, int64_t most, int64_t G,
                        int64_t threads) {
  const int64_t n0 = ceil_div(S, most);
  for (int64_t n = n0; n < n0 + threads && n <= S; ++n)
    if ((G * n) % threads == 0) return n;
  return n0;
}

// Positions per chunk: whole strips, about kChunkBytes of packed im2col.
// Depends on the shape only (never on the thread count).
int64_t chunk_positions(int64_t K, int64_t L, int NR, size_t elem) {
  const int64_t strip_bytes = K * NR * static_cast<int64_t>(elem);
  const int64_t strips = std::max<int64_t>(1, kChunkBytes / strip_bytes);
  return std::min(strips, ceil_div(L, NR)) * NR;
}

template <typename T, int NR>
void forward_nr(const KernelTable<T>& kt, const T* x, const T* w, T* y,
                const Adder2dParams& p) {
  const int MR = kt.mr;
  const int64_t G = p.groups, Cg = p.cin_per_group(), Og = p.cout_per_group();
  const int64_t K = p.K(), L = p.L();
  const int64_t nob = ceil_div(Og, MR);

  // Blocking (BLIS-like; the tile is the register block):
  // - chunk: PC positions (strips of NR) over all images, so strips cross
  //   image boundaries and small maps waste no lanes; its partial sums live
  //   in `acc` ([strip][ob][MR][NR], about kFwdAccBytes);
  // - K-block: the rows of cb input channels (kc = cb*KH*KW rows), im2col'ed
  //   for the whole chunk only when needed, so the im2col buffer stays small
  //   whatever K is; one strip's block (kc x NR) stays in L1 while the tiles
  //   of a weight panel run over it;
  // - weight panel: obs_per_panel output-channel blocks of the K-block
  //   (L2-resident while all strips of the chunk stream past).
  // Each output is still one k-ascending chain in one register lane (the
  // tile continues from `acc`), so blocking changes no rounding: results
  // equal the unblocked kernel bit for bit and do not depend on threads.
  const int64_t KK = p.KH * p.KW, HW = p.H * p.W;
  const int64_t cb = std::min<int64_t>(
      Cg, std::max<int64_t>(
              1, kStripBlockBytes /
                     (KK * NR * static_cast<int64_t>(sizeof(T)))));
  const int64_t nkb = ceil_div(Cg, cb);
  // Positions: N*L, or N*OH*Wp on the virtual grid.
  const bool vgrid = use_vgrid(p, kt.vgrid_fwd_lim);
  const VGrid vg = make_vgrid(p);
  // Padding 0 and one tap column: the input itself is the padded image.
  const bool vdirect = vgrid && p.pad_h == 0 && p.pad_w == 0 && p.KW == 1;
  const int64_t NL = p.N * (vgrid ? vg.LV : L);

  // Weight panels [G][K-block][nob][kc][MR] (zero rows past Og, whose
  // results are dropped): the tiles of one K-block read one contiguous
  // stream, which the hardware prefetcher follows across blocks.
  Scratch<T> A_(G * nob * K * MR, 1);
  T* const A = A_.slice(0);
  at::parallel_for(0, G * nob, 1, [&](int64_t b, int64_t e) {
    for (int64_t gb = b; gb < e; ++gb) {
      const int64_t g = gb / nob, ob = gb % nob;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kb * cb * KK, kc = std::min(cb, Cg - kb * cb) * KK;
        T* a = A + g * nob * K * MR + (k0 * nob + ob * kc) * MR;
        const T* w0 = w + (g * Og + ob * MR) * K + k0;
        const int rows = static_cast<int>(std::min<int64_t>(MR, Og - ob * MR));
        if (MR == 8)  // every table's MR is 8 or 4 (make_table)
          pack_panel<8>(w0, K, rows, kc, a);
        else
          pack_panel<4>(w0, K, rows, kc, a);
      }
    }
  });
  const int64_t elem = sizeof(T);
  // Strips per chunk: bounded by the accumulator and the im2col buffer
  // sizes, and leaving at least kFwdMinChunks tasks per group where there
  // are that many strips (batch-1 calls still feed every thread); the
  // chunk count is then evened out over the threads.
  const int64_t S = ceil_div(NL, NR);  // strips per group
  const int64_t nthreads = at::get_num_threads();
  const int64_t strips = std::max<int64_t>(
      1, std::min({ceil_div(S, kFwdMinChunks),
                   kFwdAccBytes / (nob * MR * NR * elem),
                   kFwdChunkBytes / (cb * KK * NR * elem)}));
  const int64_t PC = strips * NR;  // positions per chunk, at most
  const int64_t nchunk = balanced_chunks(S, strips, G, nthreads);
  const int64_t obs_per_panel = std::max<int64_t>(
      1, kPanelBytes / (cb * KK * MR * static_cast<int64_t>(sizeof(T))));

  // Virtual grid: per chunk and K-block a zero-padded window of the rows
  // the chunk's images need (whole rows, plus KH-1 dilated rows below).
  const int64_t win_imgs =
      vgrid ? std::min(p.N, ceil_div(PC, vg.LV) + 1) : 0;
  const int64_t win_elems =
      vgrid && !vdirect
          ? cb * (PC + win_imgs * (2 + (p.KH - 1) * p.dil_h) * vg.Wp) +
                win_imgs * vg.slack
          : 0;
  // Fewer chunks than threads (batch 1, small maps: a 7x7 map is 2
  // strips): the output-channel blocks are split too, each part
  // im2col'ing the chunk for itself, so every thread gets tiles.
  const int64_t nos =
      std::min(nob, std::max<int64_t>(1, nthreads / (G * nchunk)));
  Scratch<T> bufs(PC * cb * KK, nthreads), accs(PC * nob * MR, nthreads),
      wins(win_elems, nthreads);
  at::parallel_for(0, G * nchunk * nos, 1, [&](int64_t begin, int64_t end) {
    // Clamped: a call nested in another parallel region runs inline on a
    // thread whose number may exceed this call's thread count.
    const int64_t tid =
        std::min<int64_t>(at::get_thread_num(), nthreads - 1);
    T* const buf = bufs.slice(tid);  // [strip][kc][NR]
    T* const acc = accs.slice(tid);  // [strip][ob][MR][NR]
    T* const win = wins.slice(tid);
    std::vector<WinImage<T>> imgs(win_imgs);
    // Per strip: where its outputs start in y when the last K-block's tiles
    // store them there directly (-1: through `acc` and the copies below).
    std::vector<int64_t> ydirect(strips);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t g = t / (nchunk * nos), c = t / nos % nchunk;
      // This task's output-channel blocks [obA, obB).
      const int64_t obA = t % nos * nob / nos, obB = (t % nos + 1) * nob / nos;
      const int64_t q0 = c * S / nchunk * NR;
      const int64_t len = std::min((c + 1) * S / nchunk * NR, NL) - q0;
      const int64_t ns = ceil_div(len, NR);
      const T* const Ag = A + g * nob * K * MR;
      for (int64_t s = 0; s < ns; ++s) {
        int64_t n, l;
        ydirect[s] = s * NR + NR <= len &&
                             strip_output(p, vgrid, vg, q0 + s * NR, NR, &n, &l)
                         ? (n * p.O + g * Og) * L + l
                         : -1;
      }
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t c0 = kb * cb, chans = std::min(cb, Cg - c0);
        const int64_t k0 = c0 * KK, kc = chans * KK;
        if (vgrid) {
          // The window of each image of [q0, q0 + len): its virtual rows
          // r0..r1 and the KH-1 dilated rows below, for the block's
          // channels.
          T* wp = win;
          const int64_t n0 = q0 / vg.LV, n1 = (q0 + len - 1) / vg.LV;
          for (int64_t n = n0; n <= n1; ++n) {
            const T* ximg = x + (n * p.C + g * Cg + c0) * HW;
            if (vdirect) {
              imgs[n - n0] = WinImage<T>{n, 0, ximg, HW};
              continue;
            }
            const int64_t a = std::max(q0, n * vg.LV) - n * vg.LV;
            const int64_t b = std::min(q0 + len, (n + 1) * vg.LV) - n * vg.LV;
            const int64_t r0 = a / vg.Wp, r1 = (b - 1) / vg.Wp;
            const int64_t wrows = r1 - r0 + 1 + (p.KH - 1) * p.dil_h;
            const int64_t plane = wrows * vg.Wp;
            for (int64_t ch = 0; ch < chans; ++ch)
              pad_rows(ximg + ch * HW, p, vg.Wp, r0 - p.pad_h, wrows,
                       wp + ch * plane);
            std::memset(wp + chans * plane, 0, sizeof(T) * vg.slack);
            imgs[n - n0] = WinImage<T>{n, r0, wp, plane};
            wp += chans * plane + vg.slack;
          }
          im2col_vgrid<T, NR>(imgs.data(), p, vg, chans, kc, kc, q0, len,
                              buf);
        } else {
          const ChunkGeom cg{&p, chans, kc, kc, p.C * HW};
          im2col_chunk<T, NR>(x + (g * Cg + c0) * HW, cg, q0, len, buf);
        }
        const bool last = kb == nkb - 1;
        for (int64_t ob0 = obA; ob0 < obB; ob0 += obs_per_panel) {
          const int64_t ob1 = std::min(obB, ob0 + obs_per_panel);
          for (int64_t s = 0; s < ns; ++s) {
            const T* bs = buf + s * kc * NR;
            for (int64_t ob = ob0; ob < ob1; ++ob) {
              T* const as = acc + (s * nob + ob) * MR * NR;
              const T* const a = Ag + (k0 * nob + ob * kc) * MR;
              if (last && ydirect[s] >= 0)
                kt.fwd_tile(kc, a, bs, kb > 0 ? as : nullptr,
                            y + ydirect[s] + ob * MR * L, L,
                            static_cast<int>(std::min<int64_t>(MR, Og - ob * MR)),
                            true);
              else
                kt.fwd_tile(kc, a, bs, kb > 0 ? as : nullptr, as, NR, MR,
                            last);
            }
          }
        }
      }
      // The task's output channels (rows of acc past Og are padding).
      const int64_t oA = obA * MR, oB = std::min(obB * MR, Og);
      for (int64_t s = 0; s < ns; ++s) {
        if (ydirect[s] >= 0) continue;  // written by the tiles
        const int valid =
            static_cast<int>(std::min<int64_t>(NR, len - s * NR));
        if (vgrid) {
          vgrid_output_runs(
              p, vg, q0 + s * NR, valid,
              [&](int u, int cnt, int64_t n, int64_t l) {
                for (int64_t o = oA; o < oB; ++o)
                  std::memcpy(y + (n * p.O + g * Og + o) * L + l,
                              acc + (s * nob * MR + o) * NR + u,
                              sizeof(T) * cnt);
              });
          continue;
        }
        // Runs of slots within one image.
        for (int u0 = 0; u0 < valid;) {
          const int64_t q = q0 + s * NR + u0, n = q / L, l = q % L;
          const int cnt =
              static_cast<int>(std::min<int64_t>(valid - u0, L - l));
          for (int64_t o = oA; o < oB; ++o) {
            std::memcpy(y + (n * p.O + g * Og + o) * L + l,
                        acc + (s * nob * MR + o) * NR + u0, sizeof(T) * cnt);
          }
          u0 += cnt;
        }
      }
    }
  });
}

template <typename T, int NR>
void backward_input_nr(const KernelTable<T>& kt, const T* go, const T* x,
                       const T* w, T* gx, const Adder2dParams& p) {
  const int MK = kt.mk;
  const int64_t G = p.groups, Cg = p.cin_per_group(), Og = p.cout_per_group();
  const int64_t K = p.K(), L = p.L(), KK = p.KH * p.KW, HW = p.H * p.W;

  // A task owns a group of consecutive images (about kGradImgPositions
  // positions), whose positions its strips run over without a break, so
  // small maps (7x7) waste few lanes. The N images are cut into nig groups
  // of nearly equal size (nimg or nimg - 1 images): ResNet-50's 7x7 layers
  // at N = 32 had groups of 6,6,6,6,6,2, so of 2 threads one folded 18
  // images and the other 14. Shape-only, never the thread count: a pixel's
  // fold order depends on its task's chunking.
  const int64_t nig = ceil_div(
      p.N, std::min<int64_t>(
               p.N, std::max<int64_t>(1, ceil_div(kGradImgPositions, L))));
  const int64_t nimg = ceil_div(p.N, nig);  // images per group, at most
  // Channel blocks give batch-1 calls work for every thread; results do not
  // depend on the split (each gcol element is its own reduction over o).
  const int64_t nthreads = at::get_num_threads();
  const int64_t ncb = std::min<int64_t>(
      Cg, std::max<int64_t>(1, ceil_div(4 * nthreads, nig * G)));
  const int64_t cpb = ceil_div(Cg, ncb);  // channels per block
  const int64_t nblk = ceil_div(Cg, cpb);
  const int64_t rows_max = cpb * KK;
  const int64_t rows_pad_max = ceil_div(rows_max, MK) * MK;

  // WT[g][blk][kb][o][r] = W[g*Og + o, k0 + kb*MK + r] (zero rows past the
  // block): one contiguous stream per grad tile.
  const int64_t nkb_max = rows_pad_max / MK;
  Scratch<T> WT_(G * nblk * nkb_max * Og * MK, 1);
  T* const WT = WT_.slice(0);
  at::parallel_for(0, G * nblk, 1, [&](int64_t b, int64_t e) {
    for (int64_t gb = b; gb < e; ++gb) {
      const int64_t g = gb / nblk, blk = gb % nblk;
      const int64_t k0 = blk * cpb * KK;
      const int64_t rows = std::min(cpb, Cg - blk * cpb) * KK;
      T* wt = WT + gb * nkb_max * Og * MK;
      for (int64_t kb = 0; kb < nkb_max; ++kb)
        for (int64_t o = 0; o < Og; ++o)
          for (int r = 0; r < MK; ++r) {
            const int64_t kr = kb * MK + r;
            wt[(kb * Og + o) * MK + r] =
                kr < rows ? w[(g * Og + o) * K + k0 + kr] : T(0);
          }
    }
  });

  // Virtual grid: the task pads its images' channels of x into xpad and
  // folds into gxpad (whole padded planes + slack), then copies gxpad's
  // interior to gx. Padding 0 with one tap column: x and gx themselves.
  const bool vgrid = use_vgrid(p, kt.vgrid_grad_lim);
  const VGrid vg = make_vgrid(p);
  const bool vdirect = vgrid && p.pad_h == 0 && p.pad_w == 0 && p.KW == 1;
  const int64_t Hp = p.H + 2 * p.pad_h, plane = vgrid ? Hp * vg.Wp : HW;
  const int64_t LT = vgrid ? vg.LV : L;  // positions per image
  const int64_t pad_elems =
      vgrid && !vdirect ? nimg * cpb * plane + vg.slack : 0;

  const int64_t PC = chunk_positions(K, nimg * LT, NR, sizeof(T));

  Scratch<T> xbufs(PC * rows_pad_max, nthreads), cbufs(PC * rows_pad_max, nthreads),
      gbufs(PC * Og, nthreads), xpads(pad_elems, nthreads),
      gxpads(pad_elems, nthreads);
  at::parallel_for(0, nig * G * nblk, 1, [&](int64_t begin, int64_t end) {
    // Clamped: a call nested in another parallel region runs inline on a
    // thread whose number may exceed this call's thread count.
    const int64_t tid =
        std::min<int64_t>(at::get_thread_num(), nthreads - 1);
    T* const xbuf = xbufs.slice(tid);
    T* const cbuf = cbufs.slice(tid);
    T* const gbuf = gbufs.slice(tid);
    std::vector<WinImage<T>> imgs(vgrid ? nimg : 0);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ig = t / (G * nblk), g = (t / nblk) % G, blk = t % nblk;
      const int64_t n0 = ig * p.N / nig;
      const int64_t ni = (ig + 1) * p.N / nig - n0;  // task images
      const int64_t TL = ni * LT;                   // task positions
      const int64_t c0 = g * Cg + blk * cpb;
      const int64_t channels = std::min(cpb, Cg - blk * cpb);
      const int64_t rows = channels * KK;
      const int64_t rows_pad = ceil_div(rows, MK) * MK;
      const ChunkGeom cg{&p, channels, rows, rows_pad, p.C * HW};
      const T* xin = x + (n0 * p.C + c0) * HW;
      T* gout = gx + (n0 * p.C + c0) * HW;
      // Where col2im folds: gx itself or the padded planes of the task.
      T* gfold = gout;
      int64_t fold_img_stride = p.C * HW;
      if (!vgrid || vdirect) {
        for (int64_t n = 0; n < ni; ++n)
          std::fill(gout + n * p.C * HW, gout + n * p.C * HW + channels * HW,
                    T(0));
      }
      if (vgrid) {
        T* const xpad = xpads.slice(tid);
        for (int64_t n = 0; n < ni; ++n) {
          if (vdirect) {
            imgs[n] = WinImage<T>{n, 0, xin + n * p.C * HW, HW};
            continue;
          }
          T* xp = xpad + n * channels * plane;
          for (int64_t ch = 0; ch < channels; ++ch)
            pad_rows(xin + n * p.C * HW + ch * HW, p, vg.Wp, -p.pad_h, Hp,
                     xp + ch * plane);
          imgs[n] = WinImage<T>{n, 0, xp, plane};
        }
        if (!vdirect) {
          std::memset(xpad + ni * channels * plane, 0, sizeof(T) * vg.slack);
          gfold = gxpads.slice(tid);
          fold_img_stride = channels * plane;
          std::fill(gfold, gfold + ni * channels * plane + vg.slack, T(0));
        }
      }
      const int64_t nchunk = ceil_div(TL, PC);
      const T* wt = WT + (g * nblk + blk) * nkb_max * Og * MK;
      for (int64_t c = 0; c < nchunk; ++c) {
        const int64_t q0 = c * PC, len = std::min(PC, TL - q0);
        const int64_t ns = ceil_div(len, NR);
        if (vgrid)
          im2col_vgrid<T, NR>(imgs.data() + q0 / LT, p, vg, channels, rows,
                              rows_pad, q0, len, xbuf);
        else
          im2col_chunk<T, NR>(xin, cg, q0, len, xbuf);
        // gbuf[s][o][slot] = G[n, g*Og + o, position of slot], zero past len
        // and in the virtual grid's dropped columns (a zero gradient adds
        // nothing there).
        for (int64_t s = 0; s < ns; ++s) {
          const int valid =
              static_cast<int>(std::min<int64_t>(NR, len - s * NR));
          if (vgrid) {
            std::fill(gbuf + s * Og * NR, gbuf + (s + 1) * Og * NR, T(0));
            vgrid_output_runs(
                p, vg, q0 + s * NR, valid,
                [&](int u, int cnt, int64_t n, int64_t l) {
                  for (int64_t o = 0; o < Og; ++o)
                    std::memcpy(gbuf + (s * Og + o) * NR + u,
                                go + ((n0 + n) * p.O + g * Og + o) * L + l,
                                sizeof(T) * cnt);
                });
            continue;
          }
          for (int u0 = 0; u0 < valid;) {  // runs within one image
            const int64_t q = q0 + s * NR + u0, n = n0 + q / L, l = q % L;
            const int cnt =
                static_cast<int>(std::min<int64_t>(valid - u0, L - l));
            for (int64_t o = 0; o < Og; ++o)
              std::memcpy(gbuf + (s * Og + o) * NR + u0,
                          go + (n * p.O + g * Og + o) * L + l,
                          sizeof(T) * cnt);
            u0 += cnt;
          }
          for (int64_t o = 0; o < Og; ++o)
            for (int u = valid; u < NR; ++u) gbuf[(s * Og + o) * NR + u] = T(0);
        }
        for (int64_t s = 0; s < ns; ++s) {
          const T* gs = gbuf + s * Og * NR;
          const T* xs = xbuf + s * rows_pad * NR;
          T* cs = cbuf + s * rows_pad * NR;
          for (int64_t kb = 0; kb < rows_pad / MK; ++kb)
            kt.bwd_tile(Og, wt + kb * Og * MK, gs, xs + kb * MK * NR,
                        cs + kb * MK * NR);
        }
        if (vgrid)
          col2im_vgrid<T, NR>(cbuf, p, vg, channels, rows_pad,
                              fold_img_stride, vdirect ? HW : plane, q0, len,
                              gfold);
        else
          col2im_chunk<T, NR>(cbuf, cg, q0, len, gout);
      }
      if (vgrid && !vdirect) {  // the interior of the padded planes
        for (int64_t n = 0; n < ni; ++n)
          for (int64_t ch = 0; ch < channels; ++ch) {
            const T* src = gfold + (n * channels + ch) * plane +
                           p.pad_h * vg.Wp + p.pad_w;
            T* dst = gout + n * p.C * HW + ch * HW;
            for (int64_t yy = 0; yy < p.H; ++yy)
              std::memcpy(dst + yy * p.W, src + yy * vg.Wp,
                          sizeof(T) * p.W);
          }
      }
    }
  });
}

// The strip width is a compile-time constant of im2col/col2im (fixed-size
// copies); the tables use 4, 8, 16 or 32 (AVX-512 float).
#define ADDER_DISPATCH_NR(nr, ...)                                        \
  switch (nr) {                                                           \
    case 4: { constexpr int kNR = 4; __VA_ARGS__; break; }                \
    case 8: { constexpr int kNR = 8; __VA_ARGS__; break; }                \
    case 16: { constexpr int kNR = 16; __VA_ARGS__; break; }              \
    case 32: { constexpr int kNR = 32; __VA_ARGS__; break; }              \
    default: TORCH_CHECK(false, "adder2d: unsupported strip width ", nr); \
  }

template <typename T>
void forward_impl(const T* x, const T* w, T* y, const Adder2dParams& p) {
  const KernelTable<T> kt = kernels<T>();
  ADDER_DISPATCH_NR(kt.nr, forward_nr<T, kNR>(kt, x, w, y, p));
}

template <typename T>
void backward_input_impl(const T* go, const T* x, const T* w, T* gx,
                         const Adder2dParams& p, cpu::Isa isa) {
  const KernelTable<T> kt = Tables<T>::get(isa);
  ADDER_DISPATCH_NR(kt.nr, backward_input_nr<T, kNR>(kt, go, x, w, gx, p));
}

// Whether every element is finite (a sum is NaN or inf otherwise; a finite
// sum that overflows only gives a false alarm).
bool all_finite(const at::Tensor& t) {
  return t.numel() == 0 || at::isfinite(t.sum()).item<bool>();
}

#undef ADDER_DISPATCH_NR

}  // namespace

int64_t cpu_parallel_threads() {
  std::atomic<int64_t> most{0};
  at::parallel_for(0, 1 << 12, 1, [&](int64_t, int64_t) {
    const int64_t mine = at::get_thread_num() + 1;
    int64_t seen = most.load();
    while (seen < mine && !most.compare_exchange_weak(seen, mine)) {
    }
  });
  return most.load();
}

void adder2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                         at::Tensor& out, const Adder2dParams& p) {
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "adder2d_forward_cpu", [&] {
    forward_impl<scalar_t>(input.data_ptr<scalar_t>(),
                           weight.data_ptr<scalar_t>(),
                           out.data_ptr<scalar_t>(), p);
  });
}

void adder2d_backward_input_cpu(const at::Tensor& grad_out,
                                const at::Tensor& input,
                                const at::Tensor& weight, at::Tensor& grad_in,
                                const Adder2dParams& p) {
  // A NaN difference (a NaN in x or w, or inf - inf) must reach exactly
  // the pixels whose terms it is in, as in the reference (torch.clamp keeps
  // NaN). AVX-512's one-op clamp makes it +-1, and the virtual grid's
  // dropped columns (grad_out 0) fold 0 * NaN = NaN into pixels no real
  // position reads with that tap. The portable level has neither, so such
  // calls run there (slower; the loss is NaN by then anyway). The two sums
  // cost one read of x and w, next to O / groups reads of each im2col
  // element in the tiles.
  cpu::Isa isa = cpu::active_isa();
  if (!(all_finite(input) && all_finite(weight))) isa = cpu::Isa::kGeneric;
  AT_DISPATCH_FLOATING_TYPES(
      input.scalar_type(), "adder2d_backward_input_cpu", [&] {
        backward_input_impl<scalar_t>(
            grad_out.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(),
            weight.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), p,
            isa);
      });
}

}  // namespace adder_mm
