// motion_bins.cu: FAME spec steps 1, 3 and 4 in one pass over a batch of uint8 clips.
//
// Input  clips  uint8  (B, T, H, W, 3) RGB, channels-last, contiguous.
// Output motion float32 (B, H, W): D = (1 / (T-1)) * sum_{t>=1} sum_c |x_t - x_{t-1}| on the
//                                 [0, 1] scale, i.e. (integer sum of |differences|) / (255 (T-1)).
//        bins   int32   (B, H, W): colour bin in 0..999 of the mean frame.
// Reproduces dali_fame.fame.reference.motion_and_bins_ref exactly (bins) and to float rounding
// (motion: one IEEE division of an exact integer, so usually bit-identical as well).
//
// Exactness: the difference and channel sums are integers (int32 cannot overflow for
// T < 2^21), the mean frame is sum / (255 T) with ONE float32 division, and every later float32
// operation is spelled as an explicit round-to-nearest intrinsic (__fadd_rn, __fmul_rn, ...),
// which the compiler may not fuse into FMAs; so the bin is the same whatever the compiler flags.
// cos/sin are evaluated in double precision (one sincos) and rounded once to float32: that is
// the correctly rounded float32 value (bar astronomically rare midpoint cases), identical on every
// device and in the torch reference, whereas float32 cosf differs by an ulp between libraries
// (and would move pixels lying on a bin edge). It is done once per pixel, not per frame.
//
// Two entry points with identical arithmetic:
//   fame_motion_bins        one thread per pixel, byte loads; any H*W and alignment.
//   fame_motion_bins_vec4   one thread per 4 consecutive pixels, three 32-bit loads per frame;
//                           needs H*W % 4 == 0, clips 4-byte aligned, motion/bins 16-byte aligned.
// Both use grid-stride loops over B*H*W (resp. B*H*W/4) work items; any grid is correct.
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "cuda_host_emu.cuh"
#endif

namespace fame_mb {

// q(u) = round(9u + 1) - 1 with round half to even (rintf in the default rounding mode).
__device__ __forceinline__ int quantize10(float u) {
  return static_cast<int>(rintf(__fadd_rn(__fmul_rn(u, 9.0f), 1.0f))) - 1;
}

__device__ __forceinline__ float motion_value(int abs_diff_sum, int T) {
  return __fdiv_rn(static_cast<float>(abs_diff_sum), static_cast<float>(255 * (T - 1)));
}

// Colour bin of the mean-frame pixel whose channel sums over T frames are (sr, sg, sb).
// Spec step 4: hexcone HSV, hue as an angle, (s cos, s sin) disk, 10 x 10 x 10 bins.
__device__ __forceinline__ int color_bin(int sr, int sg, int sb, int T, int legacy_hue) {
  const float denom = static_cast<float>(T * 255);  // exact for T < 65794
  const float r = __fdiv_rn(static_cast<float>(sr), denom);
  const float g = __fdiv_rn(static_cast<float>(sg), denom);
  const float b = __fdiv_rn(static_cast<float>(sb), denom);
  const float v = fmaxf(fmaxf(r, g), b);
  const float mn = fminf(fminf(r, g), b);
  const float delta = __fsub_rn(v, mn);
  const float s = __fdiv_rn(delta, __fadd_rn(v, 1e-8f));
  const float d = (delta == 0.0f) ? 1.0f : delta;
  float h6;
  if (r == v) {  // a tie for the max goes to the first of r, g, b
    h6 = __fdiv_rn(__fsub_rn(g, b), d);
  } else if (g == v) {
    h6 = __fadd_rn(2.0f, __fdiv_rn(__fsub_rn(b, r), d));
  } else {
    h6 = __fadd_rn(4.0f, __fdiv_rn(__fsub_rn(r, g), d));
  }
  // frac = (h6 / 6) mod 1 (torch.remainder); h6 / 6 lies in [-1/6, 5/6], so one + 1 suffices.
  const float a = __fdiv_rn(h6, 6.0f);
  const float frac = (a < 0.0f) ? __fadd_rn(a, 1.0f) : a;
  float theta = __fmul_rn(6.2831855f, frac);  // float32(2 pi)
  if (legacy_hue) {
    // The released code's `h * 2 * np.pi`, left to right: radians times 2 pi once more.
    theta = __fmul_rn(__fmul_rn(theta, 2.0f), 3.1415927f);  // float32(pi)
  }
  double sin_d, cos_d;  // one shared argument reduction (FP64 is slow on consumer GPUs)
  sincos(static_cast<double>(theta), &sin_d, &cos_d);
  const float c = static_cast<float>(cos_d);
  const float sn = static_cast<float>(sin_d);
  const float px = __fdiv_rn(__fadd_rn(__fmul_rn(s, c), 1.0f), 2.0f);
  const float py = __fdiv_rn(__fadd_rn(__fmul_rn(s, sn), 1.0f), 2.0f);
  return quantize10(px) + 10 * quantize10(py) + 100 * quantize10(v);
}

}  // namespace fame_mb

