// One kernel, four uses: the masked product behind o, dq, dk and dv.
//
// The PyTorch blocked variant computes, for one block of queries and one block of keys,
//     S = Q_blk @ K_blk.T;   P = S * W_blk;   O_blk += P @ V_blk
// and loops over key blocks. The gradients have exactly the same shape (DESIGN.md):
//     dq  = scale * (dO Vᵀ ⊙ W)  K          row mode: a = dO, b = V,  c = K
//     o   = scale * (Q  Kᵀ ⊙ W)  V          row mode: a = Q,  b = K,  c = V
//     dv  = scale * (K  Qᵀ ⊙ Wᵀ) dO         col mode: a = K,  b = Q,  c = dO
//     dk  = scale * (V  dOᵀ ⊙ Wᵀ) Q         col mode: a = V,  b = dO, c = Q
// so one kernel computes out = scale * ((a bᵀ) ⊙ W') c with W' = W (row mode) or Wᵀ (col mode).
//
// Tiling. One block of `WARPS` warps owns BM = 16 * WARPS output rows (r) and 64 output
// channels (e) of one head; warp w owns rows 16w..16w+15 (engine_mma.cuh does its products
// in registers):
//   * the block's a rows, [BM, DA], are copied once into shared memory;
//   * it loops over the contracted index c in tiles of BNc (32 for float32, 64 for halves):
//     b [BNc, DA], c [BNc, 64] and, with a dense mask, the mask tile are copied with cp.async
//     into one of two buffers while the warps compute on the other (double buffering; one
//     buffer when two do not fit, e.g. DA = 256 in float32);
//   * float32 on Tf32x3SplitEngine (v4, DA <= 64): once the tiles have landed, the block splits
//     b and c into tf32 hi/lo pairs once, in fragment order (L.Bx, L.Cx), one barrier, and the
//     warps read their B/C fragments from there instead of each splitting the whole tiles;
//   * each warp: S = a bᵀ (registers), S ⊙= W' (mask tile from shared memory, causal and
//     decay factors from the indices), O += P c (registers; the tile's P c is summed into a
//     zeroed fragment and added to O with float32 adds, so that no tensor-core chain spans
//     more than one tile: engine_mma.cuh, "Short chains");
//   * in col mode the loop also runs over the query heads of the kv group (GQA/MQA), so dk
//     and dv come out summed over the group in a fixed order: no atomics, no expanded K/V;
//   * with causal, tiles wholly above the diagonal are never visited (row mode stops at the
//     diagonal, col mode starts there);
//   * E > 64 is split over blocks (the grid's channel tiles); DA is whole (up to 256).
// Rows past N or M and channels past DA or EC are zero-filled in shared memory (cp.async
// zero-fill), so any length works without padding the tensors. The host picks the largest
// configuration that fits: 8 warps and two buffers first (one buffer first for the pre-split
// engine, whose split tiles would otherwise cost the second block per SM; kernels.cuh), and
// for float32 the engine: FFMA for short contractions, the pre-split 3xTF32 engine for
// DA <= 64, per-warp splits above (kernels.cuh, launch_product_float32). __launch_bounds__
// asks for 16 / WARPS blocks per SM (at most 128 registers a thread), so that two 8-warp
// blocks fit an SM where shared memory allows.
#pragma once
#include "common.cuh"
#include "engine_mma.cuh"
#include "mma.cuh"

