// Host launchers: size the grid and the shared memory, then launch. Included once per dtype
// (kernels_<dtype>.cu) and by the CPU emulator (emu/emu_lib.cpp).
#pragma once
#include "common.cuh"
#include "engine_ffma.cuh"
#include "engine_wmma.cuh"
#include "engine_mma.cuh"
#include "masked_product.cuh"
#include "mask_grad.cuh"
#include "launch.h"

#include <cstdio>
#include <cstdlib>

#ifdef LINATTN_EMULATE
#define LINATTN_LAUNCH_T(kernel, blocks, threads, smem, stream, ...) \
  emu::launch(kernel, dim3(blocks), dim3(threads), smem, __VA_ARGS__)
#else
#define LINATTN_LAUNCH_T(kernel, blocks, threads, smem, stream, ...) \
  kernel<<<dim3(blocks), dim3(threads), smem, stream>>>(__VA_ARGS__)
#endif
#define LINATTN_LAUNCH(kernel, blocks, smem, stream, ...) LINATTN_LAUNCH_T(kernel, blocks, NT, smem, stream, __VA_ARGS__)

namespace linattn {

constexpr int64_t kMaxBlocks = 2147483647;

// Raise the kernel's dynamic shared memory limit to `bytes`, or say why it cannot be done.
template <class K>
inline const char* prepare_smem(K kernel, size_t bytes) {
#ifdef LINATTN_EMULATE
  (void)kernel;
  return bytes > 232448 ? "shared memory per block exceeds 227 KiB" : nullptr;
#else
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return "cudaGetDevice failed";
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin) failed";
  if (bytes > (size_t)optin) return "the tiles need more shared memory than this GPU gives one block";
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) != cudaSuccess)
    return "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) failed";
  return nullptr;
#endif
}

inline const char* launch_status() {
#ifdef LINATTN_EMULATE
  return nullptr;
#else
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
#endif
}

// The opt-in shared memory per block of the current GPU (227 KiB on Hopper).
inline size_t smem_optin() {
#ifdef LINATTN_EMULATE
  return 232448;
#else
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
  return (size_t)optin;
#endif
}

template <class Eng, int WARPS>
const char* launch_product_cfg(const ProductArgs& p, cudaStream_t stream, int stages, size_t smem) {
  constexpr int BMr = 16 * WARPS;
  const int nR = p.col_mode ? p.m : p.n;
  const int64_t tiles_r = (nR + BMr - 1) / BMr, tiles_e = (p.ec + BE - 1) / BE;
  const int64_t heads = p.col_mode ? p.kv_heads : p.heads;
  const int64_t blocks = tiles_r * tiles_e * p.batch * heads;
  if (blocks == 0) return nullptr;
  if (blocks > kMaxBlocks) return "too many tiles for one launch";
  if (const char* why = prepare_smem(masked_product_kernel<Eng, WARPS>, smem)) return why;
  LINATTN_LAUNCH_T((masked_product_kernel<Eng, WARPS>), blocks, 32 * WARPS, smem, stream, p, (int)tiles_r,
                   (int)tiles_e, stages);
  return launch_status();
}

// The masked product with the largest configuration that fits the GPU's shared memory, in the
// order 8 warps / 2 buffers, 4 warps / 2 buffers, 8 warps / 1 buffer, 4 warps / 1 buffer.
// LINATTN_CUDA_CONFIG=<warps>x<stages> (e.g. 4x1) forces one, for experiments.
template <class Eng>
const char* launch_product_t(const ProductArgs& p, cudaStream_t stream) {
  const size_t optin = smem_optin();
  const bool m = p.mask != nullptr;
  int force_w = 0, force_s = 0;
  if (const char* env = std::getenv("LINATTN_CUDA_CONFIG")) {
    if (std::sscanf(env, "%dx%d", &force_w, &force_s) != 2) force_w = force_s = 0;
  }
  // the pre-split engine keeps two 8-warp blocks per SM only single-buffered (its split tiles)
  const int order[4][2] = {{8, Eng::PRESPLIT ? 1 : 2}, {4, Eng::PRESPLIT ? 1 : 2}, {8, Eng::PRESPLIT ? 2 : 1},
                           {4, Eng::PRESPLIT ? 2 : 1}};
  for (const auto& cfg : order) {
    const int w = cfg[0], st = cfg[1];
    if (force_w && (w != force_w || st != force_s)) continue;
    const size_t bytes = w == 8 ? ProductTiles<Eng, 8>(nullptr, p.da, m, p.col_mode, st).bytes
                                : ProductTiles<Eng, 4>(nullptr, p.da, m, p.col_mode, st).bytes;
    if (bytes > optin) continue;
    return w == 8 ? launch_product_cfg<Eng, 8>(p, stream, st, bytes) : launch_product_cfg<Eng, 4>(p, stream, st, bytes);
  }
  return "the tiles need more shared memory than this GPU gives one block";
}

