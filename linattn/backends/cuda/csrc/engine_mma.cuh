// The tensor-core engines of the masked product: one warp owns 16 output rows, and the score
// tile S, its weighted copy P and the output accumulator O all live in registers.
//
// Read one iteration of masked_product.cuh's loop as the blocked PyTorch variant's
//     S = A_blk @ B_blk.T;   P = S * W_blk;   O_blk += P @ C_blk
// for the warp's 16 rows: `scores` walks the head dimension in k-steps (8 for tf32, 16 for
// halves) and keeps S as NJ accumulator fragments of 16 x 8 (NJ = BNc / 8 columns of the
// contracted index); the kernel multiplies each fragment element by W(r, c) in place;
// `accumulate` feeds those very registers back as the A operand of O += P C, 64 output
// channels = 8 accumulator fragments. No score tile ever goes through shared memory and
// there is no barrier between the two products.
//
// Feeding the accumulator back as an A operand works because the accumulator layout
// (row g: cols 2t, 2t+1; row g+8: same) is, for halves, exactly the A layout of m16n8k16
// over two neighbouring 8-column tiles. For tf32 (m16n8k8, A columns t and t+4) it is not,
// but the columns of P are a summation index: A slot t holds P column 2t and slot t+4 holds
// column 2t+1, and the B fragment reads C rows 2t and 2t+1 to match. Same sum, no shuffle.
//
// Shared-memory tiles (rows of 16-byte vectors, filled by cp.async in masked_product.cuh):
//   A (a rows) [16 * warps][ld_op(DA)], B (b rows) [BNc][ld_op(DA)], C [BNc][LDC]
// row-major, head dimension zero-padded to the k-step. Row strides are padded so that the
// fragment loads of a warp hit 32 distinct banks (ld_op = kpad + 4 floats / + 8 halves).
//
// float32 runs in 3xTF32 (mma.cuh): three tf32 MMAs per product, float32-level accuracy.
// float16 / bfloat16: P is rounded to the input dtype for the second product (as flash
// attention does); the sums are float32.
//
// Short chains (v3). A tensor core does not round its sum to nearest: it aligns the exact
// products and the accumulator to the largest exponent, truncating what falls below 2 bits
// under its float32 ulp, and rounds the result toward zero (Fasi et al. 2021; Khattak &
// Mikaitis 2025 for Hopper; csrc/emu/emu.h models it). Each mma into an accumulator c so
// loses ~ half an ulp of |c| *toward zero*, and n of them in one chain a biased ~ n u/2 —
// on the H200, 3xTF32 chained over N = 1024 keys made o 17 times the error of the plain
// float32 formula. So no chain here is long: `accumulate` sums one contracted tile (32
// columns = 12 tf32 mma) into a zeroed fragment and adds that to O with ordinary float32
// adds (round to nearest, errors of random sign), which also covers the GQA/MQA head sums of
// col mode; `scores` does the same per 32 head-dim columns (only D > 32 has a second
// stretch). The halves get the same treatment (64 columns = 4 mma per stretch).
#pragma once
#include "common.cuh"
#include "mma.cuh"

namespace linattn {

// s = A_w B_jᵀ in stretches of E::KS head-dim columns (s zero on entry): the first stretch
// chains into s itself, each further one into a zeroed fragment that is then added to s with
// float32 adds, so no mma chain runs longer than one stretch (see "Short chains" above).
template <class E, class P>
__device__ __forceinline__ void scores_in_stretches(float (&s)[E::NJ][4], const P* a0, const P* b0, int ld, int Kp) {
  E::score_span(s, a0, b0, ld, 0, imin(Kp, E::KS));
  for (int k1 = E::KS; k1 < Kp; k1 += E::KS) {
    float part[E::NJ][4];
#pragma unroll
    for (int j = 0; j < E::NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) part[j][e] = 0.f;
    E::score_span(part, a0, b0, ld, k1, imin(Kp, k1 + E::KS));
#pragma unroll
    for (int j = 0; j < E::NJ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] += part[j][e];
  }
}

struct Tf32x3Engine {
  using T = float;
  static constexpr bool PRESPLIT = false;
  static constexpr bool EARLYMASK = false;  // v5 schedule (Tf32x3SplitEarlyEngine below)
  static constexpr int BNc = 32;       // contracted columns per tile
  static constexpr int NJ = BNc / 8;   // accumulator fragments of S
  static constexpr int LDC = BE + 4;   // C tile row stride: rows 2t, 2t+1 of a fragment on distinct banks
  static constexpr int PADM = 4;       // mask tile row padding
  LINATTN_HD static int kpad(int K) { return (K + 7) / 8 * 8; }
  LINATTN_HD static int ld_op(int K) { return kpad(K) + 4; }

