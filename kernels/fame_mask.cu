// fame_mask.cu: the FAME mask after motion_bins.cu (spec section 1, steps 2 and 5-8), fused.
//
// With motion_bins.cu's fame_motion_bins(_vec4) first, the whole mask of a batch is 7 launches
// (dali_fame.fame.cuda.run_fame_mask), each over all clips of the batch:
//
//   1 fame_motion_bins(_vec4)   clips -> motion D, bins                            (motion_bins.cu)
//   2 fame_blur_rows            D -> tmp (Gaussian along W); resets stats1
//   3 fame_blur_cols_minmax     tmp -> blurred (along H); stats1 = per-clip min / max
//   4 fame_seed_hist_soft       seed S = minmax(blurred); exact kF-th largest / kB-th smallest
//                               seed values; tie-weighted colour histograms; pF, pB; soft mask M
//   5 fame_blur_rows            M -> tmp; resets stats2
//   6 fame_blur_cols_minmax     tmp -> blurred2; stats2
//   7 fame_select_top           score = minmax(blurred2); exactly k pixels with the largest score,
//                               ties to the lower row-major index -> uint8 mask
//
// Layouts: every map is float32 / int32 (B, H*W) row-major, contiguous; stats is uint32 (B, 2)
// holding order-preserving keys (float_key) of the per-clip min and max; counts int32
// (B, 4, 1000) as color_histograms_ref; thresholds float32 (B, 2) = (thr_fg, thr_bg); mask
// uint8 (B, H*W) of 0 / 1 (a torch.bool view).
//
// Exactness: every float operation is the one the torch reference (dali_fame/fame/ops.py)
// performs, in the same order, spelled as an explicit round-to-nearest intrinsic (no FMA
// contraction whatever -fmad says):
//   blur  out = x[j] * w0, then out = out + (x[j-i] + x[j+i]) * w_i for i = 1..p (reflect
//         padding), W axis first then H, exactly ops._blur_axis;
//   minmax (x - min) / ((max - min) + 1e-8f): max(x - min) == max - min since subtracting a
//         constant is monotonic under rounding;
//   k-th values: found exactly by a 4-pass radix select on the order-preserving 32-bit keys;
//   tie weights, pF, pB and M: the float32 formulas of ops.likelihoods / ops.soft_mask.
// So the mask is bit-identical to fame_mask(backend="torch") (tests/kernels/test_kernel_fame_mask.py
// measures it: 0 differing pixels).
//
// The two per-clip kernels (4 and 7) run one block per clip (grid (B,), 1024 threads, so
// __launch_bounds__(1024) keeps them within 64 registers per thread): the selections need
// every pixel of a clip, and a block-wide radix select with shared histograms avoids 8 more
// launches of a multi-block select plus their global scratch. Each re-reads its clip (at most
// 200 KB at 224 x 224, L2-resident) 6-7 times. Block size: any multiple of 32 up to 1024.
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "cuda_host_emu.cuh"
#endif

#define FAME_NUM_BINS 1000
#define FAME_MAX_BLOCK 1024

