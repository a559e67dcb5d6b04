// Warp-level building blocks of the tensor-core engine (engine_mma.cuh): mma.sync, the
// 3xTF32 split, ldmatrix, cp.async. Each wrapper is a few lines of inline PTX on the GPU;
// under the CPU emulator (LINATTN_EMULATE, emu/emu.h) the same call runs an emulation with
// the register layouts of the PTX ISA, so the fragment index math of the engine is tested.
// Tiling: each warp owns a 16-row tile of the output; these wrappers move 16x8 / 16x16
// fragments of that tile between shared memory, registers and the tensor cores.
//
// Fragment layouts used throughout (lane = 4 g + t, g = lane / 4, t = lane % 4):
//   accumulator 16 x 8 (f32):  c0, c1 = (row g,   cols 2t, 2t+1)   c2, c3 = (row g+8, same cols)
//   m16n8k8 tf32   A 16 x 8:   a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4)
//                  B  8 x 8:   b0 (k t, n g)  b1 (k t+4, n g)
//   m16n8k16 half  A 16 x 16:  a0 = (g, 2t..2t+1)  a1 = (g+8, 2t..)  a2 = (g, 2t+8..)  a3 = (g+8, 2t+8..)
//                  B 16 x 8:   b0 = (k 2t..2t+1, n g)  b1 = (k 2t+8..2t+9, n g)
//   (each half register holds two elements, the lower index in the low 16 bits).
//
// 3xTF32: x = hi + lo with hi = tf32(x), lo = tf32(x - hi); a b ≈ a_lo b_hi + a_hi b_lo + a_hi b_hi
// keeps about 21 significant bits of every product (the dropped a_lo b_lo is below 2^-22 of a b), and
// every sum is float32: float32 accuracy at tensor-core speed.
#pragma once
#include <type_traits>

#include "common.cuh"

namespace linattn {

// -- float -> tf32 (round to nearest, ties away), and its value as float --------------------------
__device__ __forceinline__ uint32_t to_tf32(float x) {
#ifndef LINATTN_EMULATE
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
  return u;
#else
  return emu::tf32_rna(x);
#endif
}

__device__ __forceinline__ float tf32_value(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof(x));
  return x;
}

// The same rounding as cvt.rna for finite x and for ±inf, in two integer instructions: adding
// half a tf32 ulp (0x1000) to the magnitude bits and clearing the 13 low bits rounds to
// nearest, ties away from zero, carries into the exponent included (the largest floats round
// to inf, as cvt.rna does). sm_90 has no cvt.rna.tf32 instruction: ptxas emits four (add,
// |x| < inf test, select, mask), the test only keeping NaN a NaN. NaN is the one difference:
// here its bits may turn into anything; split_tf32 below relies on lo for NaN propagation.
__device__ __forceinline__ uint32_t to_tf32_finite(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return (u + 0x1000u) & 0xffffe000u;
}

// x = hi + lo (3xTF32). hi is rounded with the two-instruction form (bitwise cvt.rna for every
// non-NaN x); lo = tf32(x - hi) with cvt.rna, so a NaN x gives a NaN lo (x - hi is NaN whatever
// hi is) and NaN still propagates through the a_hi b_lo / a_lo b_hi products. Results are
// bitwise those of cvt.rna for both parts (v4) on all non-NaN inputs.
__device__ __forceinline__ void split_tf32(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32_finite(x);
  lo = to_tf32(x - tf32_value(hi));
}

// x = hi + lo with lo left unrounded (v5 default; LINATTN_CUDA_FP32_LOTRUNC=0 rounds): an mma.sync on tf32
// operands reads only the upper 19 bits of each register, so passing x - hi as it is truncates
// lo to tf32 (error < 2^-11 |lo| <= 2^-22 |x|, of the sign of lo, i.e. random relative to x)
// instead of rounding it (2^-23 |x|): one float32 add instead of an add and a four-instruction
// cvt.rna per split. NaN propagates (x - hi is NaN). Not bitwise v4.
__device__ __forceinline__ void split_tf32_trunc(float x, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32_finite(x);
  const float l = x - tf32_value(hi);
  memcpy(&lo, &l, sizeof(lo));
}

// -- two half-precision values <-> one 32-bit register ----------------------------------------
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
#ifndef LINATTN_EMULATE
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
#else
  const T a = Num<T>::from_f(lo), b = Num<T>::from_f(hi);
  uint16_t ua, ub;
  memcpy(&ua, &a, 2);
  memcpy(&ub, &b, 2);
  return (uint32_t)ua | ((uint32_t)ub << 16);
#endif
}

// Two consecutive T at p (4-byte aligned) as one register.
template <class T>
__device__ __forceinline__ uint32_t ld_pair(const T* p) {
#ifndef LINATTN_EMULATE
  return *reinterpret_cast<const uint32_t*>(p);
#else
  if (reinterpret_cast<uintptr_t>(p) % 4 != 0) emu::fail("ld_pair: address not 4-byte aligned");
  uint32_t u;
  memcpy(&u, p, 4);
  return u;
#endif
}

// -- 16-byte shared-memory vectors of four 32-bit words (p 16-byte aligned) --------------------
__device__ __forceinline__ void st_u32x4(uint32_t* p, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
#ifndef LINATTN_EMULATE
  *reinterpret_cast<uint4*>(p) = make_uint4(a, b, c, d);
#else
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu::fail("st_u32x4: address not 16-byte aligned");
  p[0] = a; p[1] = b; p[2] = c; p[3] = d;
#endif
}