  static constexpr int KS = 32;  // head-dim columns per stretch of `scores` (one fresh fragment each)

  // acc[j] += A_w B_jᵀ over head-dim columns [k_lo, k_hi): one mma chain.
  static __device__ __forceinline__ void score_span(float (&acc)[NJ][4], const float* a0, const float* b0, int ld,
                                                    int k_lo, int k_hi) {
    for (int k0 = k_lo; k0 < k_hi; k0 += 8) {
      uint32_t ahi[4], alo[4], bhi[NJ][2], blo[NJ][2];
      split_tf32(a0[k0], ahi[0], alo[0]);
      split_tf32(a0[8 * ld + k0], ahi[1], alo[1]);
      split_tf32(a0[k0 + 4], ahi[2], alo[2]);
      split_tf32(a0[8 * ld + k0 + 4], ahi[3], alo[3]);
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        split_tf32(b0[8 * j * ld + k0], bhi[j][0], blo[j][0]);
        split_tf32(b0[8 * j * ld + k0 + 4], bhi[j][1], blo[j][1]);
      }
      mma_tf32x3<NJ>(acc, ahi, alo, bhi, blo);
    }
  }

  // s = A_w B_jᵀ (s zero on entry): A_w = 16 rows at Aw, B = BNc rows at Bs (both row stride
  // ld), k < Kp. The first KS columns chain into s itself, each further KS into a zeroed
  // fragment that is then added to s with float32 adds (see "Short chains" above).
  static __device__ __forceinline__ void scores(float (&s)[NJ][4], const float* Aw, const float* Bs, int ld, int Kp) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float* a0 = Aw + g * ld + t;        // rows g and g + 8, columns t and t + 4
    const float* b0 = Bs + g * ld + t;        // row 8j + g, columns t and t + 4
    scores_in_stretches<Tf32x3Engine>(s, a0, b0, ld, Kp);
  }

  // o[n] += P C: P = s (16 x BNc, accumulator layout), C = [BNc][LDC] at Cs, 64 channels.
  // Per group of 4 channel fragments, the whole tile's P C is one short mma chain into a
  // zeroed fragment, added to o with float32 adds (see "Short chains" above).
  static __device__ __forceinline__ void accumulate(float (&o)[8][4], const float (&s)[NJ][4], const float* Cs) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // 4 channel fragments at a time (fewer live registers)
      float part[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < NJ; ++kk) {
        uint32_t ahi[4], alo[4];
        // A slot t <- P column 2t, slot t + 4 <- column 2t + 1 (rows g, g + 8)
        split_tf32(s[kk][0], ahi[0], alo[0]);
        split_tf32(s[kk][2], ahi[1], alo[1]);
        split_tf32(s[kk][1], ahi[2], alo[2]);
        split_tf32(s[kk][3], ahi[3], alo[3]);
        const float* c0 = Cs + (8 * kk + 2 * t) * LDC + g;  // C rows 8kk + 2t, 8kk + 2t + 1
        uint32_t bhi[4][2], blo[4][2];
#pragma unroll
        for (int n = 0; n < 4; ++n) {
          split_tf32(c0[8 * (4 * half + n)], bhi[n][0], blo[n][0]);
          split_tf32(c0[LDC + 8 * (4 * half + n)], bhi[n][1], blo[n][1]);
        }
        mma_tf32x3<4>(part, ahi, alo, bhi, blo);
      }
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * half + n][e] += part[n][e];
    }
  }
};