// float32: 3xTF32 tensor cores, or IEEE FFMA (Fp32FmaEngine) where a contraction is short.
// 3xTF32 keeps 22 of float32's 24 significand bits of each operand; over a long contraction
// those errors, of random sign, stay at the float32 formula's level (harness bands), but on a
// problem of a few terms the formula makes one or two roundings and 3xTF32 lands above it
// (fuzz: N = M = D = 1 at 1.15-1.36x the band). Short means: the contracted index fits one
// tile (nC <= 32), or the head dim fits one k-step (DA <= 8); such launches are cheap on
// the CUDA cores. LINATTN_CUDA_FP32_FFMA=1 forces FFMA everywhere, =0 never (experiments).
inline bool fp32_use_ffma(const ProductArgs& p) {
  if (const char* env = std::getenv("LINATTN_CUDA_FP32_FFMA")) {
    if (env[0] == '1') return true;
    if (env[0] == '0') return false;
  }
  const int nC = p.col_mode ? p.n : p.m;
  return nC <= Fp32FmaEngine::BNc || p.da <= 8;
}

// 3xTF32 with b and c split once per block (Tf32x3SplitEngine) for DA <= 64, where its split
// tiles fit beside two blocks per SM; LINATTN_CUDA_FP32_PRESPLIT=0 keeps the per-warp splits
// of v3 (Tf32x3Engine) everywhere (results are bitwise the same; for timing).
inline bool fp32_use_presplit(const ProductArgs& p) {
  if (const char* env = std::getenv("LINATTN_CUDA_FP32_PRESPLIT")) {
    if (env[0] == '0') return false;
  }
  return Tf32x3SplitEngine::kpad(p.da) <= Tf32x3SplitEngine::MAX_KP;
}

// v5's tile schedule for the pre-split engine (Tf32x3SplitEarlyEngine: the next mask tile
// issued right after the weighting, loading behind the P c products; no end-of-tile barrier);
// LINATTN_CUDA_FP32_EARLYMASK=0 keeps v4's (bitwise the same results; for timing).
inline bool fp32_use_earlymask() {
  if (const char* env = std::getenv("LINATTN_CUDA_FP32_EARLYMASK")) {
    if (env[0] == '0') return false;
  }
  return true;
}

// v5 default (with the v5 schedule): lo parts left for the mma to truncate (mma.cuh,
// split_tf32_trunc): 3 instructions a split instead of 7, not bitwise v4 (under the emulator's
// Hopper model the errors are those of rounded lo parts to within +-10 %, in the bands as
// much: the tensor core's own truncations dominate). LINATTN_CUDA_FP32_LOTRUNC=0 rounds lo
// (cvt.rna, bitwise v4).
// v6: P split once per tile in the accumulation (Tf32x3SplitEngineT's PONCE; bitwise v5).
// LINATTN_CUDA_FP32_PONCE=1 selects it (off until timed on a GPU).
inline bool fp32_use_ponce() {
  const char* env = std::getenv("LINATTN_CUDA_FP32_PONCE");
  return env != nullptr && env[0] == '1';
}

inline bool fp32_use_lotrunc() {
  const char* env = std::getenv("LINATTN_CUDA_FP32_LOTRUNC");
  return env == nullptr || env[0] != '0';
}

// (a template so that only the float32 translation unit instantiates the float32 kernels)
template <class Unused = void>
const char* launch_product_float32(const ProductArgs& p, cudaStream_t stream) {
  if (fp32_use_ffma(p)) return launch_product_t<Fp32FmaEngine>(p, stream);
  if (fp32_use_presplit(p)) {
    if (!fp32_use_earlymask()) return launch_product_t<Tf32x3SplitEngine>(p, stream);
    if (!fp32_use_lotrunc()) return launch_product_t<Tf32x3SplitEarlyEngine>(p, stream);
    return fp32_use_ponce() ? launch_product_t<Tf32x3SplitEarlyTruncOnceEngine>(p, stream)
                            : launch_product_t<Tf32x3SplitEarlyTruncEngine>(p, stream);
  }
  return launch_product_t<Tf32x3Engine>(p, stream);
}

template <class Eng>
const char* launch_mask_grad_t(const MaskGradArgs& p, cudaStream_t stream) {
  const int64_t tiles_i = (p.n + BM - 1) / BM, tiles_j = (p.m + BN - 1) / BN;
  const int64_t blocks = tiles_i * tiles_j * p.mask_b * p.mask_h;
  if (blocks == 0) return nullptr;
  if (blocks > kMaxBlocks) return "too many tiles for one launch";
  const size_t smem = MaskGradLayout<Eng>(nullptr, p.d, p.e, p.mask != nullptr).bytes;
  if (const char* why = prepare_smem(mask_grad_kernel<Eng>, smem)) return why;
  LINATTN_LAUNCH(mask_grad_kernel<Eng>, blocks, smem, stream, p, (int)tiles_i, (int)tiles_j);
  return launch_status();
}

}  // namespace linattn
