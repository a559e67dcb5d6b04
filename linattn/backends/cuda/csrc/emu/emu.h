// A CPU emulator for the kernels, for tests on machines without a GPU.
//
// Each block runs as NT real threads (std::thread) that meet at a std::barrier on every
// __syncthreads(); blocks run one after another; dynamic shared memory is refilled with NaN
// bytes before every block, so a kernel that reads shared memory it never wrote produces NaN.
// nvcuda::wmma is emulated by giving every lane a full copy of the 16 x 16 fragment (float
// math); load/store check the pointer alignment (32 bytes) and ldm rules of the real API, and
// only lane 0 stores, so a missing barrier after a store shows up as stale data.
// mma.sync is emulated with the register layouts of the PTX ISA: the 32 lanes of a warp
// deposit their fragments, meet at a per-warp barrier, and each lane computes its own
// accumulator elements from the others' fragments (emu::warp_mma). ldmatrix and cp.async
// are emulated per lane (cp.async copies at once, which is one legal schedule).
// What this cannot catch: bank conflicts, register pressure, real races between warps that
// the barrier hides; compute-sanitizer (gpu/cuda_sanitize.sh) covers those on a GPU.
#pragma once
#define LINATTN_EMULATE 1

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

// cuda_fp16.h already defined __global__, __device__, __host__ and __forceinline__ as
// host-compiler-friendly no-ops; __launch_bounds__ is not one.
#undef __launch_bounds__
#define __launch_bounds__(...)

namespace emu {
inline thread_local dim3 tidx;
inline thread_local dim3 bidx;
inline dim3 bdim, gdim;
inline std::barrier<>* bar = nullptr;
inline unsigned char* dyn = nullptr;
inline std::atomic<int> error{0};
inline char error_msg[256] = {0};

inline void fail(const char* msg) {
  int expected = 0;
  if (error.compare_exchange_strong(expected, 1)) std::snprintf(error_msg, sizeof(error_msg), "%s", msg);
}

// float -> tf32 bits, round to nearest with ties away from zero (cvt.rna.tf32.f32)
inline uint32_t tf32_rna(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  return u;
}

// Per-warp exchange for mma.sync: two slots (alternating), so one barrier per call suffices.
struct WarpSlot {
  float a[32][8];
  float b[32][8 * 4];
};
inline std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
inline std::vector<WarpSlot> warp_slots;  // 2 per warp
inline thread_local int warp_parity = 0;
}  // namespace emu

#define threadIdx (emu::tidx)
#define blockIdx (emu::bidx)
#define blockDim (emu::bdim)
#define gridDim (emu::gdim)
#define LINATTN_DYN_SMEM(name) unsigned char* name = emu::dyn

inline void __syncthreads() { emu::bar->arrive_and_wait(); }

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float x[16][16];
};

template <class F>
inline void fill_fragment(F& f, float v) {
  for (auto& row : f.x)
    for (auto& e : row) e = v;
}

inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline void check_ptr(const void* p, unsigned ldm, size_t elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail("wmma pointer is not 32-byte aligned");
  if ((ldm * elem) % 16 != 0) emu::fail("wmma ldm is not a multiple of 16 bytes");
}

template <class Use, class T, class Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  check_ptr(p, ldm, sizeof(T));
  constexpr bool col = std::is_same<Layout, col_major>::value;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r][c] = as_float(col ? p[c * ldm + r] : p[r * ldm + c]);
}

template <class TA, class LA, class TB, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      float s = c.x[r][n];
      for (int k = 0; k < 16; ++k) s += a.x[r][k] * b.x[k][n];
      out[r][n] = s;
    }
  std::memcpy(d.x, out, sizeof(out));
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  check_ptr(p, ldm, sizeof(float));
  if (emu::tidx.x % 32 != 0) return;  // one lane writes; the others must wait at a barrier
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r][c];
}
}  // namespace wmma
}  // namespace nvcuda

namespace emu {
// acc[j][e] += (A B_j)[row(e)][col(e)] for this lane, j < nj. kind 0: m16n8k8 3xTF32, a = 4 hi
// then 4 lo values, b = per j {hi b0, hi b1, lo b0, lo b1}; kind 1: m16n8k16 half, a = the 8
// elements of a0..a3 (low half first), b = per j the 4 elements of b0, b1.
inline void warp_mma(int kind, int nj, const float* a, const float* b, float* acc) {
  const int lane = tidx.x % 32, w = tidx.x / 32;
  WarpSlot& slot = warp_slots[2 * w + warp_parity];
  warp_parity ^= 1;
  std::memcpy(slot.a[lane], a, 8 * sizeof(float));
  std::memcpy(slot.b[lane], b, (size_t)nj * 4 * sizeof(float));
  warp_bars[w]->arrive_and_wait();
  const int g = lane / 4, t = lane % 4;
  for (int j = 0; j < nj; ++j)
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
      float d = acc[4 * j + e];
      if (kind == 0) {
        float sums[3] = {0.f, 0.f, 0.f};  // lo*hi, hi*lo, hi*hi
        for (int k = 0; k < 8; ++k) {
          const int al = (row % 8) * 4 + k % 4, ai = (row >= 8) + 2 * (k >= 4);
          const int bl = col * 4 + k % 4, bi = (k >= 4);
          const float ahi = slot.a[al][ai], alo = slot.a[al][4 + ai];
          const float bhi = slot.b[bl][4 * j + bi], blo = slot.b[bl][4 * j + 2 + bi];
          sums[0] = std::fmaf(alo, bhi, sums[0]);
          sums[1] = std::fmaf(ahi, blo, sums[1]);
          sums[2] = std::fmaf(ahi, bhi, sums[2]);
        }
        d = ((d + sums[0]) + sums[1]) + sums[2];
      } else {
        float sum = 0.f;
        for (int k = 0; k < 16; ++k) {
          const int al = (row % 8) * 4 + (k % 8) / 2, ai = (k % 2) + 2 * (row >= 8) + 4 * (k >= 8);
          const int bl = col * 4 + (k % 8) / 2, bi = (k % 2) + 2 * (k >= 8);
          sum = std::fmaf(slot.a[al][ai], slot.b[bl][4 * j + bi], sum);
        }
        d += sum;
      }
      acc[4 * j + e] = d;
    }
}

template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
  const unsigned nt = block.x * block.y * block.z;
  const long long nblocks = (long long)grid.x * grid.y * grid.z;
  std::vector<unsigned char> buf(smem + 128);
  unsigned char* base = buf.data() + (128 - reinterpret_cast<uintptr_t>(buf.data()) % 128) % 128;
  dyn = base;
  bdim = block;
  gdim = grid;
  std::barrier<> b(nt);
  bar = &b;
  const unsigned nw = (nt + 31) / 32;
  warp_bars.clear();
  for (unsigned w = 0; w < nw; ++w) warp_bars.emplace_back(std::make_unique<std::barrier<>>(nt - 32 * w < 32 ? nt - 32 * w : 32));
  warp_slots.assign(2 * nw, WarpSlot{});
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < nt; ++t) {
    threads.emplace_back([&, t] {
      tidx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
      warp_parity = 0;
      for (long long blk = 0; blk < nblocks; ++blk) {
        if (t == 0) std::memset(base, 0xFF, smem);  // NaN everywhere
        bidx = dim3(blk % grid.x, (blk / grid.x) % grid.y, blk / ((long long)grid.x * grid.y));
        b.arrive_and_wait();
        kernel(args...);
        b.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
  bar = nullptr;
}
}  // namespace emu
