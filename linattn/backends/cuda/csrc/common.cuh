// Pieces every kernel shares: tile sizes, dtype conversions, the shared-memory carver, the
// effective-mask weight W(i, j) and the dense-mask tile loader.
//
// Tiles are 64 x 64 everywhere (rows x columns of a score tile, and 64 output channels per
// block); a block is 128 threads (4 warps). All arithmetic accumulates in float32.
#pragma once

#ifndef LINATTN_EMULATE
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
#define LINATTN_DYN_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#define LINATTN_HD __host__ __device__
#else
#define LINATTN_HD
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include "problem.h"

namespace linattn {

constexpr int BM = 64;   // rows of the output tile (queries in row mode, keys in col mode)
constexpr int BN = 64;   // columns of the score tile: the index contracted in the second product
constexpr int BE = 64;   // output channels per block
constexpr int NT = 128;  // threads per block
constexpr int LDS = BN + 4;  // row stride of float score / staging tiles in shared memory
constexpr int LDM = BN + 1;  // row stride of the dense-mask tile (odd: transposed reads are conflict-free)

LINATTN_HD inline size_t align128(size_t x) { return (x + 127) / 128 * 128; }
LINATTN_HD inline int round16(int x) { return (x + 15) / 16 * 16; }
LINATTN_HD inline int imin(int a, int b) { return a < b ? a : b; }
LINATTN_HD inline int imax(int a, int b) { return a > b ? a : b; }
LINATTN_HD inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// float <-> storage type. Rounding is to nearest even, as torch does.
template <class T> struct Num;
template <> struct Num<float> {
  static __device__ __forceinline__ float to_f(float x) { return x; }
  static __device__ __forceinline__ float from_f(float x) { return x; }
};
template <> struct Num<__half> {
  static __device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
  static __device__ __forceinline__ __half from_f(float x) { return __float2half_rn(x); }
};
template <> struct Num<__nv_bfloat16> {
  static __device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
  static __device__ __forceinline__ __nv_bfloat16 from_f(float x) { return __float2bfloat16_rn(x); }
};

// Causal and decay factor of W at query i, key j (1 when neither is on).
__device__ __forceinline__ float causal_decay(int i, int j, bool causal, bool decay, float slope) {
  if (!causal) return 1.f;
  if (j > i) return 0.f;
  return decay ? expf(-slope * (float)(i - j)) : 1.f;
}

// Load the dense-mask tile rows i0..i0+63, columns j0..j0+63 of one (b, h) into
// Ms[li * LDM + lj] as float, zero outside [0, n) x [0, m). Rows go to warps, columns to
// lanes, so a row-major mask is read coalesced whichever way the caller uses the tile; with
// contiguous 16-byte aligned rows each lane reads 4 (float32) or 8 (half) columns at once.
template <class T>
__device__ __forceinline__ void load_mask_tile(float* Ms, const T* mask_bh, int64_t si, int64_t sj,
                                               int i0, int j0, int n, int m) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte vector
  if (sj == 1 && si % V == 0 && aligned16(mask_bh)) {
    constexpr int LPR = BN / V;  // lanes per row
    const int lj = V * (lane % LPR);
    for (int li = warp * (32 / LPR) + lane / LPR; li < BN; li += NT / LPR) {
      const int i = i0 + li, j = j0 + lj;
      float* d = Ms + li * LDM + lj;
      if (i < n && j + V <= m) {
        const uint4 raw = *reinterpret_cast<const uint4*>(mask_bh + i * si + j);
        T x[V];
        memcpy(x, &raw, sizeof(raw));  // not a pointer cast: that would break strict aliasing
#pragma unroll
        for (int u = 0; u < V; ++u) d[u] = Num<T>::to_f(x[u]);
      } else {
#pragma unroll
        for (int u = 0; u < V; ++u) d[u] = (i < n && j + u < m) ? Num<T>::to_f(mask_bh[i * si + j + u]) : 0.f;
      }
    }
    return;
  }
  for (int li = warp; li < BN; li += NT / 32) {
    const int i = i0 + li;
    for (int lj = lane; lj < BN; lj += 32) {
      const int j = j0 + lj;
      Ms[li * LDM + lj] = (i < n && j < m) ? Num<T>::to_f(mask_bh[i * si + j * sj]) : 0.f;
    }
  }
}

// Hands out 128-byte aligned pieces of the dynamic shared memory, in a fixed order that the
// host (to size the launch) and the kernel (to find the pieces) both follow.
struct Carver {
  size_t offset = 0;
  unsigned char* base = nullptr;
  LINATTN_HD explicit Carver(unsigned char* b = nullptr) : base(b) {}
  template <class U>
  LINATTN_HD U* take(size_t count) {
    U* p = reinterpret_cast<U*>(base + offset);
    offset += align128(count * sizeof(U));
    return p;
  }
};

}  // namespace linattn
