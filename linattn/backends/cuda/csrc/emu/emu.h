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
// Tensor-core arithmetic (emu::mma_block): by default the hardware model of Hopper (H100 /
// H200) for mma.sync with float32 accumulation, after Fasi, Higham, Mikaitis & Pranesh,
// "Numerical behavior of NVIDIA tensor cores" (PeerJ CS 2021) and Khattak & Mikaitis,
// "Accurate models of NVIDIA tensor cores" (arXiv 2512.07004): the products of one
// instruction's whole k (8 for tf32, 16 for halves) are exact; they and the accumulator c
// are aligned to the largest exponent among them, each significand keeping 2 bits below the
// float32 ulp of that exponent and losing the rest by truncation (no sticky bit); the
// aligned terms are summed exactly and the sum is normalised and rounded toward zero to
// float32. So every instruction drops ~ half a float32 ulp of |c| *toward zero*: a long
// chain of mma into one accumulator carries a biased error ~ n u, not ~ sqrt(n) u.
// LINATTN_CUDA_EMU_MMA=rn selects an idealised unit instead (the same exact products and c
// summed, rounded once to nearest), to tell the two apart in tests.
// What this cannot catch: bank conflicts, register pressure, real races between warps that
// the barrier hides; compute-sanitizer (gpu/cuda_sanitize.sh) covers those on a GPU.
#pragma once
#define LINATTN_EMULATE 1

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_types.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
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

// 0: hardware model (truncating alignment, round toward zero); 1: round to nearest.
inline int mma_mode() {
  static const int mode = [] {
    const char* e = std::getenv("LINATTN_CUDA_EMU_MMA");
    if (e == nullptr || e[0] == 0 || std::strcmp(e, "rz") == 0) return 0;
    if (std::strcmp(e, "rn") == 0) return 1;
    std::fprintf(stderr, "LINATTN_CUDA_EMU_MMA: expected 'rz' (hardware model, default) or 'rn', got '%s'; using rz\n", e);
    return 0;
  }();
  return mode;
}

// float32 nearest to x in the direction of zero (x finite, |x| within float range).
inline float to_f32_rz(double x) {
  float f = (float)x;  // round to nearest
  if ((double)std::fabs(f) > std::fabs(x)) f = std::nextafterf(f, 0.f);
  return f;
}

// One tensor-core instruction's d = c + sum_k a[k] b[k] for one output element (float32
// accumulation), a and b exactly representable in the input format (tf32 / fp16 / bf16).
// Hardware model (mma_mode() == 0), per Khattak & Mikaitis's H100 model: all k products
// in one block (k = 8 for tf32 m16n8k8, 16 for m16n8k16), 2 extra alignment bits, alignment
// to the largest exponent by truncation, final rounding toward zero. Subnormal corner
// cases are not modelled (the kernels' data stay far from them).
inline float mma_block(float c, const float* a, const float* b, int k) {
  double prod[16];
  int eprod[16];  // exponent of each kept product as the hardware sees it (see below)
  int n = 0;
  for (int i = 0; i < k; ++i) {
    const double p = (double)a[i] * (double)b[i];  // exact: <= 2 x 11 significant bits
    if (p == 0.0) continue;
    // a[i], b[i] nonzero here; frexp gives m in [0.5, 1): exponent of the leading bit is e - 1.
    // Taken here, beside the product: the zero products are dropped, so a compacted index
    // no longer points at the product's own a and b.
    int ea, eb;
    std::frexp((double)a[i], &ea);
    std::frexp((double)b[i], &eb);
    eprod[n] = (ea - 1) + (eb - 1);
    prod[n++] = p;
  }
  if (mma_mode() == 1) {
    double s = c;
    for (int i = 0; i < n; ++i) s += prod[i];  // exact for these magnitudes in practice
    return (float)s;
  }
  if (n == 0) return c;
  // exponent of each product as the hardware sees it: ea + eb (significand product in
  // [1, 4)); one more alignment bit when the largest such product has significand >= 2
  // and c does not exceed it (the model's "extra bit for products >= 2")
  int emax_ab = INT32_MIN;
  double sig_at_max = 0.0;
  for (int i = 0; i < n; ++i) {
    const int e = eprod[i];
    const double sig = std::fabs(prod[i]) / std::ldexp(1.0, e);  // in [1, 4)
    if (e > emax_ab || (e == emax_ab && sig > sig_at_max)) {
      emax_ab = e;
      sig_at_max = sig;
    }
  }
  int ec = INT32_MIN;
  if (c != 0.f) {
    int e;
    std::frexp((double)c, &e);
    ec = std::max(e - 1, -126);
  }
  int neab = 2;
  int emax;  // largest exponent after normalising products >= 2
  if (sig_at_max >= 2.0 && emax_ab >= ec) {
    neab += 1;
    emax = emax_ab + 1;
  } else {
    emax = std::max(ec, sig_at_max >= 2.0 ? emax_ab + 1 : emax_ab);
  }
  const double q = std::ldexp(1.0, emax - 23 - neab);  // the grid every term is truncated to
  double s = std::trunc((double)c / q) * q;
  for (int i = 0; i < n; ++i) s += std::trunc(prod[i] / q) * q;  // exact: < 2^30 grid steps
  return to_f32_rz(s);
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
      float av[16], bv[16];
      for (int k = 0; k < 16; ++k) {
        av[k] = a.x[r][k];
        bv[k] = b.x[k][n];
      }
      out[r][n] = emu::mma_block(c.x[r][n], av, bv, 16);
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
      if (kind == 0) {  // three m16n8k8 instructions in the order of mma_tf32x3
        float ahi[8], alo[8], bhi[8], blo[8];
        for (int k = 0; k < 8; ++k) {
          const int al = (row % 8) * 4 + k % 4, ai = (row >= 8) + 2 * (k >= 4);
          const int bl = col * 4 + k % 4, bi = (k >= 4);
          ahi[k] = slot.a[al][ai];
          alo[k] = slot.a[al][4 + ai];
          bhi[k] = slot.b[bl][4 * j + bi];
          blo[k] = slot.b[bl][4 * j + 2 + bi];
        }
        d = mma_block(d, alo, bhi, 8);
        d = mma_block(d, ahi, blo, 8);
        d = mma_block(d, ahi, bhi, 8);
      } else {
        float av[16], bv[16];
        for (int k = 0; k < 16; ++k) {
          const int al = (row % 8) * 4 + (k % 8) / 2, ai = (k % 2) + 2 * (row >= 8) + 4 * (k >= 8);
          const int bl = col * 4 + (k % 8) / 2, bi = (k % 2) + 2 * (k >= 8);
          av[k] = slot.a[al][ai];
          bv[k] = slot.b[bl][4 * j + bi];
        }
        d = mma_block(d, av, bv, 16);
      }
      acc[4 * j + e] = d;
    }
}

// __shfl_sync(full mask, v, src) for this lane: every lane of the warp deposits v, meets the
// others at the per-warp barrier and reads lane src's value (the two alternating slots keep
// a lane that runs ahead from overwriting a value still being read).
inline float warp_shfl(float v, int src) {
  const int lane = tidx.x % 32, w = tidx.x / 32;
  WarpSlot& slot = warp_slots[2 * w + warp_parity];
  warp_parity ^= 1;
  slot.a[lane][0] = v;
  warp_bars[w]->arrive_and_wait();
  return slot.a[src & 31][0];
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
