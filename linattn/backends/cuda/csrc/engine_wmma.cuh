// The float16 / bfloat16 engine: 64 x 64 tile products on tensor cores (nvcuda::wmma,
// m16n16k16, float32 accumulators).
//
// Same tiles as the float32 engine (engine_ffma.cuh), split differently: the 4 warps form a
// 2 x 2 grid and warp (wr, wc) owns the 32 x 32 quarter at rows 32wr.., columns 32wc.., as
// 2 x 2 fragments of 16 x 16. `S = Q_blk @ K_blk.T` walks the head dimension 16 at a time
// (zero-padded in shared memory up to a multiple of 16), each step loading 2 A and 2 B
// fragments for 4 MMAs.
//
// Operand tiles are row-major in shared memory with the row stride padded by 8 elements
// (16 bytes) against bank conflicts; every fragment pointer stays 32-byte aligned, as wmma
// requires. Fragment layouts are opaque, so the score tile is stored to shared memory as
// float (Ss), multiplied by W(r, c) there, and rounded once to the input dtype into P (as
// flash attention does) for the second product O += P C, whose accumulators stay in
// fragments for the whole loop over key tiles.
#pragma once
#include "common.cuh"

namespace linattn {

template <class Tin>
struct WmmaEngine {
  using T = Tin;
  using PT = Tin;
  static constexpr int LDC = BE + 8;  // C tile [BN][LDC], row-major
  static constexpr int LDP = BN + 8;  // P tile [BM][LDP], row-major
  static constexpr bool kScoresAliasP = false;
  static constexpr bool kMaskAliasP = false;

  LINATTN_HD static int lda(int K) { return round16(K) + 8; }
  LINATTN_HD static size_t op_elems(int K) { return (size_t)BM * lda(K); }
  LINATTN_HD static size_t c_elems() { return (size_t)BN * LDC; }
  LINATTN_HD static size_t p_elems() { return (size_t)BM * LDP; }

  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major>;
  using FragBt = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::col_major>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::row_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

  struct Acc {
    FragC f[2][2];  // rows 32wr + 16i, columns 32wc + 16j
  };

  static __device__ __forceinline__ int wr() { return (threadIdx.x / 32) >> 1; }
  static __device__ __forceinline__ int wc() { return (threadIdx.x / 32) & 1; }

  // dst[r][k] = src[row0 + r][k] for r < 64, k < round16(K); zero past K and past nrows.
  // Vector path (K % 8 == 0, aligned): 16-byte chunks of 8 elements, row-major to row-major.
  static __device__ __forceinline__ void load_op(T* dst, const T* src, int row0, int nrows, int K) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int Kp = round16(K), ld = lda(K);
    if (K % 8 == 0 && aligned16(src)) {
      const int KC = Kp / 8, chunks = BM * KC;
      for (int idx = threadIdx.x; idx < chunks; idx += NT) {
        const int r = idx / KC, kc = idx - r * KC, gr = row0 + r;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (gr < nrows && 8 * kc < K) x = *reinterpret_cast<const uint4*>(src + (int64_t)gr * K + 8 * kc);
        *reinterpret_cast<uint4*>(dst + r * ld + 8 * kc) = x;
      }
      return;
    }
    const T zero = Num<T>::from_f(0.f);
    for (int r = warp; r < BM; r += NT / 32) {
      const int gr = row0 + r;
      const T* row = src + (int64_t)gr * K;
      for (int k = lane; k < Kp; k += 32) dst[r * ld + k] = (gr < nrows && k < K) ? row[k] : zero;
    }
  }

  // dst[c][e] = src[row0 + c][e0 + e] for c, e < 64; zero outside nrows x EC.
  // Vector path (EC % 8 == 0, aligned): 8 lanes per row, 8 elements each.
  static __device__ __forceinline__ void load_c(T* dst, const T* src, int row0, int nrows, int e0, int EC) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (EC % 8 == 0 && aligned16(src)) {
      const int e = 8 * (lane % 8);
      const bool in_e = e0 + e < EC;
      for (int c = warp * 4 + lane / 8; c < BN; c += NT / 8) {
        const int gr = row0 + c;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (gr < nrows && in_e) x = *reinterpret_cast<const uint4*>(src + (int64_t)gr * EC + e0 + e);
        *reinterpret_cast<uint4*>(dst + c * LDC + e) = x;
      }
      return;
    }
    const T zero = Num<T>::from_f(0.f);
    for (int c = warp; c < BN; c += NT / 32) {
      const int gr = row0 + c;
      const T* row = src + (int64_t)gr * EC + e0;
      for (int e = lane; e < BE; e += 32) dst[c * LDC + e] = (gr < nrows && e0 + e < EC) ? row[e] : zero;
    }
  }

  static __device__ __forceinline__ void zero(Acc& a) {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(a.f[i][j], 0.f);
  }

  // acc += X Yᵀ for row-major tiles Xs [64][lda(K)] and Ys [64][lda(K)].
  static __device__ __forceinline__ void gemm_abt(Acc& acc, const T* Xs, const T* Ys, int K) {
    const int ld = lda(K), Kp = round16(K);
    const T* xr = Xs + (wr() * 32) * ld;
    const T* yr = Ys + (wc() * 32) * ld;
    for (int kk = 0; kk < Kp; kk += 16) {
      FragA a[2];
      FragBt b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(a[i], xr + 16 * i * ld + kk, ld);
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(b[j], yr + 16 * j * ld + kk, ld);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc.f[i][j], a[i], b[j], acc.f[i][j]);
    }
  }

  // Ss[r][c] = acc[r][c] (row stride LDS).
  static __device__ __forceinline__ void store_acc(float* Ss, const Acc& acc) {
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j)
        nvcuda::wmma::store_matrix_sync(Ss + (wr() * 32 + 16 * i) * LDS + wc() * 32 + 16 * j, acc.f[i][j], LDS,
                                        nvcuda::wmma::mem_row_major);
  }

  // Ss[r][c] = (A Bᵀ)[r][c], float. The caller synchronises before reading Ss.
  static __device__ __forceinline__ void scores_to_smem(float* Ss, const T* As, const T* Bs, int K) {
    Acc s;
    zero(s);
    gemm_abt(s, As, Bs, K);
    store_acc(Ss, s);
  }

  // Ps[r][c] = round((A Bᵀ)[r][c] * weight(r, c)), through the float tile Ss.
  template <class F>
  static __device__ __forceinline__ void scores_to_p(T* Ps, const T* As, const T* Bs, int K, float* Ss, F weight) {
    scores_to_smem(Ss, As, Bs, K);
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int r = warp; r < BM; r += NT / 32)
      for (int c = lane; c < BN; c += 32) Ps[r * LDP + c] = Num<T>::from_f(Ss[r * LDS + c] * weight(r, c));
  }

  // acc[r][e] += sum_c P[r][c] C[c][e] for the row-major P [BM][LDP] and C [BN][LDC].
  static __device__ __forceinline__ void accumulate(Acc& acc, const T* Ps, const T* Cs) {
    const T* pr = Ps + (wr() * 32) * LDP;
    const T* cc = Cs + wc() * 32;
#pragma unroll
    for (int kk = 0; kk < BN; kk += 16) {
      FragA a[2];
      FragB b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(a[i], pr + 16 * i * LDP + kk, LDP);
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(b[j], cc + kk * LDC + 16 * j, LDC);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(acc.f[i][j], a[i], b[j], acc.f[i][j]);
    }
  }
};

}  // namespace linattn
