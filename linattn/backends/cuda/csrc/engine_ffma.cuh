// The float32 engine: 64 x 64 tile products on CUDA cores (FFMA), 4 x 8 outputs per thread.
//
// A reader who knows the blocked PyTorch variants can read one call of gemm_abt as the line
// `S = Q_blk @ K_blk.T` for one 64-row block of queries and one 64-row block of keys, done by
// 128 threads: thread (ty, tx) = (tid / 8, tid % 8) owns rows 4ty..4ty+3 and columns
// 4tx..4tx+3 and 32+4tx..32+4tx+3 of the 64 x 64 result, and keeps those 32 sums in registers.
//
// Operand tiles live in shared memory "k-major": As[k][r] holds A[r][k], so that for a fixed
// k a thread reads its 4 rows as one float4 and its 8 columns as two float4; a warp's 32
// threads then touch 4 + 8 distinct float4 per step (broadcasts), not 32. Each k step costs 3
// shared loads for 32 FMAs.
//
// The score tile never goes through shared memory as float: each thread multiplies its 32
// sums by W(r, c) in registers and writes P k-major for the second product (Ps[c][r]). The
// second product O += P C uses the same thread layout over 64 rows x 64 output channels.
#pragma once
#include "common.cuh"

namespace linattn {

struct FfmaEngine {
  using T = float;   // storage type of operand tiles
  using PT = float;  // storage type of the P tile
  static constexpr int LDA = BM + 4;  // k-major operand tiles: [K][LDA] (BM == BN)
  static constexpr int LDC = BE + 4;  // C tile [BN][LDC], row-major
  static constexpr int LDP = BM + 4;  // P tile k-major [BN][LDP]
  static constexpr bool kScoresAliasP = true;  // the float staging tile reuses P's memory
  static constexpr bool kMaskAliasP = true;    // so does the dense-mask tile (see scores_to_p)
  static_assert(BN * LDM <= BN * LDP, "the mask tile must fit in the P tile it shares");

  LINATTN_HD static size_t op_elems(int K) { return (size_t)K * LDA; }
  LINATTN_HD static size_t c_elems() { return (size_t)BN * LDC; }
  LINATTN_HD static size_t p_elems() { return (size_t)BN * LDP; }

  struct Acc {
    float v[4][8];  // rows 4ty+m, columns col(n)
  };

  static __device__ __forceinline__ int ty() { return threadIdx.x / 8; }
  static __device__ __forceinline__ int tx() { return threadIdx.x % 8; }
  static __device__ __forceinline__ int col(int n, int tx) { return tx * 4 + (n & 3) + (n >> 2) * 32; }

  // dst[k][r] = src[row0 + r][k] for r < 64, k < K; rows past nrows are zero.
  // Vector path (K % 4 == 0, 16-byte aligned rows): a warp reads 8 rows x 4 float4 per step
  // (64 contiguous bytes per row) and scatters them k-major with at most 2-way bank conflicts.
  static __device__ __forceinline__ void load_op(float* dst, const float* src, int row0, int nrows, int K) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (K % 4 == 0 && aligned16(src)) {
      const int KC = K / 4;
      for (int rb = warp * 8; rb < BM; rb += NT / 4) {
        const int r = rb + lane % 8, gr = row0 + r;
        const float4* row = reinterpret_cast<const float4*>(src + (int64_t)gr * K);
        for (int kc = lane / 8; kc < KC; kc += 4) {
          const float4 x = gr < nrows ? row[kc] : make_float4(0.f, 0.f, 0.f, 0.f);
          float* d = dst + 4 * kc * LDA + r;
          d[0] = x.x;
          d[LDA] = x.y;
          d[2 * LDA] = x.z;
          d[3 * LDA] = x.w;
        }
      }
      return;
    }
    for (int r = warp; r < BM; r += NT / 32) {
      const int gr = row0 + r;
      const float* row = src + (int64_t)gr * K;
      for (int k = lane; k < K; k += 32) dst[k * LDA + r] = gr < nrows ? row[k] : 0.f;
    }
  }

