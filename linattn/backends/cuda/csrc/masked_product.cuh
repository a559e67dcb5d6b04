// One kernel, four uses: the masked product behind o, dq, dk and dv.
//
// The PyTorch blocked variant computes, for one block of 64 queries and one block of 64 keys,
//     S = Q_blk @ K_blk.T;   P = S * W_blk;   O_blk += P @ V_blk
// and loops over key blocks. The gradients have exactly the same shape (DESIGN.md):
//     dq  = scale * (dO Vᵀ ⊙ W)  K          row mode: a = dO, b = V,  c = K
//     o   = scale * (Q  Kᵀ ⊙ W)  V          row mode: a = Q,  b = K,  c = V
//     dv  = scale * (K  Qᵀ ⊙ Wᵀ) dO         col mode: a = K,  b = Q,  c = dO
//     dk  = scale * (V  dOᵀ ⊙ Wᵀ) Q         col mode: a = V,  b = dO, c = Q
// so one kernel computes out = scale * ((a bᵀ) ⊙ W') c with W' = W (row mode) or Wᵀ (col mode).
//
// Tiling. One block owns 64 output rows (r) and 64 output channels (e) of one head:
//   * its a rows, [64, DA], are loaded once into shared memory;
//   * it loops over the contracted index c in tiles of 64: load b [64, DA], c [64, 64] and,
//     with a dense mask, the mask tile; S = a bᵀ (64 x 64, float32); P = S ⊙ W'; O += P c;
//   * in col mode it also loops over the query heads of its kv group (GQA/MQA), so dk and dv
//     come out summed over the group in a fixed order: no atomics, no expanded K/V;
//   * causal and decay factors come from the indices; with causal, tiles wholly above the
//     diagonal are never visited (row mode stops at the diagonal, col mode starts there);
//   * E > 64 is split over blocks (the grid's channel tiles); DA is whole (up to 256).
// Rows past N or M and channels past DA or EC are zero-filled in shared memory, so any
// length works without padding the tensors. The engine (engine_ffma.cuh for float32,
// engine_wmma.cuh for float16/bfloat16) does the two tile products.
#pragma once
#include "common.cuh"