// 3xTF32 with the b and c tiles split once per block (v4). Tf32x3Engine above has every warp
// load and split the whole b and c tiles for its 16 rows: 8 warps repeat the same 2 x 2048
// tf32 splits (cvt, sub, cvt) and 2 x 2048 scalar loads per tile, about one split and one
// load per mma. Here, once the tiles have landed, the block splits each element once
// (`presplit`, 8 records a thread with 8 warps) into hi/lo pairs stored in *fragment order*:
// record (step, j, lane) holds {hi b0, hi b1, lo b0, lo b1} of exactly the B fragment that
// lane needs, so the mma loops read one 16-byte vector per fragment (4 lanes x 16 bytes per
// quarter-warp phase: no bank conflicts) and split nothing but their own A rows and P.
//   Bx: record ((ks * NJ + j) * 32 + lane): b0 = B[8j + g][8ks + t], b1 = B[8j + g][8ks + t + 4]
//   Cx: record ((kk * 8 + n) * 32 + lane):  c0 = C[8kk + 2t][8n + g], c1 = C[8kk + 2t + 1][8n + g]
// (the C rows 2t, 2t + 1 match P's columns in A slots t, t + 4, as in Tf32x3Engine). The split
// tiles take 64 Kp + 4096 words (16 + 16 KiB at DA = 64), so the host uses this engine for
// DA <= 64 and runs it single-buffered with 8 warps first (two blocks per SM fit: 103 KiB with
// a dense mask), one more barrier per tile. Arithmetic, summation order and
// short chains are those of Tf32x3Engine: results are bitwise the same.
//
// PONCE (v6, LINATTN_CUDA_FP32_PONCE=1): `accumulate_x` splits each P fragment once instead of
// once per half of the 64 output channels. v5 runs the halves as its outer loop (one 4 x 4
// partial fragment live), so every P value is split twice: 16 of a tile's 64 splits a lane
// are repeats. v6 runs the P columns outer and both halves inner, into two partial fragments
// (16 more live registers); each output's partial sum still runs over kk in order and is added
// to o once per tile, so results are bitwise v5's.
template <bool LOTRUNC, bool PONCE = false>
struct Tf32x3SplitEngineT : Tf32x3Engine {
  static constexpr bool PRESPLIT = true;
  // x = hi + lo: lo rounded (cvt.rna, v4, bitwise v3) or left for the mma to truncate (LOTRUNC)
  static __device__ __forceinline__ void split(float x, uint32_t& hi, uint32_t& lo) {
    if constexpr (LOTRUNC) split_tf32_trunc(x, hi, lo);
    else split_tf32(x, hi, lo);
  }
  static constexpr int MAX_KP = 64;
  LINATTN_HD static int bx_words(int Kp) { return (Kp / 8) * NJ * 32 * 4; }
  LINATTN_HD static int cx_words() { return (BNc / 8) * 8 * 32 * 4; }

