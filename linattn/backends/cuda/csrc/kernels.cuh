// Host launchers: size the grid and the shared memory, then launch. Included once per dtype
// (kernels_<dtype>.cu) and by the CPU emulator (emu/emu_lib.cpp).
#pragma once
#include "common.cuh"
#include "engine_ffma.cuh"
#include "engine_wmma.cuh"
#include "masked_product.cuh"
#include "mask_grad.cuh"
#include "launch.h"

#ifdef LINATTN_EMULATE
#define LINATTN_LAUNCH(kernel, blocks, smem, stream, ...) emu::launch(kernel, dim3(blocks), dim3(NT), smem, __VA_ARGS__)
#else
#define LINATTN_LAUNCH(kernel, blocks, smem, stream, ...) kernel<<<dim3(blocks), dim3(NT), smem, stream>>>(__VA_ARGS__)
#endif

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

template <class Eng>
const char* launch_product_t(const ProductArgs& p, cudaStream_t stream) {
  const int nR = p.col_mode ? p.m : p.n;
  const int64_t tiles_r = (nR + BM - 1) / BM, tiles_e = (p.ec + BE - 1) / BE;
  const int64_t heads = p.col_mode ? p.kv_heads : p.heads;
  const int64_t blocks = tiles_r * tiles_e * p.batch * heads;
  if (blocks == 0) return nullptr;
  if (blocks > kMaxBlocks) return "too many tiles for one launch";
  const size_t smem = ProductLayout<Eng>(nullptr, p.da, p.mask != nullptr).bytes;
  if (const char* why = prepare_smem(masked_product_kernel<Eng>, smem)) return why;
  LINATTN_LAUNCH(masked_product_kernel<Eng>, blocks, smem, stream, p, (int)tiles_r, (int)tiles_e);
  return launch_status();
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