namespace linattn {

// The shared-memory layout of one block; the host sizes the launch with the same code.
template <class Eng>
struct ProductLayout {
  using T = typename Eng::T;
  using PT = typename Eng::PT;
  T* As;       // a rows                      [64 x DA]   (engine layout)
  T* Bs;       // b rows of the current tile  [64 x DA]
  T* Cs;       // c rows of the current tile  [64][LDC]
  PT* Ps;      // the masked score tile P     (engine layout)
  float* Ss;   // float score / output staging tile [64][LDS]
  float* Ms;   // dense-mask tile [64][LDM], when there is one (may share P's memory)
  size_t bytes;
  LINATTN_HD ProductLayout(unsigned char* base, int da, bool has_mask) {
    Carver cv(base);
    As = cv.template take<T>(Eng::op_elems(da));
    Bs = cv.template take<T>(Eng::op_elems(da));
    Cs = cv.template take<T>(Eng::c_elems());
    Ps = cv.template take<PT>(Eng::p_elems());
    Ss = Eng::kScoresAliasP ? reinterpret_cast<float*>(Ps) : cv.template take<float>((size_t)BM * LDS);
    if (!has_mask) Ms = nullptr;
    else if (Eng::kMaskAliasP) Ms = reinterpret_cast<float*>(Ps);  // BN * LDM <= p_elems()
    else Ms = cv.template take<float>((size_t)BN * LDM);
    bytes = cv.offset;
  }
};

template <class Eng>
__global__ void __launch_bounds__(NT) masked_product_kernel(ProductArgs p, int tiles_r, int tiles_e) {
  using T = typename Eng::T;
  LINATTN_DYN_SMEM(smem);
  const ProductLayout<Eng> L(smem, p.da, p.mask != nullptr);

  // -- which tile: row tile fastest, so neighbouring blocks share one head's b and c in L2
  int64_t bid = blockIdx.x;
  const int rt = (int)(bid % tiles_r);
  bid /= tiles_r;
  const int et = (int)(bid % tiles_e);
  const int z = (int)(bid / tiles_e);  // b * out_heads + out_head
  const bool col = p.col_mode;
  const int G = p.heads / p.kv_heads;
  const int out_heads = col ? p.kv_heads : p.heads;
  const int b = z / out_heads, ho = z % out_heads;
  const int nR = col ? p.m : p.n;  // output rows
  const int nC = col ? p.n : p.m;  // contracted length
  const int r0 = rt * BM, e0 = et * BE;
  const int bc_heads = col ? p.heads : p.kv_heads;

  const T* a_rows = static_cast<const T*>(p.a) + (int64_t)z * nR * p.da;
  Eng::load_op(L.As, a_rows, r0, nR, p.da);  // [64, DA], read by every tile below

  typename Eng::Acc acc;
  Eng::zero(acc);
  const int h_lo = col ? ho * G : ho;
  const int h_hi = col ? ho * G + G : ho + 1;
  for (int h = h_lo; h < h_hi; ++h) {
    const int hb = col ? h : h / G;  // head of b and c
    const int64_t bc = (int64_t)b * bc_heads + hb;
    const T* b_rows = static_cast<const T*>(p.b) + bc * nC * p.da;
    const T* c_rows = static_cast<const T*>(p.c) + bc * nC * p.ec;
    const bool decay = p.slopes != nullptr;
    const float slope = decay ? p.slopes[h] : 0.f;
    const T* mask_bh = p.mask ? static_cast<const T*>(p.mask) + b * p.mask_sb + h * p.mask_sh : nullptr;

    // -- causal: row mode (i = r, j = c) stops at the diagonal; col mode (i = c, j = r) starts there
    int c_lo = 0, c_hi = nC;
    if (p.causal) {
      if (col) c_lo = (r0 / BN) * BN;
      else c_hi = imin(nC, r0 + BM);
    }
    for (int c0 = c_lo; c0 < c_hi; c0 += BN) {
      Eng::load_op(L.Bs, b_rows, c0, nC, p.da);        // [64, DA]
      Eng::load_c(L.Cs, c_rows, c0, nC, e0, p.ec);     // [64, 64]
      if (mask_bh) load_mask_tile(L.Ms, mask_bh, p.mask_si, p.mask_sj, col ? c0 : r0, col ? r0 : c0, p.n, p.m);
      __syncthreads();

      const float* Ms = L.Ms;
      const bool causal = p.causal;
      auto weight = [=](int rl, int cl) -> float {  // W'(r0 + rl, c0 + cl)
        const int r = r0 + rl, c = c0 + cl;
        float w = col ? causal_decay(c, r, causal, decay, slope) : causal_decay(r, c, causal, decay, slope);
        if (Ms) w *= col ? Ms[cl * LDM + rl] : Ms[rl * LDM + cl];
        return w;
      };
      Eng::scores_to_p(L.Ps, L.As, L.Bs, p.da, L.Ss, weight);  // P = (a bᵀ) ⊙ W'   [64, 64]
      __syncthreads();
      Eng::accumulate(acc, L.Ps, L.Cs);  // O += P c   [64, 64]
      __syncthreads();
    }
  }

  // -- write out scale * O (the staging tile may alias P: every reader of P is past the last sync)
  Eng::store_acc(L.Ss, acc);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int rl = warp; rl < BM; rl += NT / 32) {
    const int r = r0 + rl;
    if (r >= nR) break;
    const int64_t row = ((int64_t)z * nR + r) * p.ec;
    for (int el = lane; el < BE; el += 32) {
      const int e = e0 + el;
      if (e >= p.ec) break;
      const float val = p.scale * L.Ss[rl * LDS + el];
      if (p.out_f32) static_cast<float*>(p.out)[row + e] = val;
      else static_cast<T*>(p.out)[row + e] = Num<T>::from_f(val);
    }
  }
}

}  // namespace linattn