namespace fame_mask_detail {

// Order-preserving map float -> uint32: a < b (floats, no NaN) iff key(a) < key(b); -0 < +0.
__device__ __forceinline__ unsigned int float_key(float v) {
  const unsigned int u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_float(unsigned int k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}

// torch's reflect padding (no edge repeat) for |offset| < n: -j and 2 (n - 1) - j.
__device__ __forceinline__ int reflect(int j, int n) {
  j = j < 0 ? -j : j;
  return j >= n ? 2 * (n - 1) - j : j;
}

// Symmetric 1-D filter at position pos of a line of n samples `stride` apart; taps[0..2p].
__device__ __forceinline__ float blur_at(const float* __restrict__ line, int pos, int n,
                                         int stride, const float* __restrict__ taps, int p) {
  float acc = __fmul_rn(line[static_cast<long long>(pos) * stride], taps[p]);
  for (int i = 1; i <= p; ++i) {
    const float left = line[static_cast<long long>(reflect(pos - i, n)) * stride];
    const float right = line[static_cast<long long>(reflect(pos + i, n)) * stride];
    acc = __fadd_rn(acc, __fmul_rn(__fadd_rn(left, right), taps[p + i]));
  }
  return acc;
}

// (v - lo) / den, den = (hi - lo) + 1e-8f: ops.minmax for one value.
__device__ __forceinline__ float minmax_value(float v, float lo, float den) {
  return __fdiv_rn(__fsub_rn(v, lo), den);
}

__device__ __forceinline__ float minmax_den(const unsigned int* __restrict__ stats, float* lo) {
  *lo = key_float(stats[0]);
  return __fadd_rn(__fsub_rn(key_float(stats[1]), *lo), 1e-8f);
}

// Exact order statistics of v[0..n) for two ranks at once: key of the rank[s]-th smallest value
// (1-based; rank 0 = not wanted, result undefined) in keys[s]. Radix select from the most
// significant byte: per pass a 256-bin shared histogram of the candidates' next byte, then the
// byte where the running count reaches the rank. Block-wide, all threads must call it.
// Scratch in shared memory: hist[2 * 256], part[2 * 16], state[4]. v is written by the calling
// kernel just before (no __restrict__ / read-only-cache loads: ld.global.nc is not coherent
// with the kernel's own writes; the PTX loads it with plain ld.global).
__device__ void block_select2(const float* v, int n, unsigned int rank0,
                              unsigned int rank1, unsigned int* hist, unsigned int* part,
                              unsigned int* state, unsigned int keys[2]) {
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  if (tid == 0) {
    state[0] = 0u;  // key prefix found so far, selection 0 / 1
    state[1] = 0u;
    state[2] = rank0;  // rank among the remaining candidates (0: inactive)
    state[3] = rank1;
  }
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    const unsigned int hi_mask = pass == 0 ? 0u : (0xFFFFFFFFu << (shift + 8));
    for (int j = tid; j < 2 * 256; j += nthreads) hist[j] = 0u;
    __syncthreads();  // also publishes state
    const unsigned int p0 = state[0], p1 = state[1];
    const bool a0 = state[2] != 0u, a1 = state[3] != 0u;
    for (int i = tid; i < n; i += nthreads) {
      const unsigned int key = float_key(v[i]);
      const unsigned int digit = (key >> shift) & 0xFFu;
      if (a0 && (key & hi_mask) == p0) atomicAdd(&hist[digit], 1u);
      if (a1 && (key & hi_mask) == p1) atomicAdd(&hist[256 + digit], 1u);
    }
    __syncthreads();
    if (tid < 32) {  // 16 partial sums of 16 bins per selection
      const int s = tid >> 4, c = tid & 15;
      unsigned int sum = 0u;
      for (int j = 0; j < 16; ++j) sum += hist[256 * s + 16 * c + j];
      part[16 * s + c] = sum;
    }
    __syncthreads();
    if (tid < 2 && state[2 + tid] != 0u) {
      const int s = tid;
      unsigned int k = state[2 + s];
      int c = 0;
      while (part[16 * s + c] < k) k -= part[16 * s + c++];
      int d = 16 * c;
      while (hist[256 * s + d] < k) k -= hist[256 * s + d++];
      state[2 + s] = k;
      state[s] |= static_cast<unsigned int>(d) << shift;
    }
    __syncthreads();  // hist is reused by the next pass
  }
  keys[0] = state[0];
  keys[1] = state[1];
  __syncthreads();  // state may be reused by the caller
}

// In-place exclusive prefix sum of vals[0..blockDim.x) (blockDim.x % 32 == 0, <= 1024); returns
// the total to every thread. part: shared int[33].
__device__ int block_exclusive_scan(int* vals, int* part) {
  const int tid = threadIdx.x;
  const int group = blockDim.x / 32;
  if (tid < 32) {
    int sum = 0;
    for (int j = 0; j < group; ++j) sum += vals[tid * group + j];
    part[tid] = sum;
  }
  __syncthreads();
  if (tid == 0) {
    int run = 0;
    for (int g = 0; g < 32; ++g) {
      const int x = part[g];
      part[g] = run;
      run += x;
    }
    part[32] = run;
  }
  __syncthreads();
  if (tid < 32) {
    int run = part[tid];
    for (int j = 0; j < group; ++j) {
      const int x = vals[tid * group + j];
      vals[tid * group + j] = run;
      run += x;
    }
  }
  __syncthreads();
  const int total = part[32];
  __syncthreads();  // part may be reused
  return total;
}

__device__ __forceinline__ float pos_inf() { return __uint_as_float(0x7F800000u); }

// ops._tie_weighted: weight = (k - n_strict) / n_tied (0 without ties).
__device__ __forceinline__ float tie_weight(int k, int n_strict, int n_tied) {
  return n_tied > 0 ? __fdiv_rn(static_cast<float>(k - n_strict), static_cast<float>(n_tied))
                    : 0.0f;
}

// ops.likelihoods for bin j of hist (4, 1000) (strict / tied foreground, strict / tied
// background): c = strict + tied * w (background + 1), pF = cF / den_fg, pB = cB / den_bg.
__device__ __forceinline__ void bin_likelihoods(const int* hist, int j, float w_fg, float w_bg,
                                                float den_fg, float den_bg, float* pf,
                                                float* pb) {
  const float c_fg = __fadd_rn(static_cast<float>(hist[j]),
                               __fmul_rn(static_cast<float>(hist[FAME_NUM_BINS + j]), w_fg));
  const float c_bg = __fadd_rn(
      __fadd_rn(static_cast<float>(hist[2 * FAME_NUM_BINS + j]),
                __fmul_rn(static_cast<float>(hist[3 * FAME_NUM_BINS + j]), w_bg)),
      1.0f);
  *pf = __fdiv_rn(c_fg, den_fg);
  *pb = __fdiv_rn(c_bg, den_bg);
}

// ops.soft_mask: M = pF / (pF + pB).
__device__ __forceinline__ float soft_value(float pf, float pb) {
  return __fdiv_rn(pf, __fadd_rn(pf, pb));
}

#if defined(FAME_CUDA_HOST_EMULATION)
// Host only (kernels/fame_cpu.cpp): M of every bin from the counts and their totals
// (n_gt, n_eq_fg, n_lt, n_eq_bg), with the arithmetic of fame_seed_hist_soft.
inline void soft_table(const int* hist, const int totals[4], int k_fg, int k_bg, float den_fg,
                       float den_bg, float* ratio) {
  const float w_fg = tie_weight(k_fg, totals[0], totals[1]);
  const float w_bg = tie_weight(k_bg, totals[2], totals[3]);
  for (int j = 0; j < FAME_NUM_BINS; ++j) {
    float pf, pb;
    bin_likelihoods(hist, j, w_fg, w_bg, den_fg, den_bg, &pf, &pb);
    ratio[j] = soft_value(pf, pb);
  }
}
#endif

}  // namespace fame_mask_detail

