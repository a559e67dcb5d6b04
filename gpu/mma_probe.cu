// Tensor-core ceilings of mma.sync on the card at hand: throughput and dependent-issue latency
// of the instructions the CUDA backend uses (tf32 m16n8k8, bf16 and f16 m16n8k16, all with
// float32 accumulators). The float32 product kernel issues only these, so its rate is bounded by
// what this measures, not by the card's datasheet (which quotes wgmma).
//
//   nvcc -O3 -arch=sm_90 -o /tmp/mma_probe gpu/mma_probe.cu && /tmp/mma_probe
//
// Throughput: every warp runs NACC independent accumulators (no dependency between consecutive
// instructions), blocks of WARPS warps, 8 blocks per SM; reported as TFLOP/s of the instruction's
// own shape (2 m n k per mma). Latency: one warp, one accumulator chain, clock64 around it.
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA error %s at %d\n", cudaGetErrorString(e), __LINE__); return 1; } } while (0)

__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <int KIND>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if (KIND == 0) mma_tf32(d, a, b);
  else if (KIND == 1) mma_bf16(d, a, b);
  else mma_f16(d, a, b);
}

template <int KIND, int NACC>
__global__ void thr(const uint32_t* in, float* out, int iters) {
  uint32_t a[4], b[2];
  for (int i = 0; i < 4; ++i) a[i] = in[(threadIdx.x + i) & 63];
  for (int i = 0; i < 2; ++i) b[i] = in[(threadIdx.x + 7 + i) & 63];
  float d[NACC][4];
#pragma unroll
  for (int n = 0; n < NACC; ++n)
    for (int e = 0; e < 4; ++e) d[n][e] = 0.f;
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int n = 0; n < NACC; ++n) mma<KIND>(d[n], a, b);
  }
  float s = 0.f;
#pragma unroll
  for (int n = 0; n < NACC; ++n) s += d[n][0] + d[n][1] + d[n][2] + d[n][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

template <int KIND>
__global__ void lat(const uint32_t* in, float* out, long long* cyc, int iters) {
  uint32_t a[4], b[2];
  for (int i = 0; i < 4; ++i) a[i] = in[(threadIdx.x + i) & 63];
  for (int i = 0; i < 2; ++i) b[i] = in[(threadIdx.x + 7 + i) & 63];
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  long long t0 = clock64();
  for (int it = 0; it < iters; ++it) mma<KIND>(d, a, b);
  long long t1 = clock64();
  out[threadIdx.x] = d[0] + d[1] + d[2] + d[3];
  if (threadIdx.x == 0) *cyc = t1 - t0;
}

template <int KIND, int NACC>
int run_thr(const char* name, int warps, int blocks_per_sm, int sms, const uint32_t* in, float* out, double flop_per_mma) {
  const int iters = 4096, blocks = sms * blocks_per_sm;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  thr<KIND, NACC><<<blocks, 32 * warps>>>(in, out, 16);
  CK(cudaDeviceSynchronize());
  float best = 1e30f;
  for (int r = 0; r < 5; ++r) {
    CK(cudaEventRecord(e0));
    thr<KIND, NACC><<<blocks, 32 * warps>>>(in, out, iters);
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    if (ms < best) best = ms;
  }
  const double mmas = (double)blocks * warps * iters * NACC;
  printf("throughput %-5s warps/block %d blocks/SM %d acc/warp %d: %.1f TFLOP/s (%.3f ms)\n", name, warps, blocks_per_sm,
         NACC, mmas * flop_per_mma / (best * 1e-3) / 1e12, best);
  return 0;
}

template <int KIND>
int run_lat(const char* name, const uint32_t* in, float* out, long long* cyc) {
  const int iters = 4096;
  lat<KIND><<<1, 32>>>(in, out, cyc, 16);
  CK(cudaDeviceSynchronize());
  lat<KIND><<<1, 32>>>(in, out, cyc, iters);
  CK(cudaDeviceSynchronize());
  long long c;
  CK(cudaMemcpy(&c, cyc, sizeof(c), cudaMemcpyDeviceToHost));
  printf("latency    %-5s dependent chain: %.1f cycles per mma\n", name, (double)c / iters);
  return 0;
}

int main() {
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  int clk = 0;
  cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0);
  printf("device %s, %d SMs, max clock %.0f MHz\n", prop.name, prop.multiProcessorCount, clk / 1e3);
  uint32_t host[64];
  for (int i = 0; i < 64; ++i) host[i] = 0x3c003c00u ^ (i * 0x00010001u);  // small normal values in every format
  uint32_t* in;
  float* out;
  long long* cyc;
  CK(cudaMalloc(&in, sizeof(host)));
  CK(cudaMemcpy(in, host, sizeof(host), cudaMemcpyHostToDevice));
  CK(cudaMalloc(&out, (size_t)prop.multiProcessorCount * 8 * 1024 * sizeof(float)));
  CK(cudaMalloc(&cyc, sizeof(long long)));
  const int sms = prop.multiProcessorCount;
  const double ftf = 2.0 * 16 * 8 * 8, fh = 2.0 * 16 * 8 * 16;
  run_lat<0>("tf32", in, out, cyc);
  run_lat<1>("bf16", in, out, cyc);
  run_lat<2>("f16", in, out, cyc);
  run_thr<0, 8>("tf32", 8, 2, sms, in, out, ftf);
  run_thr<0, 4>("tf32", 8, 2, sms, in, out, ftf);
  run_thr<0, 8>("tf32", 8, 4, sms, in, out, ftf);
  run_thr<0, 2>("tf32", 8, 2, sms, in, out, ftf);
  run_thr<1, 8>("bf16", 8, 2, sms, in, out, fh);
  run_thr<1, 8>("bf16", 8, 4, sms, in, out, fh);
  run_thr<2, 8>("f16", 8, 2, sms, in, out, fh);
  return 0;
}
