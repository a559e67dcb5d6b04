// The bf16 instantiation of the kernels (one file per dtype so that ninja builds them in parallel).
#include "kernels.cuh"

namespace linattn {
const char* launch_product_bf16(const ProductArgs& p, cudaStream_t s) { return launch_product_t<HalfMmaEngine<__nv_bfloat16>>(p, s); }
const char* launch_mask_grad_bf16(const MaskGradArgs& p, cudaStream_t s) { return launch_mask_grad_t<WmmaEngine<__nv_bfloat16>>(p, s); }
}  // namespace linattn