  // dst[c][e] = src[row0 + c][e0 + e] for c, e < 64; zero outside nrows x EC.
  // Vector path (EC % 4 == 0, aligned): 16 lanes per row, one float4 each.
  static __device__ __forceinline__ void load_c(float* dst, const float* src, int row0, int nrows,
                                                int e0, int EC) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (EC % 4 == 0 && aligned16(src)) {
      const int e = 4 * (lane % 16);
      const bool in_e = e0 + e < EC;
      for (int c = warp * 2 + lane / 16; c < BN; c += NT / 16) {
        const int gr = row0 + c;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (gr < nrows && in_e) x = *reinterpret_cast<const float4*>(src + (int64_t)gr * EC + e0 + e);
        *reinterpret_cast<float4*>(dst + c * LDC + e) = x;
      }
      return;
    }
    for (int c = warp; c < BN; c += NT / 32) {
      const int gr = row0 + c;
      const float* row = src + (int64_t)gr * EC + e0;
      for (int e = lane; e < BE; e += 32) dst[c * LDC + e] = (gr < nrows && e0 + e < EC) ? row[e] : 0.f;
    }
  }

  static __device__ __forceinline__ void zero(Acc& a) {
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
      for (int n = 0; n < 8; ++n) a.v[m][n] = 0.f;
  }

  // acc += X Yᵀ over k < K for k-major tiles Xs [K][LDA] (64 rows) and Ys [K][LDA] (64 cols).
  static __device__ __forceinline__ void gemm_abt(Acc& acc, const float* Xs, const float* Ys, int K) {
    const int r = ty() * 4, c = tx() * 4;
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      const float4 a = *reinterpret_cast<const float4*>(Xs + k * LDA + r);       // [4] rows
      const float4 b0 = *reinterpret_cast<const float4*>(Ys + k * LDA + c);      // [4] cols
      const float4 b1 = *reinterpret_cast<const float4*>(Ys + k * LDA + 32 + c); // [4] cols
      const float av[4] = {a.x, a.y, a.z, a.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int n = 0; n < 8; ++n) acc.v[m][n] = fmaf(av[m], bv[n], acc.v[m][n]);
    }
  }

  // Ss[r][c] = (A Bᵀ)[r][c], float, row stride LDS.
  static __device__ __forceinline__ void scores_to_smem(float* Ss, const float* As, const float* Bs, int K) {
    Acc s;
    zero(s);
    gemm_abt(s, As, Bs, K);
    store_acc(Ss, s);
  }

  // Ps[c][r] = (A Bᵀ)[r][c] * weight(r, c): the masked score tile, k-major for accumulate().
  // The dense-mask tile that weight() reads shares P's memory (one block then fits 3 per SM
  // at D = 64), so every thread applies its weights in registers before the barrier and
  // writes P after it.
  template <class F>
  static __device__ __forceinline__ void scores_to_p(float* Ps, const float* As, const float* Bs, int K,
                                                     float* /*Ss*/, F weight) {
    Acc s;
    zero(s);
    gemm_abt(s, As, Bs, K);
    const int r = ty() * 4, t = tx();
#pragma unroll
    for (int n = 0; n < 8; ++n)
#pragma unroll
      for (int m = 0; m < 4; ++m) s.v[m][n] *= weight(r + m, col(n, t));
    __syncthreads();  // every read of the mask tile is done
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const int c = col(n, t);
#pragma unroll
      for (int m = 0; m < 4; ++m) Ps[c * LDP + r + m] = s.v[m][n];
    }
  }

  // acc[r][e] += sum_c P[r][c] C[c][e] for the k-major P tile and the row-major C tile.
  static __device__ __forceinline__ void accumulate(Acc& acc, const float* Ps, const float* Cs) {
    const int r = ty() * 4, e = tx() * 4;
#pragma unroll 4
    for (int c = 0; c < BN; ++c) {
      const float4 a = *reinterpret_cast<const float4*>(Ps + c * LDP + r);
      const float4 b0 = *reinterpret_cast<const float4*>(Cs + c * LDC + e);
      const float4 b1 = *reinterpret_cast<const float4*>(Cs + c * LDC + 32 + e);
      const float av[4] = {a.x, a.y, a.z, a.w};
      const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int m = 0; m < 4; ++m)
#pragma unroll
        for (int n = 0; n < 8; ++n) acc.v[m][n] = fmaf(av[m], bv[n], acc.v[m][n]);
    }
  }

  // Ss[r][c] = acc[r][c] (row stride LDS).
  static __device__ __forceinline__ void store_acc(float* Ss, const Acc& acc) {
    const int r = ty() * 4, t = tx();
#pragma unroll
    for (int m = 0; m < 4; ++m)
#pragma unroll
      for (int n = 0; n < 8; ++n) Ss[(r + m) * LDS + col(n, t)] = acc.v[m][n];
  }
};

}  // namespace linattn