namespace linattn {

// One 16-byte vector d = src[gr * si + gc .. + V - 1] (unit column stride, 16-byte aligned): a
// cp.async where the vector is whole, zero-filled where it lies past the ends, element by
// element in the rare vector that straddles ncols.
template <class T>
__device__ __forceinline__ void copy_vec16(T* d, const T* src, int64_t si, int gr, int nrows, int gc, int ncols) {
  constexpr int V = 16 / (int)sizeof(T);
  if (gr < nrows && gc + V <= ncols) {
    cp_async16(d, src + gr * si + gc, true);
  } else if (gr >= nrows || gc >= ncols) {
    cp_async16(d, src, false);
  } else {
#pragma unroll
    for (int u = 0; u < V; ++u) d[u] = gc + u < ncols ? src[gr * si + gc + u] : Num<T>::from_f(0.f);
  }
}

// dst[r][c] = src[(row0 + r) * si + (col0 + c) * sj] for r < rows, c < cols (cols a multiple of
// 16 bytes), zero where row0 + r >= nrows or col0 + c >= ncols. With unit column stride and
// 16-byte aligned vectors, one cp.async per 16 bytes (zero-fill past the ends; the rare vector
// that straddles ncols is stored element by element); otherwise element by element.
template <class T, int NTH>
__device__ __forceinline__ void load_tile(T* dst, int ld, const T* src, int64_t si, int64_t sj, int row0, int nrows,
                                          int rows, int col0, int ncols, int cols) {
  constexpr int V = 16 / (int)sizeof(T);
  if (sj == 1 && si % V == 0 && col0 % V == 0 && aligned16(src)) {
    const int cpr = cols / V;
    for (int idx = threadIdx.x; idx < rows * cpr; idx += NTH) {
      const int r = idx / cpr, c = (idx - r * cpr) * V;
      copy_vec16(dst + r * ld + c, src, si, row0 + r, nrows, col0 + c, ncols);
    }
    return;
  }
  for (int idx = threadIdx.x; idx < rows * cols; idx += NTH) {
    const int r = idx / cols, c = idx - r * cols;
    const int gr = row0 + r, gc = col0 + c;
    dst[r * ld + c] = (gr < nrows && gc < ncols) ? src[gr * si + gc * sj] : Num<T>::from_f(0.f);
  }
}

// load_tile for a tile whose extents are compile-time constants (v7): ROWS x COLS elements, of
// which the first `cols` columns (a multiple of 16 bytes, <= COLS) are stored. With COLS / V
// vectors a row dividing the block's NTH threads, thread x always copies the vectors of column
// (x mod COLS / V) in rows x / (COLS / V) + i * (NTH V / COLS): no division, no loop-carried
// index, one 64-bit multiply-add a vector. Same values in the same places as load_tile (the
// strided / misaligned case is load_tile's own element loop).
// UNROLL: the passes unrolled (the float32 pre-split kernels: fewest spills) or a loop (the
// halves: unrolled, their precomputed addresses spilled ~200 bytes; as a loop none).
template <class T, int NTH, int ROWS, int COLS, bool UNROLL = true>
__device__ __forceinline__ void load_tile_fixed(T* dst, int ld, const T* src, int64_t si, int64_t sj, int row0,
                                                int nrows, int col0, int ncols, int cols = COLS) {
  constexpr int V = 16 / (int)sizeof(T);
  constexpr int CPR = COLS / V;  // vectors a row
  static_assert(COLS % V == 0 && NTH % CPR == 0, "load_tile_fixed: a row's vectors must divide the threads");
  constexpr int RPP = NTH / CPR;                    // rows a pass
  constexpr int PASSES = (ROWS + RPP - 1) / RPP;
  constexpr int UNROLL_BY = UNROLL ? PASSES : 1;
  if (sj == 1 && si % V == 0 && col0 % V == 0 && aligned16(src)) {
    const int c = (int)(threadIdx.x % CPR) * V, rf = (int)(threadIdx.x / CPR);
    if (c >= cols) return;
#pragma unroll UNROLL_BY
    for (int i = 0; i < PASSES; ++i) {
      const int r = rf + i * RPP;
      if (ROWS % RPP != 0 && r >= ROWS) break;
      copy_vec16(dst + r * ld + c, src, si, row0 + r, nrows, col0 + c, ncols);
    }
    return;
  }
  load_tile<T, NTH>(dst, ld, src, si, sj, row0, nrows, ROWS, col0, ncols, cols);
}

// The shared-memory layout of one block; the host sizes the launch with the same code.
template <class Eng, int WARPS>
struct ProductTiles {
  using T = typename Eng::T;
  static constexpr int BMr = 16 * WARPS;
  T* As;  // a rows                              [BMr][ld_op(DA)]
  T* Bs;  // b rows, buffer s at Bs + s * bstep  [BNc][ld_op(DA)]
  T* Cs;  // c rows, buffer s at Cs + s * cstep  [BNc][LDC]  (64 channels)
  T* Ms;  // mask tile, buffer s at Ms + s * mstep, or null:
          //   row mode [BMr][BNc + PADM] (i = r, j = c), col mode [BNc][BMr + PADM] (i = c, j = r)
  uint32_t* Bx;  // Eng::PRESPLIT only: this tile's b and c split into tf32 hi/lo, fragment order
  uint32_t* Cx;  //   (engine_mma.cuh, Tf32x3SplitEngine); one buffer
  int ldm, bstep, cstep, mstep;  // element offsets between the two buffers (0 with one buffer)
  size_t bytes;
  LINATTN_HD ProductTiles(unsigned char* base, int da, bool has_mask, bool col, int stages) {
    Carver cv(base);
    const int lda = Eng::ld_op(da);
    ldm = col ? BMr + Eng::PADM : Eng::BNc + Eng::PADM;
    const int mrows = col ? Eng::BNc : BMr;
    // each buffer is a multiple of 128 bytes, so buffer 1 directly follows buffer 0
    bstep = stages > 1 ? (int)(align128((size_t)Eng::BNc * lda * sizeof(T)) / sizeof(T)) : 0;
    cstep = stages > 1 ? (int)(align128((size_t)Eng::BNc * Eng::LDC * sizeof(T)) / sizeof(T)) : 0;
    mstep = stages > 1 && has_mask ? (int)(align128((size_t)mrows * ldm * sizeof(T)) / sizeof(T)) : 0;
    As = cv.template take<T>((size_t)BMr * lda);
    Bs = cv.template take<T>((size_t)Eng::BNc * lda * stages);
    Cs = cv.template take<T>((size_t)Eng::BNc * Eng::LDC * stages);
    Ms = has_mask ? cv.template take<T>((size_t)mrows * ldm * stages) : nullptr;
    Bx = Cx = nullptr;
    if constexpr (Eng::PRESPLIT) {
      Bx = cv.template take<uint32_t>((size_t)Eng::bx_words(Eng::kpad(da)));
      Cx = cv.template take<uint32_t>((size_t)Eng::cx_words());
    }
    bytes = cv.offset;
  }
};

template <class Eng, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, 16 / WARPS) masked_product_kernel(ProductArgs p, int tiles_r, int tiles_e,
                                                                    int stages_arg) {
  // v5's engine is single-buffered by construction (no double-buffer code in its kernel: fewer
  // live registers); a forced 2-stage configuration runs it with one of the two buffers
  const int stages = Eng::EARLYMASK ? 1 : stages_arg;
  using T = typename Eng::T;
  constexpr int NTH = 32 * WARPS, BMr = 16 * WARPS, BC = Eng::BNc, NJ = Eng::NJ;
  LINATTN_DYN_SMEM(smem);
  const bool col = p.col_mode;
  const ProductTiles<Eng, WARPS> L(smem, p.da, p.mask != nullptr, col, stages);

  // -- which tile: row tile fastest, so neighbouring blocks share one head's b and c in L2
  int64_t bid = blockIdx.x;
  const int rt = (int)(bid % tiles_r);
  bid /= tiles_r;
  const int et = (int)(bid % tiles_e);
  const int z = (int)(bid / tiles_e);  // b * out_heads + out_head
  const int G = p.heads / p.kv_heads;
  const int out_heads = col ? p.kv_heads : p.heads;
  const int b = z / out_heads, ho = z % out_heads;
  const int nR = col ? p.m : p.n;  // output rows
  const int nC = col ? p.n : p.m;  // contracted length
  const int r0 = rt * BMr, e0 = et * BE;
  const int bc_heads = col ? p.heads : p.kv_heads;
  const int Kp = Eng::kpad(p.da), lda = Eng::ld_op(p.da);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;

  // -- the iterations: (query head of the group, contracted tile), causal range only
  const int h_lo = col ? ho * G : ho, nh = col ? G : 1;
  int c_lo = 0, c_hi = nC;
  if (p.causal) {
    if (col) c_lo = (r0 / BC) * BC;
    else c_hi = imin(nC, r0 + BMr);
  }
  const int nct = c_hi > c_lo ? (c_hi - c_lo + BC - 1) / BC : 0;
  const int n_it = nh * nct;

  // cp.async the tiles of iteration (query head h, contracted tile at c0) into buffer `buf`: b
  // and c (what = 1), the mask tile (what = 2) or both (3), as one commit group. The tiles of
  // fixed extent go through load_tile_fixed (v7), b too where the engine bounds DA (pre-split).
  auto issue = [&](int h, int c0, int buf, int what = 3) {
    const int64_t bc = (int64_t)b * bc_heads + (col ? h : h / G);  // head of b and c
    if (what & 1) {
      const T* bsrc = static_cast<const T*>(p.b) + bc * nC * p.da;
      if constexpr (Eng::PRESPLIT) {
        load_tile_fixed<T, NTH, BC, Eng::MAX_KP>(L.Bs + buf * L.bstep, lda, bsrc, p.da, 1, c0, nC, 0, p.da,
                                                 Kp);  // [BNc, Kp]
      } else {
        load_tile<T, NTH>(L.Bs + buf * L.bstep, lda, bsrc, p.da, 1, c0, nC, BC, 0, p.da, Kp);  // [BNc, Kp]
      }
      const T* csrc = static_cast<const T*>(p.c) + bc * nC * p.ec;
      load_tile_fixed<T, NTH, BC, BE, Eng::PRESPLIT>(L.Cs + buf * L.cstep, Eng::LDC, csrc, p.ec, 1, c0, nC, e0,
                                                     p.ec);  // [BNc, 64]
    }
    if (p.mask && (what & 2)) {
      const T* mbh = static_cast<const T*>(p.mask) + b * p.mask_sb + h * p.mask_sh;
      T* Md = L.Ms + buf * L.mstep;
      if (col)
        load_tile_fixed<T, NTH, BC, BMr, Eng::PRESPLIT>(Md, L.ldm, mbh, p.mask_si, p.mask_sj, c0, p.n, r0, p.m);
      else
        load_tile_fixed<T, NTH, BMr, BC, Eng::PRESPLIT>(Md, L.ldm, mbh, p.mask_si, p.mask_sj, r0, p.n, c0, p.m);
    }
    cp_async_commit();
  };

  float o[8][4];  // O rows 16w + g (+8), channels 8n + 2t (+1)
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.f;

  if (n_it > 0) {
    load_tile<T, NTH>(L.As, lda, static_cast<const T*>(p.a) + (int64_t)z * nR * p.da, p.da, 1, r0, nR, BMr, 0, p.da,
                      Kp);  // [BMr, Kp], committed with the first tiles
    issue(h_lo, c_lo, 0);
  }
  const T* Aw = L.As + warp * 16 * lda;
  const bool decay = p.slopes != nullptr;
  // v5 schedule (Eng::EARLYMASK, single buffer): the next tile's mask is issued as soon as
  // every warp has weighted its scores (one barrier there), so it loads behind this tile's
  // P c products, and the end-of-tile barrier goes (the next tile's first barrier orders the
  // next split after this tile's reads of the split tiles)
  const bool early = Eng::EARLYMASK && stages == 1;
  // (h, c0) of this iteration and of the next, advanced without divisions (v7)
  int h = h_lo, c0 = c_lo, h_nx = h_lo, c0_nx = c_lo;
  for (int it = 0; it < n_it; ++it, h = h_nx, c0 = c0_nx) {
    c0_nx = c0 + BC;
    h_nx = h;
    if (c0_nx >= c_hi) {
      c0_nx = c_lo;
      ++h_nx;
    }
    const int cur = stages == 2 ? (it & 1) : 0;
    if (stages == 2 && it + 1 < n_it) {
      issue(h_nx, c0_nx, cur ^ 1);  // that buffer was last read before the previous barrier
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // every thread's copies of this iteration's tiles have landed
                      // (v5: and every warp is done with the previous tile's split tiles)

    float s[NJ][4];  // S rows 16w + g (+8), columns c0 + 8j + 2t (+1)
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
    if constexpr (Eng::PRESPLIT) {  // split this tile's b and c once for the whole block
      Eng::template presplit<NTH>(L.Bx, L.Cx, L.Bs + cur * L.bstep, L.Cs + cur * L.cstep, lda, Kp);
      __syncthreads();
      // single buffer: raw b and c are consumed, so the next tile's b and c load during this
      // tile's products; its mask tile (still read below) follows later
      if (stages == 1 && it + 1 < n_it) issue(h_nx, c0_nx, 0, 1);
      Eng::scores_x(s, Aw, L.Bx, lda, Kp);
    } else {
      Eng::scores(s, Aw, L.Bs + cur * L.bstep, lda, Kp);
    }

    if (p.causal) {  // P = S ⊙ W': causal/decay factors from the indices, times the mask
      const float slope = decay ? p.slopes[h] : 0.f;
      const T* Ms = p.mask ? L.Ms + cur * L.mstep : nullptr;
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int rl = warp * 16 + g + 8 * (e >> 1), cl = 8 * j + 2 * t + (e & 1);
          const int r = r0 + rl, c = c0 + cl;
          float w = col ? causal_decay(c, r, true, decay, slope) : causal_decay(r, c, true, decay, slope);
          if (Ms) w *= Num<T>::to_f(col ? Ms[cl * L.ldm + rl] : Ms[rl * L.ldm + cl]);
          s[j][e] *= w;
        }
    } else if (p.mask) {  // P = S ⊙ M (v7): the mask alone, at fixed offsets from the warp's row
      const T* Ms = L.Ms + cur * L.mstep;
      if (col) {  // tile [BNc][BMr + PADM]: element (rl, cl) at cl * ldm + rl
        constexpr int LDM = BMr + Eng::PADM;
        const T* m0 = Ms + (2 * t) * LDM + warp * 16 + g;
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] *= Num<T>::to_f(m0[(8 * j + (e & 1)) * LDM + 8 * (e >> 1)]);
      } else {  // tile [BMr][BNc + PADM]: element (rl, cl) at rl * ldm + cl
        constexpr int LDM = BC + Eng::PADM;
        const T* m0 = Ms + (warp * 16 + g) * LDM + 2 * t;
#pragma unroll
        for (int j = 0; j < NJ; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] *= Num<T>::to_f(m0[8 * (e >> 1) * LDM + 8 * j + (e & 1)]);
      }
    }
    if constexpr (Eng::EARLYMASK) {
      if (early) {  // v5: the mask buffer is free once every warp has weighted its scores
        if (p.mask && it + 1 < n_it) {
          __syncthreads();
          issue(h_nx, c0_nx, 0, 2);
        }
        Eng::accumulate_x(o, s, L.Cx);
        continue;  // the next tile's first barrier orders the rest
      }
    }
    if constexpr (Eng::PRESPLIT) Eng::accumulate_x(o, s, L.Cx);
    else Eng::accumulate(o, s, L.Cs + cur * L.cstep);
    __syncthreads();  // the buffers of `cur` may be refilled now
    if (stages == 1 && it + 1 < n_it) issue(h_nx, c0_nx, 0, Eng::PRESPLIT ? 2 : 3);
  }

  // -- write out scale * O straight from the accumulators
#pragma unroll
  for (int n = 0; n < 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = r0 + warp * 16 + g + 8 * (e >> 1), ch = e0 + 8 * n + 2 * t + (e & 1);
      if (r < nR && ch < p.ec) {
        const int64_t idx = ((int64_t)z * nR + r) * p.ec + ch;
        const float val = p.scale * o[n][e];
        if (p.out_f32) static_cast<float*>(p.out)[idx] = val;
        else static_cast<T*>(p.out)[idx] = Num<T>::from_f(val);
      }
    }
}

}  // namespace linattn
