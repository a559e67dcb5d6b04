// Host entry points of the kernels, one pair per dtype (kernels_<dtype>.cu). Each returns
// nullptr on success or a message saying what went wrong.
#pragma once
#include <cstddef>
#include "problem.h"

#include <driver_types.h>  // cudaStream_t (a host-only header, also used by the emulator)

namespace linattn {

constexpr int kTile = 64;  // rows and columns of every tile (BM = BN = BE)

const char* launch_product_f32(const ProductArgs& p, cudaStream_t s);
const char* launch_product_f16(const ProductArgs& p, cudaStream_t s);
const char* launch_product_bf16(const ProductArgs& p, cudaStream_t s);
const char* launch_mask_grad_f32(const MaskGradArgs& p, cudaStream_t s);
const char* launch_mask_grad_f16(const MaskGradArgs& p, cudaStream_t s);
const char* launch_mask_grad_bf16(const MaskGradArgs& p, cudaStream_t s);

inline const char* launch_product(DType dt, const ProductArgs& p, cudaStream_t s) {
  switch (dt) {
    case DType::f32: return launch_product_f32(p, s);
    case DType::f16: return launch_product_f16(p, s);
    case DType::bf16: return launch_product_bf16(p, s);
  }
  return "unknown dtype";
}

inline const char* launch_mask_grad(DType dt, const MaskGradArgs& p, cudaStream_t s) {
  switch (dt) {
    case DType::f32: return launch_mask_grad_f32(p, s);
    case DType::f16: return launch_mask_grad_f16(p, s);
    case DType::bf16: return launch_mask_grad_bf16(p, s);
  }
  return "unknown dtype";
}

}  // namespace linattn
