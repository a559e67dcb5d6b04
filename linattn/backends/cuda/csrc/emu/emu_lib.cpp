// The kernels compiled for the CPU emulator (emu.h), with a C interface for ctypes
// (linattn/backends/cuda/_emulator.py). Pointers are host memory laid out as on the GPU.
#include "emu.h"
#include "../kernels.cuh"

namespace linattn {
const char* launch_product_f32(const ProductArgs& p, cudaStream_t s) { return launch_product_float32(p, s); }
const char* launch_product_f16(const ProductArgs& p, cudaStream_t s) { return launch_product_t<HalfMmaEngine<__half>>(p, s); }
const char* launch_product_bf16(const ProductArgs& p, cudaStream_t s) {
  return launch_product_t<HalfMmaEngine<__nv_bfloat16>>(p, s);
}
const char* launch_mask_grad_f32(const MaskGradArgs& p, cudaStream_t s) { return launch_mask_grad_t<FfmaEngine>(p, s); }
const char* launch_mask_grad_f16(const MaskGradArgs& p, cudaStream_t s) {
  return launch_mask_grad_t<WmmaEngine<__half>>(p, s);
}
const char* launch_mask_grad_bf16(const MaskGradArgs& p, cudaStream_t s) {
  return launch_mask_grad_t<WmmaEngine<__nv_bfloat16>>(p, s);
}
}  // namespace linattn

static const char* finish(const char* why) {
  if (why) return why;
  if (emu::error.load()) {
    emu::error = 0;
    return emu::error_msg;
  }
  return nullptr;
}

extern "C" {

// mask_strides: [sb, sh, si, sj] in elements (0 on broadcast dims).
const char* linattn_emu_product(int dtype, const void* a, const void* b, const void* c, void* out, int out_f32,
                                const void* mask, const int64_t* mask_strides, const float* slopes, int batch,
                                int heads, int kv_heads, int n, int m, int da, int ec, float scale, int causal,
                                int col_mode) {
  linattn::ProductArgs p{};
  p.a = a; p.b = b; p.c = c; p.out = out; p.out_f32 = out_f32 != 0;
  p.mask = mask;
  if (mask) { p.mask_sb = mask_strides[0]; p.mask_sh = mask_strides[1]; p.mask_si = mask_strides[2]; p.mask_sj = mask_strides[3]; }
  p.slopes = slopes;
  p.batch = batch; p.heads = heads; p.kv_heads = kv_heads; p.n = n; p.m = m; p.da = da; p.ec = ec;
  p.scale = scale; p.causal = causal != 0; p.col_mode = col_mode != 0;
  return finish(linattn::launch_product(static_cast<linattn::DType>(dtype), p, nullptr));
}

const char* linattn_emu_mask_grad(int dtype, const void* q, const void* k, const void* v, const void* dout,
                                  const void* mask, const int64_t* mask_strides, int mask_b, int mask_h,
                                  const float* slopes, void* dmask, float* slope_partials, int batch, int heads,
                                  int kv_heads, int n, int m, int d, int e, float scale, int causal) {
  linattn::MaskGradArgs p{};
  p.q = q; p.k = k; p.v = v; p.dout = dout;
  p.mask = mask;
  if (mask) { p.mask_sb = mask_strides[0]; p.mask_sh = mask_strides[1]; p.mask_si = mask_strides[2]; p.mask_sj = mask_strides[3]; }
  p.mask_b = mask_b; p.mask_h = mask_h;
  p.slopes = slopes; p.dmask = dmask; p.slope_partials = slope_partials;
  p.batch = batch; p.heads = heads; p.kv_heads = kv_heads; p.n = n; p.m = m; p.d = d; p.e = e;
  p.scale = scale; p.causal = causal != 0;
  return finish(linattn::launch_mask_grad(static_cast<linattn::DType>(dtype), p, nullptr));
}

}  // extern "C"

extern "C" {
// One emulated tensor-core instruction for one output element: c + sum_i a[i] b[i] (k <= 16),
// under the mode LINATTN_CUDA_EMU_MMA selects; for tests of the arithmetic model.
float linattn_emu_mma_block(float c, const float* a, const float* b, int k) {
  if (k < 0 || k > 16) return NAN;
  return emu::mma_block(c, a, b, k);
}
}  // extern "C"
