// Self-test of kernels/cuda_host_emu.cuh: tiny kernels whose results depend on the emulated
// CUDA semantics (barriers, shared memory, 3-D indices, atomics under real thread concurrency).
#include "cuda_host_emu.cuh"

// Reverses every block-sized tile through shared memory: thread t reads the slot another thread
// wrote, so a missing or broken __syncthreads() shows up as wrong values.
__global__ void selftest_reverse(const int* in, int* out, int n) {
  __shared__ int tile[1024];
  const int base = blockIdx.x * blockDim.x;
  const int i = base + threadIdx.x;
  tile[threadIdx.x] = i < n ? in[i] : -1;
  __syncthreads();
  const int src = blockDim.x - 1 - threadIdx.x;
  if (i < n) out[i] = tile[src];
  __syncthreads();
}

// Writes the CUDA linear thread id of every (block, thread) of a 3-D launch.
__global__ void selftest_ids(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int nthreads = blockDim.x * blockDim.y * blockDim.z;
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  out[block * nthreads + thread] = block * 1000 + thread;
}

// Every thread adds 1 to a global and a shared counter `iters` times.
__global__ void selftest_atomics(int* global_counter, int* block_sums, int iters) {
  __shared__ int counter;
  if (threadIdx.x == 0) counter = 0;
  __syncthreads();
  for (int k = 0; k < iters; ++k) {
    atomicAdd(global_counter, 1);
    atomicAdd(&counter, 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) block_sums[blockIdx.x] = counter;
}

extern "C" void emu_selftest_reverse(unsigned int grid, unsigned int block, const int* in,
                                     int* out, int n) {
  emu_launch(selftest_reverse, dim3(grid), dim3(block), in, out, n);
}

extern "C" void emu_selftest_ids(unsigned int gx, unsigned int gy, unsigned int gz,
                                 unsigned int bx, unsigned int by, unsigned int bz, int* out) {
  emu_launch(selftest_ids, dim3(gx, gy, gz), dim3(bx, by, bz), out);
}

extern "C" void emu_selftest_atomics(unsigned int grid, unsigned int block, int* global_counter,
                                     int* block_sums, int iters) {
  emu_launch(selftest_atomics, dim3(grid), dim3(block), global_counter, block_sums, iters);
}
