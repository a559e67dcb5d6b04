// The f32 instantiation of the kernels (one file per dtype so that ninja builds them in parallel).
#include "kernels.cuh"

namespace linattn {
const char* launch_product_f32(const ProductArgs& p, cudaStream_t s) { return launch_product_float32(p, s); }
const char* launch_mask_grad_f32(const MaskGradArgs& p, cudaStream_t s) { return launch_mask_grad_t<FfmaEngine>(p, s); }
}  // namespace linattn
