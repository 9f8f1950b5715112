// C ABI over kernels/merge.cu compiled as host C++ (see kernels/cuda_host_emu.cuh).
#include "merge.cu"

extern "C" void emu_merge(int vec16, unsigned int grid, unsigned int block,
                          const unsigned char* clips, const unsigned char* background,
                          const unsigned char* mask, const long long* perm, unsigned char* out,
                          int num_clips, int T, int HW) {
  emu_launch(vec16 ? fame_merge_vec16 : fame_merge, dim3(grid), dim3(block), clips, background,
             mask, perm, out, num_clips, T, HW);
}

extern "C" void emu_merge_normalize(int vec16, unsigned int grid, unsigned int block,
                                    const unsigned char* clips, const unsigned char* background,
                                    const unsigned char* mask, const long long* perm,
                                    const float* mean, const float* stdev, float* out,
                                    int num_clips, int T, int HW) {
  emu_launch(vec16 ? fame_merge_normalize_vec16 : fame_merge_normalize, dim3(grid), dim3(block),
             clips, background, mask, perm, mean, stdev, out, num_clips, T, HW);
}