// Gaussian blur along W (spec step 2, first axis) of in (B, H, W) -> out. Grid (x, B): blockIdx.y
// is the clip, a grid-stride loop over its H*W pixels. taps: float32 (2 radius + 1,), radius <
// W. Block (0, b) also resets stats[b] (min key = 0xFFFFFFFF, max key = 0) for the
// fame_blur_cols_minmax launch that follows on the same stream.
extern "C" __global__ void fame_blur_rows(const float* __restrict__ in, float* __restrict__ out,
                                          const float* __restrict__ taps, int radius, int H,
                                          int W, unsigned int* __restrict__ stats) {
  const long long clip = blockIdx.y;
  const int HW = H * W;
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    stats[2 * clip] = 0xFFFFFFFFu;
    stats[2 * clip + 1] = 0u;
  }
  const float* src = in + clip * HW;
  float* dst = out + clip * HW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += blockDim.x * gridDim.x) {
    const int h = i / W;
    const int w = i - h * W;
    dst[i] = fame_mask_detail::blur_at(src + static_cast<long long>(h) * W, w, W, 1, taps,
                                       radius);
  }
}

// Gaussian blur along H (second axis) of in (B, H, W) -> out, and the per-clip min / max of out
// folded into stats (B, 2) with one atomicMin / atomicMax per block. Grid (x, B); radius < H.
extern "C" __global__ void fame_blur_cols_minmax(const float* __restrict__ in,
                                                 float* __restrict__ out,
                                                 const float* __restrict__ taps, int radius,
                                                 int H, int W, unsigned int* __restrict__ stats) {
  __shared__ unsigned int red_lo[32], red_hi[32];
  const long long clip = blockIdx.y;
  const int HW = H * W;
  const float* src = in + clip * HW;
  float* dst = out + clip * HW;
  unsigned int lo = 0xFFFFFFFFu, hi = 0u;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += blockDim.x * gridDim.x) {
    const int h = i / W;
    const int w = i - h * W;
    const float v = fame_mask_detail::blur_at(src + w, h, H, W, taps, radius);
    dst[i] = v;
    const unsigned int key = fame_mask_detail::float_key(v);
    lo = key < lo ? key : lo;
    hi = key > hi ? key : hi;
  }
  // block reduction without warp intrinsics: 32 slots, then thread 0
  const int tid = threadIdx.x;
  if (tid < 32) {
    red_lo[tid] = 0xFFFFFFFFu;
    red_hi[tid] = 0u;
  }
  __syncthreads();
  atomicMin(&red_lo[tid & 31], lo);
  atomicMax(&red_hi[tid & 31], hi);
  __syncthreads();
  if (tid == 0) {
    for (int j = 1; j < 32; ++j) {
      lo = red_lo[j] < lo ? red_lo[j] : lo;
      hi = red_hi[j] > hi ? red_hi[j] : hi;
    }
    lo = red_lo[0] < lo ? red_lo[0] : lo;
    hi = red_hi[0] > hi ? red_hi[0] : hi;
    atomicMin(&stats[2 * clip], lo);
    atomicMax(&stats[2 * clip + 1], hi);
  }
}