__device__ __forceinline__ void ld_u32x4(uint32_t (&r)[4], const uint32_t* p) {
#ifndef LINATTN_EMULATE
  const uint4 v = *reinterpret_cast<const uint4*>(p);
  r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
#else
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu::fail("ld_u32x4: address not 16-byte aligned");
  r[0] = p[0]; r[1] = p[1]; r[2] = p[2]; r[3] = p[3];
#endif
}

// -- one float from lane `src` of this warp (all 32 lanes take part) -------------------------
__device__ __forceinline__ float shfl(float v, int src) {
#ifndef LINATTN_EMULATE
  return __shfl_sync(0xffffffffu, v, src);
#else
  return emu::warp_shfl(v, src);
#endif
}

// -- mma.sync over NJ accumulator tiles that share one A fragment ----------------------------
#ifndef LINATTN_EMULATE
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <class T>
__device__ __forceinline__ void mma_half(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, __half>::value) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}
#endif

// acc[j] += A B_j in 3xTF32 (small terms first), j < NJ.
template <int NJ>
__device__ __forceinline__ void mma_tf32x3(float (&acc)[NJ][4], const uint32_t (&ahi)[4], const uint32_t (&alo)[4],
                                           const uint32_t (&bhi)[NJ][2], const uint32_t (&blo)[NJ][2]) {
#ifndef LINATTN_EMULATE
#pragma unroll
  for (int j = 0; j < NJ; ++j) {
    mma_tf32(acc[j], alo, bhi[j]);
    mma_tf32(acc[j], ahi, blo[j]);
    mma_tf32(acc[j], ahi, bhi[j]);
  }
#else
  float a[8], b[NJ * 4];
  for (int i = 0; i < 4; ++i) {
    a[i] = tf32_value(ahi[i] & 0xffffe000u);
    a[4 + i] = tf32_value(alo[i] & 0xffffe000u);
  }
  for (int j = 0; j < NJ; ++j)
    for (int i = 0; i < 2; ++i) {
      b[4 * j + i] = tf32_value(bhi[j][i] & 0xffffe000u);
      b[4 * j + 2 + i] = tf32_value(blo[j][i] & 0xffffe000u);
    }
  emu::warp_mma(0, NJ, a, b, &acc[0][0]);
#endif
}

// acc[j] += A B_j for float16 / bfloat16 fragments, j < NJ.
template <class T, int NJ>
__device__ __forceinline__ void mma_half_row(float (&acc)[NJ][4], const uint32_t (&a)[4], const uint32_t (&b)[NJ][2]) {
#ifndef LINATTN_EMULATE
#pragma unroll
  for (int j = 0; j < NJ; ++j) mma_half<T>(acc[j], a, b[j]);
#else
  auto unpack = [](uint32_t u, float* out) {
    const uint16_t lo = (uint16_t)(u & 0xffffu), hi = (uint16_t)(u >> 16);
    T x, y;
    memcpy(static_cast<void*>(&x), &lo, 2);
    memcpy(static_cast<void*>(&y), &hi, 2);
    out[0] = Num<T>::to_f(x);
    out[1] = Num<T>::to_f(y);
  };
  float af[8], bf[NJ * 4];
  for (int i = 0; i < 4; ++i) unpack(a[i], af + 2 * i);
  for (int j = 0; j < NJ; ++j) {
    unpack(b[j][0], bf + 4 * j);
    unpack(b[j][1], bf + 4 * j + 2);
  }
  emu::warp_mma(1, NJ, af, bf, &acc[0][0]);
#endif
}

// -- ldmatrix.x4.trans: B fragments of two 16 x 8 tiles from a row-major [k][n] tile -----------
// tile points at element (k0, n0), row stride ld (elements, ld * sizeof(T) % 16 == 0). Returns
// r[0], r[1] = b0, b1 of columns n0..n0+7 and r[2], r[3] = b0, b1 of columns n0+8..n0+15.
// Lane l gives the address of row (l % 8) + 8 ((l / 8) % 2), column 8 (l / 16): matrix l / 8.
template <class T>
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const T* tile, int ld) {
  const int lane = threadIdx.x & 31;
  const T* p = tile + ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8;
#ifndef LINATTN_EMULATE
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#else
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu::fail("ldmatrix: row address not 16-byte aligned");
  const int g = lane >> 2, t = lane & 3;
  for (int m = 0; m < 4; ++m) {
    const T* base = tile + ((m & 1) * 8) * ld + (m >> 1) * 8;  // matrix m
    uint16_t lo, hi;
    memcpy(&lo, base + (2 * t) * ld + g, 2);
    memcpy(&hi, base + (2 * t + 1) * ld + g, 2);
    r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
  }
#endif
}

// -- cp.async: 16 bytes global -> shared, zero-filled when !valid (src is then not read) ------
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#ifndef LINATTN_EMULATE
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(valid ? 16 : 0) : "memory");
#else
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0))
    emu::fail("cp.async: address not 16-byte aligned");
  if (valid) memcpy(dst, src, 16);
  else memset(dst, 0, 16);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifndef LINATTN_EMULATE
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifndef LINATTN_EMULATE
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace linattn
