// The torch binding: check the shape/dtype contract, allocate outputs, launch on the current
// stream. Two functions, both called from linattn/backends/cuda/function.py:
//
//   masked_product(a, b, c, mask, slopes, scale, causal, col_mode, out_f32) -> out
//       row mode: o  = masked_product(q,  k,  v)      dq = masked_product(dO, v, k)
//       col mode: dv = masked_product(k,  q,  dO)     dk = masked_product(v, dO, q)
//   mask_slopes_grad(q, k, v, dout, mask, slopes, scale, causal, want_dmask, want_dslopes)
//       -> (dmask [mask's shape] or None, dslopes [H] float32 or None)
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "launch.h"
#include "problem.h"

namespace {

using linattn::DType;

constexpr int64_t kMaxHeadDim = 256;

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK(false, "linattn cuda: ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return DType::f32;
}

void check_operand(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda(), "linattn cuda: ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == like.device(), "linattn cuda: ", name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.dim() == 4, "linattn cuda: ", name, " must have rank 4, got shape ", shape_str(t));
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "linattn cuda: ", name, " must have dtype ",
              like.scalar_type(), ", got ", t.scalar_type());
}

// Element strides of the mask, 0 on its broadcast dims; checks [B|1, H|1, N, M].
void mask_strides(const at::Tensor& mask, const at::Tensor& like, int64_t B, int64_t H, int64_t N, int64_t M,
                  int64_t out[4]) {
  check_operand(mask, "mask", like);
  TORCH_CHECK((mask.size(0) == 1 || mask.size(0) == B) && (mask.size(1) == 1 || mask.size(1) == H) &&
                  mask.size(2) == N && mask.size(3) == M,
              "linattn cuda: mask must have shape [B|1, H|1, N, M] = [", B, "|1, ", H, "|1, ", N, ", ", M, "], got ",
              shape_str(mask));
  for (int d = 0; d < 4; ++d) out[d] = mask.size(d) == 1 ? 0 : mask.stride(d);
}

const float* slopes_ptr(const c10::optional<at::Tensor>& slopes, const at::Tensor& like, int64_t H) {
  if (!slopes.has_value()) return nullptr;
  const at::Tensor& s = *slopes;
  TORCH_CHECK(s.is_cuda() && s.device() == like.device(), "linattn cuda: slopes must be on ", like.device(),
              ", got ", s.device());
  TORCH_CHECK(s.scalar_type() == at::kFloat, "linattn cuda: slopes must be float32, got ", s.scalar_type());
  TORCH_CHECK(s.dim() == 1 && s.size(0) == H && s.is_contiguous(),
              "linattn cuda: slopes must be a contiguous [H] = [", H, "] tensor, got ", shape_str(s));
  return s.data_ptr<float>();
}

void check_dims(int64_t DA, int64_t EC) {
  TORCH_CHECK(DA >= 1 && DA <= kMaxHeadDim && EC >= 1 && EC <= kMaxHeadDim,
              "linattn cuda: head dims must be in [1, ", kMaxHeadDim, "], got D=", DA, ", E=", EC);
}

