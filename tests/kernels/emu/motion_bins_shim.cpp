// C ABI over kernels/motion_bins.cu compiled as host C++ (see kernels/cuda_host_emu.cuh).
// Launch configuration comes from the caller (the tests use dali_fame.fame.cuda's helpers).
#include "motion_bins.cu"

extern "C" void emu_motion_bins(int vec4, unsigned int grid, unsigned int block,
                                const unsigned char* clips, float* motion, int* bins,
                                int num_clips, int T, int HW, int legacy_hue) {
  emu_launch(vec4 ? fame_motion_bins_vec4 : fame_motion_bins, dim3(grid), dim3(block), clips,
             motion, bins, num_clips, T, HW, legacy_hue);
}
