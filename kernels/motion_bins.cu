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
// The reference defines cos/sin in double precision (one sincos) rounded once to float32: the
// correctly rounded float32 value (bar astronomically rare midpoint cases), identical on every
// device and in torch. The kernels compute float sincosf (2 ulp) and redo the trigonometry in
// double only when the float result lies within 1e-5 of a rounding edge of q (0.59% of the 2^24
// uint8 colours, 0.2% with the legacy hue): same bins, FP64 almost never (see color_bin for the
// error bound; tested exhaustively in emulation with sincosf skewed by +-2 ulp).
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

// rint argument of q(): u * 9 + 1, two IEEE float ops (q(u) = rint(this) - 1).
__device__ __forceinline__ float q10_arg(float u) { return __fadd_rn(__fmul_rn(u, 9.0f), 1.0f); }

// Hue-disk coordinate (s * trig + 1) / 2 (spec step 4), as rint argument of q().
__device__ __forceinline__ float disk_q_arg(float s, float trig) {
  return q10_arg(__fdiv_rn(__fadd_rn(__fmul_rn(s, trig), 1.0f), 2.0f));
}

// Whether rint(x) could change if x moved by up to 3.6e-6: |x - (floor(x) + 0.5)| <= 1e-5.
// x in [1, 10]: x - floor(x) and the - 0.5 are exact.
__device__ __forceinline__ bool near_half(float x) {
  return fabsf(__fsub_rn(__fsub_rn(x, floorf(x)), 0.5f)) <= 1e-5f;
}

// HSV of the mean frame (spec step 4, exact float32 as the reference): s, v and the hue angle.
__device__ __forceinline__ void mean_hsv(int sr, int sg, int sb, int T, int legacy_hue, float* s_out,
                                         float* v_out, float* theta_out) {
  const float denom = static_cast<float>(T * 255);  // exact for T < 65794
  const float r = __fdiv_rn(static_cast<float>(sr), denom);
  const float g = __fdiv_rn(static_cast<float>(sg), denom);
  const float b = __fdiv_rn(static_cast<float>(sb), denom);
  // Branch-free (selects only, one division per quantity): no divergence on the GPU, and the
  // host compiler vectorises the loop that calls this (kernels/fame_cpu.cpp; 13x faster there
  // than the if / else chain). r, g, b >= +0 and never NaN, so the ternary max / min equal
  // fmaxf / fminf.
  const float mx = r > g ? r : g;
  const float v = mx > b ? mx : b;
  const float mn0 = r < g ? r : g;
  const float mn = mn0 < b ? mn0 : b;
  const float delta = __fsub_rn(v, mn);
  const float s = __fdiv_rn(delta, __fadd_rn(v, 1e-8f));
  const float d = (delta == 0.0f) ? 1.0f : delta;
  // h6 = (g - b) / d if r is the max, else 2 + (b - r) / d if g is, else 4 + (r - g) / d (a tie
  // for the max goes to the first of r, g, b)
  const bool r_max = r == v;
  const bool g_max = !r_max && g == v;
  const float num = r_max ? __fsub_rn(g, b) : (g_max ? __fsub_rn(b, r) : __fsub_rn(r, g));
  const float q = __fdiv_rn(num, d);
  const float h6 = r_max ? q : __fadd_rn(g_max ? 2.0f : 4.0f, q);
  // frac = (h6 / 6) mod 1 (torch.remainder); h6 / 6 lies in [-1/6, 5/6], so one + 1 suffices.
  const float a = __fdiv_rn(h6, 6.0f);
  const float frac = (a < 0.0f) ? __fadd_rn(a, 1.0f) : a;
  const float theta = __fmul_rn(6.2831855f, frac);  // float32(2 pi)
  // The released code's `h * 2 * np.pi`, left to right: radians times 2 pi once more.
  const float theta_legacy = __fmul_rn(__fmul_rn(theta, 2.0f), 3.1415927f);  // float32(pi)
  *s_out = s;
  *v_out = v;
  *theta_out = legacy_hue ? theta_legacy : theta;
}

// The reference's bin: cos / sin in double precision, rounded once to float32 (the correctly
// rounded float32 values, identical in torch and on every device).
__device__ __forceinline__ int color_bin_exact(int sr, int sg, int sb, int T, int legacy_hue) {
  float s, v, theta;
  mean_hsv(sr, sg, sb, T, legacy_hue, &s, &v, &theta);
  double sin_d, cos_d;
  sincos(static_cast<double>(theta), &sin_d, &cos_d);
  const int qx = static_cast<int>(rintf(disk_q_arg(s, static_cast<float>(cos_d)))) - 1;
  const int qy = static_cast<int>(rintf(disk_q_arg(s, static_cast<float>(sin_d)))) - 1;
  return qx + 10 * qy + 100 * quantize10(v);
}

// The same bin without FP64 in the common case (FP64 runs at 1/32 or 1/64 of FP32 on T4-class
// and consumer GPUs). Float sincosf is within 2 ulp of cos / sin (CUDA C Programming Guide,
// single-precision functions without -use_fast_math), so it differs from the correctly rounded
// value by at most 2.5 ulp <= 3 * 2^-24. Through the five rounded float ops of q's argument
// (s * c, + 1, / 2, * 9, + 1) that moves the argument by at most 3.6e-6 (each op adds one ulp
// of its result: 6e-8, 1.2e-7, 0, 9.5e-7, 9.5e-7, and * 9 scales the input error). rint only
// jumps at half-integers, so unless the float argument lies within 1e-5 of one (near_half) the
// float and the exact path give the same level. Near a half the double path decides; with
// s = 0 both paths give s * c = 0 exactly (the grey axis, where px = py = 0.5 always).
// tests/kernels/test_kernel_motion_bins.py checks fast == exact on all 2^24 uint8 means (T = 1)
// and sampled sums for T = 16, with the emulated sincosf skewed by +-2 ulp as well.
__device__ __forceinline__ int color_bin(int sr, int sg, int sb, int T, int legacy_hue) {
  float s, v, theta;
  mean_hsv(sr, sg, sb, T, legacy_hue, &s, &v, &theta);
  float sin_f, cos_f;
  sincosf(theta, &sin_f, &cos_f);
  float ax = disk_q_arg(s, cos_f);
  float ay = disk_q_arg(s, sin_f);
  if (s != 0.0f && (near_half(ax) || near_half(ay))) {
    double sin_d, cos_d;
    sincos(static_cast<double>(theta), &sin_d, &cos_d);
    ax = disk_q_arg(s, static_cast<float>(cos_d));
    ay = disk_q_arg(s, static_cast<float>(sin_d));
  }
  const int qx = static_cast<int>(rintf(ax)) - 1;
  const int qy = static_cast<int>(rintf(ay)) - 1;
  return qx + 10 * qy + 100 * quantize10(v);
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
#pragma unroll 4
    for (int t = 1; t < T; ++t) {  // unrolled: 4 frames' loads in flight per thread
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
#pragma unroll 4
    for (int t = 1; t < T; ++t) {  // unrolled: 12 independent 32-bit loads in flight per thread
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
