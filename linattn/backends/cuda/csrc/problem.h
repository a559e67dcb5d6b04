// Plain descriptions of one kernel call, shared by the torch binding (binding.cpp), the
// kernels (*.cuh) and the CPU emulator (emu/). No CUDA or torch types here.
#pragma once
#include <cstdint>

namespace linattn {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// The masked product, the one kernel behind o, dq, dk and dv (see masked_product.cuh):
//
//   row mode (o, dq):   out[b,h,r,:]  = scale * sum_c (a[b,h,r] . b[b,g,c]) W[b,h,r,c] c[b,g,c,:]
//   col mode (dk, dv):  out[b,g,r,:]  = scale * sum_{h in group g} sum_c
//                                           (a[b,g,r] . b[b,h,c]) W[b,h,c,r] c[b,h,c,:]
//
// with g = h / (heads / kv_heads). All of a, b, c, out are contiguous [batch, heads', len, dim].
// Row mode: a [B,H,N,DA], b [B,Hkv,M,DA], c [B,Hkv,M,EC], out [B,H,N,EC].
// Col mode: a [B,Hkv,M,DA], b [B,H,N,DA], c [B,H,N,EC], out [B,Hkv,M,EC].
struct ProductArgs {
  const void* a;
  const void* b;
  const void* c;
  void* out;
  bool out_f32;  // out is float32 (else the input dtype)
  const void* mask;  // dense mask element (b,h,i,j) at mask[b*sb + h*sh + i*si + j*sj], or null
  int64_t mask_sb, mask_sh, mask_si, mask_sj;  // element strides, 0 on broadcast dims
  const float* slopes;  // [heads] decay slopes, or null
  int batch, heads, kv_heads, n, m, da, ec;
  float scale;
  bool causal;
  bool col_mode;
};

// The mask / slopes gradient (see mask_grad.cuh). The block for mask tile (z, i-tile, j-tile)
// loops over every (b, h) that reads that mask entry:
//   dW[b,h,i,j] = scale * (dout[b,h,i] . v[b,g,j]) * (q[b,h,i] . k[b,g,j])
//   dmask[z,i,j] = sum_{(b,h) -> z} dW * causal/decay factor
//   slope_partials[h, b, ti, tj] = sum_{tile} dW * mask * d(decay)/ds
// mask_b x mask_h is the loop space: the mask's own leading dims, or (batch, heads) when
// there is no mask (slopes gradient only).
struct MaskGradArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  const void* mask;  // or null
  int64_t mask_sb, mask_sh, mask_si, mask_sj;
  int mask_b, mask_h;
  const float* slopes;  // or null
  void* dmask;  // contiguous [mask_b, mask_h, n, m] in the input dtype, or null
  float* slope_partials;  // [heads, batch, tiles_i, tiles_j], or null
  int batch, heads, kv_heads, n, m, d, e;
  float scale;
  bool causal;
};

}  // namespace linattn
