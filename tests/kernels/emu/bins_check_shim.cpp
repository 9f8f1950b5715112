// Exhaustive checks of kernels/motion_bins.cu's FP64-free colour bin (fame_mb::color_bin)
// against the double-precision reference bin (fame_mb::color_bin_exact), as host C++ (see
// kernels/cuda_host_emu.cuh; built also with FAME_EMU_SINCOSF_SKEW_ULP = +-2, a sincosf at
// CUDA's documented error bound).
#include "motion_bins.cu"

namespace {
// Whether color_bin takes its double-precision path for these sums (the kernel's own helpers).
bool takes_fallback(int sr, int sg, int sb, int T, int legacy_hue) {
  float s, v, theta, sin_f, cos_f;
  fame_mb::mean_hsv(sr, sg, sb, T, legacy_hue, &s, &v, &theta);
  sincosf(theta, &sin_f, &cos_f);
  return s != 0.0f && (fame_mb::near_half(fame_mb::disk_q_arg(s, cos_f)) ||
                       fame_mb::near_half(fame_mb::disk_q_arg(s, sin_f)));
}
}  // namespace

// Every uint8 colour as the mean of T = 1 frame (2^24 means): returns the number of colours
// whose fast bin differs from the exact one; *fallbacks = colours that took the double path.
extern "C" long long emu_bins_mismatch_all_uint8(int legacy_hue, long long* fallbacks) {
  long long bad = 0, slow = 0;
  for (int r = 0; r < 256; ++r)
    for (int g = 0; g < 256; ++g)
      for (int b = 0; b < 256; ++b) {
        bad += fame_mb::color_bin(r, g, b, 1, legacy_hue) !=
               fame_mb::color_bin_exact(r, g, b, 1, legacy_hue);
        slow += takes_fallback(r, g, b, 1, legacy_hue);
      }
  *fallbacks = slow;
  return bad;
}

// The same over n given channel sums (int32 (n, 3)) of T frames.
extern "C" long long emu_bins_mismatch_sums(const int* sums, long long n, int T, int legacy_hue,
                                            long long* fallbacks) {
  long long bad = 0, slow = 0;
  for (long long i = 0; i < n; ++i) {
    const int r = sums[3 * i], g = sums[3 * i + 1], b = sums[3 * i + 2];
    bad += fame_mb::color_bin(r, g, b, T, legacy_hue) !=
           fame_mb::color_bin_exact(r, g, b, T, legacy_hue);
    slow += takes_fallback(r, g, b, T, legacy_hue);
  }
  *fallbacks = slow;
  return bad;
}
