// color_hist.cu: per-clip colour histograms of the FAME seed sets (spec steps 5-6), integer-exact.
//
// Inputs  bins    int32   (B, H*W)  colour bin of every pixel, 0..999 (from motion_bins.cu)
//         seed    float32 (B, H*W)  seed map S
//         thr_fg  float32 (B,)      the kF-th largest seed value of each clip
//         thr_bg  float32 (B,)      the kB-th smallest seed value of each clip
// Output  hist    int32   (B, 4, 1000), ZERO-INITIALISED by the caller; counts per bin of pixels
//         with [0] seed > thr_fg, [1] seed == thr_fg, [2] seed < thr_bg, [3] seed == thr_bg.
// Reproduces dali_fame.fame.reference.color_histograms_ref exactly; the fractional tie weights
// of spec step 5 are formed afterwards in torch from these integer counts.
//
// Launch: grid (blocks_per_clip, B), any 1-D block size. Each block privatises a 4 x 1000 int
// histogram in shared memory (16000 bytes), zeroes it, adds its pixels with shared atomics (a
// grid-stride loop over the pixels of clip blockIdx.y), then adds the non-zero bins to global
// memory with one global atomic each. Pixels whose bin is outside 0..999 are skipped (a guard
// that keeps a bad input from writing outside the shared histogram); NaN seeds count nowhere.
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "cuda_host_emu.cuh"
#endif

#define FAME_NUM_BINS 1000
#define FAME_HIST_ROWS 4

extern "C" __global__ void fame_color_hist(const int* __restrict__ bins,
                                           const float* __restrict__ seed,
                                           const float* __restrict__ thr_fg,
                                           const float* __restrict__ thr_bg,
                                           int* __restrict__ hist, int HW) {
  __shared__ int block_hist[FAME_HIST_ROWS * FAME_NUM_BINS];
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  for (int k = tid; k < FAME_HIST_ROWS * FAME_NUM_BINS; k += nthreads) block_hist[k] = 0;
  __syncthreads();

  const long long clip = blockIdx.y;
  const float tf = thr_fg[clip];
  const float tb = thr_bg[clip];
  const int* clip_bins = bins + clip * HW;
  const float* clip_seed = seed + clip * HW;
  for (int p = blockIdx.x * nthreads + tid; p < HW; p += nthreads * gridDim.x) {
    const int bin = clip_bins[p];
    if (static_cast<unsigned int>(bin) >= static_cast<unsigned int>(FAME_NUM_BINS)) continue;
    const float s = clip_seed[p];
    if (s > tf) {
      atomicAdd(&block_hist[bin], 1);
    } else if (s == tf) {
      atomicAdd(&block_hist[FAME_NUM_BINS + bin], 1);
    }
    if (s < tb) {
      atomicAdd(&block_hist[2 * FAME_NUM_BINS + bin], 1);
    } else if (s == tb) {
      atomicAdd(&block_hist[3 * FAME_NUM_BINS + bin], 1);
    }
  }
  __syncthreads();

  int* clip_hist = hist + clip * (FAME_HIST_ROWS * FAME_NUM_BINS);
  for (int k = tid; k < FAME_HIST_ROWS * FAME_NUM_BINS; k += nthreads) {
    const int count = block_hist[k];
    if (count != 0) atomicAdd(&clip_hist[k], count);
  }
}