extern "C" __global__ void fame_motion_bins(const unsigned char* __restrict__ clips,
                                            float* __restrict__ motion, int* __restrict__ bins,
                                            int num_clips, int T, int HW, int legacy_hue) {
  const long long n = static_cast<long long>(num_clips) * HW;
  const long long stride = static_cast<long long>(blockDim.x) * gridDim.x;
  const long long frame_bytes = 3LL * HW;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const long long clip = i / HW;
    const long long pix = i - clip * HW;
    const unsigned char* x = clips + (clip * T * HW + pix) * 3;
    int pr = x[0], pg = x[1], pb = x[2];
    int sr = pr, sg = pg, sb = pb, diff = 0;
    for (int t = 1; t < T; ++t) {
      x += frame_bytes;
      const int r = x[0], g = x[1], b = x[2];
      diff += abs(r - pr) + abs(g - pg) + abs(b - pb);
      sr += r;
      sg += g;
      sb += b;
      pr = r;
      pg = g;
      pb = b;
    }
    motion[i] = fame_mb::motion_value(diff, T);
    bins[i] = fame_mb::color_bin(sr, sg, sb, T, legacy_hue);
  }
}

extern "C" __global__ void fame_motion_bins_vec4(const unsigned char* __restrict__ clips,
                                                 float* __restrict__ motion,
                                                 int* __restrict__ bins, int num_clips, int T,
                                                 int HW, int legacy_hue) {
  const int groups_per_clip = HW / 4;
  const long long n = static_cast<long long>(num_clips) * groups_per_clip;
  const long long stride = static_cast<long long>(blockDim.x) * gridDim.x;
  const long long frame_words = 3LL * HW / 4;
  const unsigned int* words = reinterpret_cast<const unsigned int*>(clips);
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const long long clip = i / groups_per_clip;
    const long long group = i - clip * groups_per_clip;
    const unsigned int* w = words + clip * T * frame_words + 3 * group;
    // 4 pixels x 3 channels = 12 bytes = 3 little-endian words: byte k is pixel k / 3.
    int prev[12], sum[12], diff[4] = {0, 0, 0, 0};
    {
      const unsigned int w0 = w[0], w1 = w[1], w2 = w[2];
#pragma unroll
      for (int k = 0; k < 12; ++k) {
        const unsigned int word = k < 4 ? w0 : (k < 8 ? w1 : w2);
        prev[k] = static_cast<int>((word >> (8 * (k & 3))) & 0xFFu);
        sum[k] = prev[k];
      }
    }
    for (int t = 1; t < T; ++t) {
      w += frame_words;
      const unsigned int w0 = w[0], w1 = w[1], w2 = w[2];
#pragma unroll
      for (int k = 0; k < 12; ++k) {
        const unsigned int word = k < 4 ? w0 : (k < 8 ? w1 : w2);
        const int value = static_cast<int>((word >> (8 * (k & 3))) & 0xFFu);
        diff[k / 3] += abs(value - prev[k]);
        sum[k] += value;
        prev[k] = value;
      }
    }
    float m[4];
    int bn[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      m[p] = fame_mb::motion_value(diff[p], T);
      bn[p] = fame_mb::color_bin(sum[3 * p], sum[3 * p + 1], sum[3 * p + 2], T, legacy_hue);
    }
    reinterpret_cast<float4*>(motion)[i] = make_float4(m[0], m[1], m[2], m[3]);
    int4 packed;
    packed.x = bn[0];
    packed.y = bn[1];
    packed.z = bn[2];
    packed.w = bn[3];
    reinterpret_cast<int4*>(bins)[i] = packed;
  }
}