// Spec steps 2 (min-max), 5, 6 and 7 before the blur; one block per clip (grid (B,)).
//   seed[p]   = minmax(blurred)                                    float32 (B, HW)
//   thr[b]    = (kF-th largest seed or +inf if kF = 0, kB-th smallest or -inf if kB = 0)
//   counts    = color_histograms_ref(bins, seed, thr_fg, thr_bg)    int32 (B, 4, 1000)
//   soft[p]   = pF[bin] / (pF[bin] + pB[bin]) with ops.likelihoods' tie weights
// den_fg / den_bg: float32(kF) + 1e-8f and float32(kB + 1000) + 1e-8f (ops.likelihoods).
// A bin outside 0..999 is not counted and gets soft = 0 (memory guard).
extern "C" __global__ void __launch_bounds__(FAME_MAX_BLOCK) fame_seed_hist_soft(
    const float* __restrict__ blurred, const unsigned int* __restrict__ stats,
    const int* __restrict__ bins, float* __restrict__ seed, float* __restrict__ thr,
    int* __restrict__ counts, float* __restrict__ soft, int HW, int k_fg, int k_bg, float den_fg,
    float den_bg) {
  __shared__ unsigned int sel_hist[2 * 256], sel_part[2 * 16], sel_state[4];
  __shared__ int hist[4 * FAME_NUM_BINS];
  __shared__ int totals[4];
  __shared__ float p_fg[FAME_NUM_BINS], p_bg[FAME_NUM_BINS];
  using namespace fame_mask_detail;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const long long clip = blockIdx.x;
  const float* src = blurred + clip * HW;
  const int* clip_bins = bins + clip * HW;
  float* clip_seed = seed + clip * HW;
  float* clip_soft = soft + clip * HW;

  float lo;
  const float den = minmax_den(stats + 2 * clip, &lo);
  for (int i = tid; i < HW; i += nthreads) clip_seed[i] = minmax_value(src[i], lo, den);
  for (int k = tid; k < 4 * FAME_NUM_BINS; k += nthreads) hist[k] = 0;
  if (tid < 4) totals[tid] = 0;
  __syncthreads();

  // thr_fg = the kF-th largest = the (HW - kF + 1)-th smallest; thr_bg = the kB-th smallest
  unsigned int keys[2];
  block_select2(clip_seed, HW, k_fg > 0 ? static_cast<unsigned int>(HW - k_fg + 1) : 0u,
                static_cast<unsigned int>(k_bg), sel_hist, sel_part, sel_state, keys);
  const float tf = k_fg > 0 ? key_float(keys[0]) : pos_inf();
  const float tb = k_bg > 0 ? key_float(keys[1]) : -pos_inf();

  int n_gt = 0, n_eq_f = 0, n_lt = 0, n_eq_b = 0;
  for (int i = tid; i < HW; i += nthreads) {
    const int bin = clip_bins[i];
    if (static_cast<unsigned int>(bin) >= static_cast<unsigned int>(FAME_NUM_BINS)) continue;
    const float s = clip_seed[i];
    if (s > tf) {
      atomicAdd(&hist[bin], 1);
      ++n_gt;
    } else if (s == tf) {
      atomicAdd(&hist[FAME_NUM_BINS + bin], 1);
      ++n_eq_f;
    }
    if (s < tb) {
      atomicAdd(&hist[2 * FAME_NUM_BINS + bin], 1);
      ++n_lt;
    } else if (s == tb) {
      atomicAdd(&hist[3 * FAME_NUM_BINS + bin], 1);
      ++n_eq_b;
    }
  }
  atomicAdd(&totals[0], n_gt);
  atomicAdd(&totals[1], n_eq_f);
  atomicAdd(&totals[2], n_lt);
  atomicAdd(&totals[3], n_eq_b);
  __syncthreads();

  // ops._tie_weighted: weight = (k - n_strict) / n_tied (0 without ties), c = strict + tied * w
  const float w_fg = tie_weight(k_fg, totals[0], totals[1]);
  const float w_bg = tie_weight(k_bg, totals[2], totals[3]);
  int* clip_counts = counts + clip * (4 * FAME_NUM_BINS);
  for (int k = tid; k < 4 * FAME_NUM_BINS; k += nthreads) clip_counts[k] = hist[k];
  for (int j = tid; j < FAME_NUM_BINS; j += nthreads) {
    bin_likelihoods(hist, j, w_fg, w_bg, den_fg, den_bg, &p_fg[j], &p_bg[j]);
  }
  if (tid == 0) {
    thr[2 * clip] = tf;
    thr[2 * clip + 1] = tb;
  }
  __syncthreads();
  for (int i = tid; i < HW; i += nthreads) {
    const int bin = clip_bins[i];
    float m = 0.0f;
    if (static_cast<unsigned int>(bin) < static_cast<unsigned int>(FAME_NUM_BINS)) {
      m = soft_value(p_fg[bin], p_bg[bin]);
    }
    clip_soft[i] = m;
  }
}

