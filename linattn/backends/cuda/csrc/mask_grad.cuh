// The gradient of the dense mask and of the decay slopes, without atomics.
//
// Per score tile (DESIGN.md):  dW = scale * (dO Vᵀ) ⊙ (Q Kᵀ)       [64 queries x 64 keys]
//   dmask = dW ⊙ (causal / decay factor), summed over every (b, h) that shares the mask entry
//   ds[h] = sum over b, i, j of dW ⊙ mask ⊙ (-(i - j)) exp(-s_h (i - j))   for j <= i
//
// Tiling. One block owns one 64 x 64 tile of the mask as stored ([Bm, Hm, N, M], Bm in {1, B},
// Hm in {1, H}) and loops over the (b, h) pairs that read it: all B batches when Bm == 1, all
// H heads when Hm == 1. For each pair it recomputes the two score tiles Q Kᵀ and dO Vᵀ (the
// same tile products as the masked product, float32 results in shared memory) and adds
// dW ⊙ factor into 32 per-thread float32 registers; the sum therefore runs in one fixed order
// and the tile is written once, in the mask's dtype. No per-head dmask is ever allocated.
// The slopes gradient of the tile is reduced over the block by a fixed tree and written to
// its own slot slope_partials[h, b, ti, tj]; the host sums those slots in float64.
// With causal, tiles wholly above the diagonal are zero and skip the products.
// Without a dense mask (slopes gradient only) the loop space is (B, H): one pair per block.
#pragma once
#include "common.cuh"

namespace linattn {

template <class Eng>
struct MaskGradLayout {
  using T = typename Eng::T;
  T* As;       // q rows, then dO rows     [64 x max(D, E)]
  T* Bs;       // k rows, then v rows      [64 x max(D, E)]
  float* S1;   // Q Kᵀ   [64][LDS]
  float* S2;   // dO Vᵀ  [64][LDS]
  float* Ms;   // mask tile [64][LDM]
  float* red;  // [NT] block reduction
  size_t bytes;
  LINATTN_HD MaskGradLayout(unsigned char* base, int d, int e, bool has_mask) {
    Carver cv(base);
    const int k = imax(d, e);
    As = cv.template take<T>(Eng::op_elems(k));
    Bs = cv.template take<T>(Eng::op_elems(k));
    S1 = cv.template take<float>((size_t)BM * LDS);
    S2 = cv.template take<float>((size_t)BM * LDS);
    Ms = has_mask ? cv.template take<float>((size_t)BM * LDM) : nullptr;
    red = cv.template take<float>(NT);
    bytes = cv.offset;
  }
};

template <class Eng>
__global__ void __launch_bounds__(NT) mask_grad_kernel(MaskGradArgs p, int tiles_i, int tiles_j) {
  using T = typename Eng::T;
  LINATTN_DYN_SMEM(smem);
  const MaskGradLayout<Eng> L(smem, p.d, p.e, p.mask != nullptr);

  int64_t bid = blockIdx.x;
  const int tj = (int)(bid % tiles_j);
  bid /= tiles_j;
  const int ti = (int)(bid % tiles_i);
  const int z = (int)(bid / tiles_i);  // lb * mask_h + lh
  const int lb = z / p.mask_h, lh = z % p.mask_h;
  const int i0 = ti * BM, j0 = tj * BN;
  const int G = p.heads / p.kv_heads;
  const int tid = threadIdx.x;
  constexpr int PER = BM * BN / NT;  // 32 elements per thread: idx = tid + NT * t

  // -- the (b, h) pairs that read this mask tile
  const int b_lo = (p.mask_b == p.batch) ? lb : 0, b_hi = (p.mask_b == p.batch) ? lb + 1 : p.batch;
  const int h_lo = (p.mask_h == p.heads) ? lh : 0, h_hi = (p.mask_h == p.heads) ? lh + 1 : p.heads;
  const bool skip = p.causal && j0 > i0 + BM - 1;  // wholly above the diagonal

  float dm[PER];
#pragma unroll
  for (int t = 0; t < PER; ++t) dm[t] = 0.f;

  if (!skip) {
    for (int b = b_lo; b < b_hi; ++b) {
      for (int h = h_lo; h < h_hi; ++h) {
        const int g = h / G;
        const int64_t bh = (int64_t)b * p.heads + h, bg = (int64_t)b * p.kv_heads + g;
        const bool decay = p.slopes != nullptr;
        const float slope = decay ? p.slopes[h] : 0.f;

        // S1 = Q Kᵀ
        Eng::load_op(L.As, static_cast<const T*>(p.q) + bh * p.n * p.d, i0, p.n, p.d);
        Eng::load_op(L.Bs, static_cast<const T*>(p.k) + bg * p.m * p.d, j0, p.m, p.d);
        if (L.Ms)
          load_mask_tile(L.Ms, static_cast<const T*>(p.mask) + b * p.mask_sb + h * p.mask_sh, p.mask_si,
                         p.mask_sj, i0, j0, p.n, p.m);
        __syncthreads();
        Eng::scores_to_smem(L.S1, L.As, L.Bs, p.d);
        __syncthreads();
        // S2 = dO Vᵀ
        Eng::load_op(L.As, static_cast<const T*>(p.dout) + bh * p.n * p.e, i0, p.n, p.e);
        Eng::load_op(L.Bs, static_cast<const T*>(p.v) + bg * p.m * p.e, j0, p.m, p.e);
        __syncthreads();
        Eng::scores_to_smem(L.S2, L.As, L.Bs, p.e);
        __syncthreads();

        float part = 0.f;
#pragma unroll
        for (int t = 0; t < PER; ++t) {
          const int idx = tid + NT * t, li = idx / BN, lj = idx % BN;
          const int i = i0 + li, j = j0 + lj;
          const float dw = p.scale * L.S1[li * LDS + lj] * L.S2[li * LDS + lj];
          const float f = causal_decay(i, j, p.causal, decay, slope);
          dm[t] += dw * f;
          if (decay && i < p.n && j < p.m && j <= i) {
            const float mval = L.Ms ? L.Ms[li * LDM + lj] : 1.f;
            part += dw * mval * f * (-(float)(i - j));
          }
        }
        if (p.slope_partials) {
          L.red[tid] = part;
          __syncthreads();
          for (int s = NT / 2; s > 0; s >>= 1) {
            if (tid < s) L.red[tid] += L.red[tid + s];
            __syncthreads();
          }
          if (tid == 0)
            p.slope_partials[(((int64_t)h * p.batch + b) * tiles_i + ti) * tiles_j + tj] = L.red[0];
        }
        __syncthreads();  // S1, S2, Ms, red are reused by the next pair
      }
    }
  }

  if (p.dmask) {
    T* out = static_cast<T*>(p.dmask) + (int64_t)z * p.n * p.m;
#pragma unroll
    for (int t = 0; t < PER; ++t) {
      const int idx = tid + NT * t, li = idx / BN, lj = idx % BN;
      const int i = i0 + li, j = j0 + lj;
      if (i < p.n && j < p.m) out[(int64_t)i * p.m + j] = Num<T>::from_f(dm[t]);
    }
  }
}

}  // namespace linattn
