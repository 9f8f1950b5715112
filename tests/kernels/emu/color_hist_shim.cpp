// C ABI over kernels/color_hist.cu compiled as host C++ (see kernels/cuda_host_emu.cuh).
#include "color_hist.cu"

extern "C" void emu_color_hist(unsigned int grid_x, unsigned int grid_y, unsigned int block,
                               const int* bins, const float* seed, const float* thr_fg,
                               const float* thr_bg, int* hist, int HW) {
  emu_launch(fame_color_hist, dim3(grid_x, grid_y), dim3(block), bins, seed, thr_fg, thr_bg, hist,
             HW);
}