at::Tensor masked_product(at::Tensor a, at::Tensor b, at::Tensor c, const c10::optional<at::Tensor>& mask,
                          const c10::optional<at::Tensor>& slopes, double scale, bool causal, bool col_mode,
                          bool out_f32) {
  const DType dt = dtype_of(a, "a");
  check_operand(a, "a", a);
  check_operand(b, "b", a);
  check_operand(c, "c", a);
  a = a.contiguous();
  b = b.contiguous();
  c = c.contiguous();
  // row mode: a [B,H,N,DA], b [B,Hkv,M,DA], c [B,Hkv,M,EC]; col mode: a [B,Hkv,M,DA], b [B,H,N,DA], c [B,H,N,EC]
  const int64_t Bsz = a.size(0), DA = a.size(3), EC = c.size(3);
  const int64_t H = col_mode ? b.size(1) : a.size(1), Hkv = col_mode ? a.size(1) : b.size(1);
  const int64_t N = col_mode ? b.size(2) : a.size(2), M = col_mode ? a.size(2) : b.size(2);
  const char* want = col_mode ? "a [B, Hkv, M, DA], b [B, H, N, DA], c [B, H, N, EC]"
                              : "a [B, H, N, DA], b [B, Hkv, M, DA], c [B, Hkv, M, EC]";
  TORCH_CHECK(b.size(0) == Bsz && c.size(0) == Bsz && b.size(3) == DA && c.size(1) == b.size(1) &&
                  c.size(2) == b.size(2) && Hkv >= 1 && H % Hkv == 0,
              "linattn cuda: expected ", want, " with Hkv dividing H, got a ", shape_str(a), ", b ", shape_str(b),
              ", c ", shape_str(c));
  check_dims(DA, EC);
  TORCH_CHECK(!causal || N == M, "linattn cuda: causal needs N == M, got N=", N, ", M=", M);

  const c10::cuda::CUDAGuard guard(a.device());
  linattn::ProductArgs p{};
  int64_t ms[4] = {0, 0, 0, 0};
  if (mask.has_value()) {
    mask_strides(*mask, a, Bsz, H, N, M, ms);
    p.mask = mask->data_ptr();
  }
  p.mask_sb = ms[0];
  p.mask_sh = ms[1];
  p.mask_si = ms[2];
  p.mask_sj = ms[3];
  p.slopes = slopes_ptr(slopes, a, H);
  const int64_t out_heads = col_mode ? Hkv : H, nR = col_mode ? M : N;
  at::Tensor out = at::empty({Bsz, out_heads, nR, EC}, a.options().dtype(out_f32 ? at::kFloat : a.scalar_type()));
  if (out.numel() == 0) return out;
  p.a = a.data_ptr();
  p.b = b.data_ptr();
  p.c = c.data_ptr();
  p.out = out.data_ptr();
  p.out_f32 = out_f32;
  p.batch = (int)Bsz;
  p.heads = (int)H;
  p.kv_heads = (int)Hkv;
  p.n = (int)N;
  p.m = (int)M;
  p.da = (int)DA;
  p.ec = (int)EC;
  p.scale = (float)scale;
  p.causal = causal || p.slopes != nullptr;
  p.col_mode = col_mode;
  if (N == 0 || M == 0) return out.zero_();
  const char* why = linattn::launch_product(dt, p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(why == nullptr, "linattn cuda: masked_product launch failed: ", why);
  return out;
}

std::tuple<at::Tensor, at::Tensor> mask_slopes_grad(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor dout,
                                                    const c10::optional<at::Tensor>& mask,
                                                    const c10::optional<at::Tensor>& slopes, double scale,
                                                    bool causal, bool want_dmask, bool want_dslopes) {
  const DType dt = dtype_of(q, "q");
  check_operand(q, "q", q);
  check_operand(k, "k", q);
  check_operand(v, "v", q);
  check_operand(dout, "dout", q);
  q = q.contiguous();
  k = k.contiguous();
  v = v.contiguous();
  dout = dout.contiguous();
  const int64_t Bsz = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), M = k.size(2), E = v.size(3);
  TORCH_CHECK(k.size(0) == Bsz && k.size(3) == D && v.size(0) == Bsz && v.size(1) == Hkv && v.size(2) == M &&
                  dout.size(0) == Bsz && dout.size(1) == H && dout.size(2) == N && dout.size(3) == E && Hkv >= 1 &&
                  H % Hkv == 0,
              "linattn cuda: expected q [B, H, N, D], k [B, Hkv, M, D], v [B, Hkv, M, E], dout [B, H, N, E] with Hkv "
              "dividing H, got q ",
              shape_str(q), ", k ", shape_str(k), ", v ", shape_str(v), ", dout ", shape_str(dout));
  check_dims(D, E);
  TORCH_CHECK(!want_dmask || mask.has_value(), "linattn cuda: want_dmask needs a mask");
  TORCH_CHECK(!want_dslopes || slopes.has_value(), "linattn cuda: want_dslopes needs slopes");

  const c10::cuda::CUDAGuard guard(q.device());
  linattn::MaskGradArgs p{};
  int64_t ms[4] = {0, 0, 0, 0};
  p.mask_b = (int)Bsz;
  p.mask_h = (int)H;
  if (mask.has_value()) {
    mask_strides(*mask, q, Bsz, H, N, M, ms);
    p.mask = mask->data_ptr();
    p.mask_b = (int)mask->size(0);
    p.mask_h = (int)mask->size(1);
  }
  p.mask_sb = ms[0];
  p.mask_sh = ms[1];
  p.mask_si = ms[2];
  p.mask_sj = ms[3];
  p.slopes = slopes_ptr(slopes, q, H);
  const int64_t tiles_i = (N + linattn::kTile - 1) / linattn::kTile, tiles_j = (M + linattn::kTile - 1) / linattn::kTile;
  at::Tensor dmask, partials, dslopes;
  if (want_dmask) {
    dmask = at::empty({p.mask_b, p.mask_h, N, M}, q.options());
    p.dmask = dmask.data_ptr();
  }
  if (want_dslopes) {
    partials = at::zeros({H, Bsz * tiles_i * tiles_j}, q.options().dtype(at::kFloat));
    p.slope_partials = partials.data_ptr<float>();
  }
  if (!want_dmask && !want_dslopes) return {dmask, dslopes};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.dout = dout.data_ptr();
  p.batch = (int)Bsz;
  p.heads = (int)H;
  p.kv_heads = (int)Hkv;
  p.n = (int)N;
  p.m = (int)M;
  p.d = (int)D;
  p.e = (int)E;
  p.scale = (float)scale;
  p.causal = causal || p.slopes != nullptr;
  if (N > 0 && M > 0) {
    const char* why = linattn::launch_mask_grad(dt, p, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(why == nullptr, "linattn cuda: mask_slopes_grad launch failed: ", why);
  } else if (want_dmask) {
    dmask.zero_();
  }
  if (want_dslopes) dslopes = partials.to(at::kDouble).sum(1).to(at::kFloat);  // fixed-order reduction
  return {dmask, dslopes};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "linattn CUDA kernels: the masked product (o, dq, dk, dv) and the mask / slopes gradient";
  m.def("masked_product", &masked_product, "out = scale * ((a b^T) * W) c, row or col mode");
  m.def("mask_slopes_grad", &mask_slopes_grad, "gradients of the dense mask and of the decay slopes");
}
