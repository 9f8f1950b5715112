// C ABI over the kernels of the fused CUDA FAME mask (kernels/motion_bins.cu + fame_mask.cu)
// compiled as host C++ (see kernels/cuda_host_emu.cuh). One entry point per kernel, all of the
// form emu_<kernel>(grid_x, grid_y, block, <the kernel's own arguments>), so that
// tests/kernels/conftest.py's EmuRunner can launch any of them by name, exactly as
// dali_fame.fame.cuda's CuPy runner does.
#include "motion_bins.cu"
#include "fame_mask.cu"

#define EMU_ENTRY(kernel, params, args)                                              \
  extern "C" void emu_##kernel(unsigned int gx, unsigned int gy, unsigned int block, \
                               EMU_UNPAREN params) {                                  \
    emu_launch(kernel, dim3(gx, gy), dim3(block), EMU_UNPAREN args);                  \
  }
#define EMU_UNPAREN(...) __VA_ARGS__

EMU_ENTRY(fame_motion_bins,
          (const unsigned char* clips, float* motion, int* bins, int num_clips, int T, int HW,
           int legacy_hue),
          (clips, motion, bins, num_clips, T, HW, legacy_hue))
EMU_ENTRY(fame_motion_bins_vec4,
          (const unsigned char* clips, float* motion, int* bins, int num_clips, int T, int HW,
           int legacy_hue),
          (clips, motion, bins, num_clips, T, HW, legacy_hue))
EMU_ENTRY(fame_blur_rows,
          (const float* in, float* out, const float* taps, int radius, int H, int W,
           unsigned int* stats),
          (in, out, taps, radius, H, W, stats))
EMU_ENTRY(fame_blur_cols_minmax,
          (const float* in, float* out, const float* taps, int radius, int H, int W,
           unsigned int* stats),
          (in, out, taps, radius, H, W, stats))
EMU_ENTRY(fame_seed_hist_soft,
          (const float* blurred, const unsigned int* stats, const int* bins, float* seed,
           float* thr, int* counts, float* soft, int HW, int k_fg, int k_bg, float den_fg,
           float den_bg),
          (blurred, stats, bins, seed, thr, counts, soft, HW, k_fg, k_bg, den_fg, den_bg))
EMU_ENTRY(fame_select_top,
          (const float* blurred, const unsigned int* stats, float* score, unsigned char* mask,
           int HW, int k),
          (blurred, stats, score, mask, HW, k))