  // Block-cooperative: Bs [BNc][ld] and Cs [BNc][LDC] (raw float32) -> Bx, Cx (fragment order).
  // v5: two loops with compile-time trip counts (b: at most MAX_KP / 8 * NJ * 32 records, c:
  // exactly BNc * 32), record idx = threadIdx.x + i * NTH, so a thread's records differ only by
  // constant offsets (v4's one loop recomputed every index from idx at run time); the same
  // records with the same values in the same places.
  template <int NTH>
  static __device__ __forceinline__ void presplit(uint32_t* Bx, uint32_t* Cx, const float* Bs, const float* Cs, int ld,
                                                  int Kp) {
    constexpr int MAXB = (MAX_KP / 8) * NJ * 32, NC = (BNc / 8) * 8 * 32;
    static_assert(MAXB % NTH == 0 && NC % NTH == 0 && NTH % 32 == 0, "presplit: records per thread");
    const int nb = (Kp / 8) * NJ * 32;
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, rec0 = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < MAXB / NTH; ++i) {  // b: record (ks * NJ + j, lane)
      const int idx = threadIdx.x + i * NTH;
      if (idx < nb) {
        const int rec = rec0 + i * (NTH / 32), j = rec % NJ, ks = rec / NJ;
        const float* src = Bs + (8 * j + g) * ld + 8 * ks + t;
        uint32_t h0, l0, h1, l1;
        split(src[0], h0, l0);
        split(src[4], h1, l1);
        st_u32x4(Bx + 4 * idx, h0, h1, l0, l1);
      }
    }
#pragma unroll
    for (int i = 0; i < NC / NTH; ++i) {  // c: record (kk * 8 + n, lane)
      const int idx = threadIdx.x + i * NTH;
      const int rec = rec0 + i * (NTH / 32), n = rec & 7, kk = rec >> 3;
      const float* src = Cs + (8 * kk + 2 * t) * LDC + 8 * n + g;
      uint32_t h0, l0, h1, l1;
      split(src[0], h0, l0);
      split(src[LDC], h1, l1);
      st_u32x4(Cx + 4 * idx, h0, h1, l0, l1);
    }
  }

  static __device__ __forceinline__ void score_span_x(float (&acc)[NJ][4], const float* a0, const uint32_t* Bx, int ld,
                                                      int k_lo, int k_hi) {
    const int lane = threadIdx.x & 31;
    // a stretch is at most KS columns: a loop of compile-time length (v7; no loop counter)
#pragma unroll
    for (int ks = 0; ks < KS / 8; ++ks) {
      const int k0 = k_lo + 8 * ks;
      if (k0 >= k_hi) break;
      uint32_t ahi[4], alo[4], bhi[NJ][2], blo[NJ][2];
      split(a0[k0], ahi[0], alo[0]);
      split(a0[8 * ld + k0], ahi[1], alo[1]);
      split(a0[k0 + 4], ahi[2], alo[2]);
      split(a0[8 * ld + k0 + 4], ahi[3], alo[3]);
      const uint32_t* rec = Bx + 4 * ((k0 / 8) * NJ * 32 + lane);
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        uint32_t r[4];
        ld_u32x4(r, rec + 4 * 32 * j);
        bhi[j][0] = r[0];
        bhi[j][1] = r[1];
        blo[j][0] = r[2];
        blo[j][1] = r[3];
      }
      mma_tf32x3<NJ>(acc, ahi, alo, bhi, blo);
    }
  }

  // s = A_w B_jᵀ (s zero on entry), in stretches of KS head-dim columns as Tf32x3Engine.
  static __device__ __forceinline__ void scores_x(float (&s)[NJ][4], const float* Aw, const uint32_t* Bx, int ld,
                                                  int Kp) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float* a0 = Aw + g * ld + t;
    score_span_x(s, a0, Bx, ld, 0, imin(Kp, KS));
    for (int k1 = KS; k1 < Kp; k1 += KS) {
      float part[NJ][4];
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[j][e] = 0.f;
      score_span_x(part, a0, Bx, ld, k1, imin(Kp, k1 + KS));
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] += part[j][e];
    }
  }

  // P's A fragment for contracted columns 8kk..8kk+7 (s[kk]), split into hi/lo
  static __device__ __forceinline__ void split_p(const float (&sk)[4], uint32_t (&ahi)[4], uint32_t (&alo)[4]) {
    split(sk[0], ahi[0], alo[0]);
    split(sk[2], ahi[1], alo[1]);
    split(sk[1], ahi[2], alo[2]);
    split(sk[3], ahi[3], alo[3]);
  }

  // the pre-split C fragments of columns 8kk.. for output channel groups 4·half .. 4·half + 3
  static __device__ __forceinline__ void load_c(const uint32_t* Cx, int kk, int half, int lane, uint32_t (&bhi)[4][2],
                                                uint32_t (&blo)[4][2]) {
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      uint32_t r[4];
      ld_u32x4(r, Cx + 4 * ((kk * 8 + 4 * half + n) * 32 + lane));
      bhi[n][0] = r[0];
      bhi[n][1] = r[1];
      blo[n][0] = r[2];
      blo[n][1] = r[3];
    }
  }

  // o[n] += P C as Tf32x3Engine::accumulate, C fragments from Cx. v5: halves outer, so each P
  // fragment is split once per half; PONCE: P columns outer, split once (bitwise the same).
  static __device__ __forceinline__ void accumulate_x(float (&o)[8][4], const float (&s)[NJ][4], const uint32_t* Cx) {
    const int lane = threadIdx.x & 31;
    uint32_t ahi[4], alo[4], bhi[4][2], blo[4][2];
    if constexpr (PONCE) {
      float part[2][4][4];
#pragma unroll
      for (int h = 0; h < 2; ++h) zero_part(part[h]);
#pragma unroll
      for (int kk = 0; kk < NJ; ++kk) {
        split_p(s[kk], ahi, alo);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          load_c(Cx, kk, half, lane, bhi, blo);
          mma_tf32x3<4>(part[half], ahi, alo, bhi, blo);
        }
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) add_part(o, part[half], half);
    } else {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float part[4][4];
        zero_part(part);
#pragma unroll
        for (int kk = 0; kk < NJ; ++kk) {
          split_p(s[kk], ahi, alo);
          load_c(Cx, kk, half, lane, bhi, blo);
          mma_tf32x3<4>(part, ahi, alo, bhi, blo);
        }
        add_part(o, part, half);
      }
    }
  }

  static __device__ __forceinline__ void zero_part(float (&part)[4][4]) {
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) part[n][e] = 0.f;
  }

  // a tile's partial sums into o once (short chains: engine_mma.cuh, Tf32x3Engine)
  static __device__ __forceinline__ void add_part(float (&o)[8][4], const float (&part)[4][4], int half) {
#pragma unroll
    for (int n = 0; n < 4; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[4 * half + n][e] += part[n][e];
  }
};

