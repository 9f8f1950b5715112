// cuda_host_emu.cuh: compile the project's CUDA C kernels as plain host C++ (g++ -std=c++20).
//
// Purpose: verify the very same kernels/*.cu sources on a machine without a GPU. The kernels
// include this header only when no CUDA compiler is active:
//
//     #if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
//     #include "cuda_host_emu.cuh"
//     #endif
//
// so NVRTC / nvcc never see anything defined here.
//
// Execution model (see kernels/README.md, "Host emulation"):
//   * emu_launch(kernel, grid, block, args...) starts one std::thread per CUDA thread of a block
//     (block.x * block.y * block.z threads) and runs the blocks of the grid one after another,
//     in x-fastest order, on that same set of threads; a barrier closes every block.
//   * blockIdx / threadIdx / blockDim / gridDim are thread_local variables of type dim3.
//   * __syncthreads() is a std::barrier shared by the threads of the block.
//   * __shared__ expands to `static`: one storage for the whole (emulated) block. Because blocks
//     run one at a time this is exactly shared-memory semantics, with one caveat that CUDA has
//     too: its contents are NOT reset between blocks, so kernels must initialise it themselves.
//   * atomicAdd & co use std::atomic_ref (relaxed, as CUDA's device atomics are).
//   * __fadd_rn / __fmul_rn / __fdiv_rn ... are the plain IEEE operations (compile the host code
//     with -ffp-contract=off so that g++ never fuses a*b+c into an FMA either).
// Limits: no warp intrinsics (__shfl*, __ballot*, __activemask), no cooperative groups, no
// dynamic parallelism, no dynamic shared memory (extern __shared__), no textures/surfaces, no
// streams or events. A thread must not skip a __syncthreads() that the rest of its block reaches
// (undefined behaviour in CUDA as well; here it deadlocks).
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#error "cuda_host_emu.cuh is the host-C++ emulation of CUDA; a CUDA compiler must not include it"
#endif

#define FAME_CUDA_HOST_EMULATION 1

#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <math.h>
#include <thread>
#include <type_traits>
#include <vector>

// ---- built-in types -------------------------------------------------------------------------
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

struct alignas(4) uchar4 { unsigned char x, y, z, w; };
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) {
  return uchar4{x, y, z, w};
}
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
  return uint4{x, y, z, w};
}
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

// ---- built-in variables ---------------------------------------------------------------------
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

namespace cuda_emu {
inline thread_local std::barrier<>* block_barrier = nullptr;
}  // namespace cuda_emu

// ---- qualifiers -----------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __constant__ static const
#define __launch_bounds__(...)
// __restrict__ is a g++ keyword already.

// ---- synchronisation and atomics ------------------------------------------------------------
inline void __syncthreads() { cuda_emu::block_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T>
inline T atomicAdd(T* address, T val) {
  static_assert(std::is_arithmetic_v<T>, "atomicAdd emulation: arithmetic types only");
  return std::atomic_ref<T>(*address).fetch_add(val, std::memory_order_relaxed);
}
template <class T>
inline T atomicSub(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_sub(val, std::memory_order_relaxed);
}
template <class T>
inline T atomicExch(T* address, T val) {
  return std::atomic_ref<T>(*address).exchange(val, std::memory_order_relaxed);
}
template <class T>
inline T atomicMax(T* address, T val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (old < val && !ref.compare_exchange_weak(old, val, std::memory_order_relaxed)) {
  }
  return old;
}
template <class T>
inline T atomicMin(T* address, T val) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (val < old && !ref.compare_exchange_weak(old, val, std::memory_order_relaxed)) {
  }
  return old;
}
template <class T>
inline T atomicCAS(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val, std::memory_order_relaxed);
  return compare;
}

// ---- device intrinsics (round-to-nearest-even IEEE operations) ------------------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int2float_rn(int a) { return static_cast<float>(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }

// ---- test hook: a less accurate float sincosf ------------------------------------------------
// With FAME_EMU_SINCOSF_SKEW_ULP = k (an integer, tests only), sincosf returns sin and cos moved
// k ulps away from the host libm's values (towards +inf for k > 0, -inf for k < 0), so that the
// tests can check kernels that rely on CUDA's 2-ulp bound for sincosf against the worst case.
#ifdef FAME_EMU_SINCOSF_SKEW_ULP
inline void fame_emu_sincosf(float x, float* s, float* c) {
  ::sincosf(x, s, c);
  constexpr int k = FAME_EMU_SINCOSF_SKEW_ULP;
  const float towards = k > 0 ? HUGE_VALF : -HUGE_VALF;
  for (int i = 0; i < (k > 0 ? k : -k); ++i) {
    *s = nextafterf(*s, towards);
    *c = nextafterf(*c, towards);
  }
}
#define sincosf fame_emu_sincosf
#endif

// ---- launch ---------------------------------------------------------------------------------
// Runs kernel<<<grid, block>>>(args...) synchronously: block.x*block.y*block.z std::threads, each
// looping over all blocks of the grid; a barrier after every block keeps blocks one at a time.
template <class... KernelArgs, class... Args>
void emu_launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, Args... args) {
  static_assert(sizeof...(KernelArgs) == sizeof...(Args), "emu_launch: wrong number of arguments");
  const unsigned int nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || grid.x * grid.y * grid.z == 0) return;  // CUDA: invalid configuration
  std::barrier<> sync_barrier(static_cast<std::ptrdiff_t>(nthreads));
  std::barrier<> block_end(static_cast<std::ptrdiff_t>(nthreads));
  auto body = [&](unsigned int tid) {
    threadIdx = dim3(tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y));
    blockDim = block;
    gridDim = grid;
    cuda_emu::block_barrier = &sync_barrier;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
      for (unsigned int by = 0; by < grid.y; ++by)
        for (unsigned int bx = 0; bx < grid.x; ++bx) {
          blockIdx = dim3(bx, by, bz);
          kernel(static_cast<KernelArgs>(args)...);
          block_end.arrive_and_wait();
        }
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (unsigned int t = 0; t < nthreads; ++t) threads.emplace_back(body, t);
  for (auto& th : threads) th.join();
}