// Spec step 8 (and the min-max of step 7); one block per clip (grid (B,)). score = minmax of
// blurred (B, HW); mask[p] = 1 for exactly k pixels per clip (0 <= k <= HW): every pixel above
// the k-th largest score t, then the pixels equal to t in row-major order while slots remain
// (ops.select_top). Each thread owns one contiguous run of pixels, so the row-major order of the
// tied pixels is the thread order (one block-wide scan of the per-thread tie counts).
extern "C" __global__ void __launch_bounds__(FAME_MAX_BLOCK) fame_select_top(const float* __restrict__ blurred,
                                           const unsigned int* __restrict__ stats,
                                           float* __restrict__ score,
                                           unsigned char* __restrict__ mask, int HW, int k) {
  __shared__ unsigned int sel_hist[2 * 256], sel_part[2 * 16], sel_state[4];
  __shared__ int tied_before[FAME_MAX_BLOCK], above_count[FAME_MAX_BLOCK], scan_part[33];
  using namespace fame_mask_detail;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const long long clip = blockIdx.x;
  const float* src = blurred + clip * HW;
  float* clip_score = score + clip * HW;
  unsigned char* clip_mask = mask + clip * HW;

  float lo;
  const float den = minmax_den(stats + 2 * clip, &lo);
  for (int i = tid; i < HW; i += nthreads) clip_score[i] = minmax_value(src[i], lo, den);
  __syncthreads();
  if (k <= 0) {  // the same branch for every thread of the block: no barrier is skipped
    for (int i = tid; i < HW; i += nthreads) clip_mask[i] = 0;
    return;
  }
  unsigned int keys[2];
  block_select2(clip_score, HW, static_cast<unsigned int>(HW - k + 1), 0u, sel_hist, sel_part,
                sel_state, keys);
  const float t = key_float(keys[0]);

  const int chunk = (HW + nthreads - 1) / nthreads;
  const int begin = tid * chunk < HW ? tid * chunk : HW;
  const int end = begin + chunk < HW ? begin + chunk : HW;
  int n_above = 0, n_tied = 0;
  for (int i = begin; i < end; ++i) {
    const float s = clip_score[i];
    n_above += s > t;
    n_tied += s == t;
  }
  above_count[tid] = n_above;
  tied_before[tid] = n_tied;
  __syncthreads();
  const int total_above = block_exclusive_scan(above_count, scan_part);
  block_exclusive_scan(tied_before, scan_part);
  const int slots = k - total_above;
  int taken = tied_before[tid];
  for (int i = begin; i < end; ++i) {
    const float s = clip_score[i];
    unsigned char m = s > t ? 1 : 0;
    if (s == t) {
      m = taken < slots ? 1 : 0;
      ++taken;
    }
    clip_mask[i] = m;
  }
}