// v5: Tf32x3SplitEngine with v5's tile schedule (masked_product.cuh, "v5 schedule").
// Single-buffered, v4 issued the next tile's mask only after a barrier at the very end of the
// tile, so every tile first waited a fresh L2 round trip for its mask. v5 puts that barrier
// right after the weighting P = S ⊙ W' (the last read of the mask tile) and issues the next
// mask there, so it loads behind the tile's P c products; the end-of-tile barrier goes (the
// next tile's first barrier already orders the next split after this tile's reads of the
// split tiles). Still three barriers a tile with a mask, two without. (Holding each warp's 16
// mask values in registers instead, to issue the mask with b and c, spilled 212 bytes.)
// Products, weights and sums are v4's in v4's order: results are bitwise the same.
// LINATTN_CUDA_FP32_EARLYMASK=0 selects v4's schedule.
using Tf32x3SplitEngine = Tf32x3SplitEngineT<false>;

template <bool LOTRUNC, bool PONCE = false>
struct Tf32x3SplitEarlyEngineT : Tf32x3SplitEngineT<LOTRUNC, PONCE> {
  static constexpr bool EARLYMASK = true;
};
using Tf32x3SplitEarlyEngine = Tf32x3SplitEarlyEngineT<false>;
// v5 schedule with unrounded lo parts (mma.cuh, split_tf32_trunc): the v5 default for DA <= 64
using Tf32x3SplitEarlyTruncEngine = Tf32x3SplitEarlyEngineT<true>;
// the same with each P fragment split once (PONCE, v6; LINATTN_CUDA_FP32_PONCE=1)
using Tf32x3SplitEarlyTruncOnceEngine = Tf32x3SplitEarlyEngineT<true, true>;

// float32 with IEEE fmaf on the CUDA cores, in the tensor-core engines' register layout (the
// kernel and its tiles are the same; only the two products differ). For short contractions
// (kernels.cuh, `fp32_use_ffma`): 3xTF32 carries 22 of float32's 24 significand bits per
// operand (x = tf32 hi + tf32 lo), which on a problem of one or a few terms is above what the
// plain float32 formula makes (its error there is one or two roundings); FFMA rounds exactly
// like the formula. Sums run in index order: recursive float32 summation over the head dim
// (scores) and over the whole contracted index (accumulate: straight into o, no stretches —
// FFMA rounds to nearest, so chains carry no bias).
struct Fp32FmaEngine {
  using T = float;
  static constexpr bool PRESPLIT = false;
  static constexpr bool EARLYMASK = false;
  static constexpr int BNc = 32;
  static constexpr int NJ = BNc / 8;
  static constexpr int LDC = BE + 4;
  static constexpr int PADM = 4;
  LINATTN_HD static int kpad(int K) { return (K + 7) / 8 * 8; }
  LINATTN_HD static int ld_op(int K) { return kpad(K) + 4; }

  // s[j][e] = Σ_k A[row][k] B[col][k], row = g (+8 for e >= 2), col = 8j + 2t + (e & 1).
  static __device__ __forceinline__ void scores(float (&s)[NJ][4], const float* Aw, const float* Bs, int ld, int Kp) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float* a0 = Aw + g * ld;
    const float* b0 = Bs + 2 * t * ld;
    for (int k = 0; k < Kp; ++k) {
      const float x0 = a0[k], x1 = a0[8 * ld + k];
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        const float y0 = b0[8 * j * ld + k], y1 = b0[(8 * j + 1) * ld + k];
        s[j][0] = fmaf(x0, y0, s[j][0]);
        s[j][1] = fmaf(x0, y1, s[j][1]);
        s[j][2] = fmaf(x1, y0, s[j][2]);
        s[j][3] = fmaf(x1, y1, s[j][3]);
      }
    }
  }

  // o[n][e] += Σ_c P[row][c] C[c][ch] over the tile's BNc columns in order. P[row][8j + 2t' + u]
  // sits in lane 4g + t' (s[j][u], row g; s[j][2 + u], row g + 8): fetched with shuffles.
  static __device__ __forceinline__ void accumulate(float (&o)[8][4], const float (&s)[NJ][4], const float* Cs) {
    const int lane = threadIdx.x & 31, t = lane & 3, quad = lane & ~3;
#pragma unroll
    for (int j = 0; j < NJ; ++j)
#pragma unroll
      for (int tp = 0; tp < 4; ++tp)
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const float p0 = shfl(s[j][u], quad + tp), p1 = shfl(s[j][2 + u], quad + tp);
          const float* crow = Cs + (8 * j + 2 * tp + u) * LDC + 2 * t;
#pragma unroll
          for (int n = 0; n < 8; ++n) {
            const float c0 = crow[8 * n], c1 = crow[8 * n + 1];
            o[n][0] = fmaf(p0, c0, o[n][0]);
            o[n][1] = fmaf(p0, c1, o[n][1]);
            o[n][2] = fmaf(p1, c0, o[n][2]);
            o[n][3] = fmaf(p1, c1, o[n][3]);
          }
        }
  }
};

template <class Tin>
struct HalfMmaEngine {
  using T = Tin;
  static constexpr bool PRESPLIT = false;
  static constexpr bool EARLYMASK = false;
  static constexpr int BNc = 64;
  static constexpr int NJ = BNc / 8;
  static constexpr int LDC = BE + 8;   // 144-byte rows: ldmatrix rows on distinct banks
  static constexpr int PADM = 8;
  LINATTN_HD static int kpad(int K) { return round16(K); }
  LINATTN_HD static int ld_op(int K) { return round16(K) + 8; }

  static constexpr int KS = 64;  // head-dim columns per stretch of `scores`

  static __device__ __forceinline__ void score_span(float (&acc)[NJ][4], const T* a0, const T* b0, int ld, int k_lo,
                                                    int k_hi) {
    for (int k0 = k_lo; k0 < k_hi; k0 += 16) {
      uint32_t a[4], b[NJ][2];
      a[0] = ld_pair(a0 + k0);
      a[1] = ld_pair(a0 + 8 * ld + k0);
      a[2] = ld_pair(a0 + k0 + 8);
      a[3] = ld_pair(a0 + 8 * ld + k0 + 8);
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
        b[j][0] = ld_pair(b0 + 8 * j * ld + k0);
        b[j][1] = ld_pair(b0 + 8 * j * ld + k0 + 8);
      }
      mma_half_row<T, NJ>(acc, a, b);
    }
  }

  // s = A_w B_jᵀ (s zero on entry), in stretches of KS head-dim columns as Tf32x3Engine.
  static __device__ __forceinline__ void scores(float (&s)[NJ][4], const T* Aw, const T* Bs, int ld, int Kp) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const T* a0 = Aw + g * ld + 2 * t;
    const T* b0 = Bs + g * ld + 2 * t;
    scores_in_stretches<HalfMmaEngine>(s, a0, b0, ld, Kp);
  }

  // o += P C for the tile: per group of 4 channel fragments one chain of 4 mma into a zeroed
  // fragment, then float32 adds into o.
  static __device__ __forceinline__ void accumulate(float (&o)[8][4], const float (&s)[NJ][4], const T* Cs) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float part[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[n][e] = 0.f;
#pragma unroll
      for (int kk = 0; kk < NJ / 2; ++kk) {
        // P columns 16kk..16kk+15 are the fragments 2kk and 2kk + 1 of S: the A layout as is
        uint32_t a[4], b[4][2];
        a[0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
        a[1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
        a[2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        a[3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int n = 0; n < 4; n += 2) {
          uint32_t r[4];
          ldsm_x4_trans(r, Cs + 16 * kk * LDC + 8 * (4 * half + n), LDC);
          b[n][0] = r[0];
          b[n][1] = r[1];
          b[n + 1][0] = r[2];
          b[n + 1][1] = r[3];
        }
        mma_half_row<T, 4>(part, a, b);
      }
#pragma unroll
      for (int n = 0; n < 4; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * half + n][e] += part[n][e];
    }
  }
};

}  // namespace linattn
