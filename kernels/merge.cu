// merge.cu: FAME foreground-background merging (spec section 2), all frames, per-pixel select.
//
// Inputs  clips       uint8  (B, T, H, W, 3) RGB, channels-last, contiguous: the foregrounds
//         background  uint8  (B, T, H, W, 3) like clips: the background sources. The launchers
//                            pass clips itself for FAME's inter-video merge (backgrounds from
//                            other clips of the batch) and a third clip of each video for the
//                            intra-video merge; both are only read, so they may alias.
//         mask        uint8  (B, H, W)  non-zero = foreground (a torch.bool mask viewed as uint8)
//         perm        int64  (B,)       background source clip of each clip
// merged[b, t, h, w, :] = clips[b, t, h, w, :] if mask[b, h, w]
//                         else background[perm[b], t, h, w, :]
// A perm entry outside 0..B-1 is never dereferenced: background[b] is read instead (clip b's own
// pixels when background is clips; a memory guard: callers pass valid permutations).
//
//   fame_merge                 uint8 out (B, T, H, W, 3); one thread per pixel and frame.
//   fame_merge_vec16           the same, 16 pixels (48 bytes = 3 x uint4) per thread; reads only
//                              the source(s) a group actually needs (masks are spatially smooth,
//                              so most groups read 48 bytes, not 96). Needs H*W % 16 == 0 and
//                              16-byte aligned clips, background, mask and out.
//   fame_merge_normalize       float32 out (B, 3, T, H, W) = (merged / 255 - mean[c]) / std[c].
//   fame_merge_normalize_vec16 the same, 16 pixels per thread, float4 stores; same alignment
//                              rules (out 16-byte aligned).
// The normalising kernels first build a 3 x 256 lookup table in shared memory with the exact
// float32 formula ((x / 255) - mean[c]) / std[c] (IEEE divisions, as the torch reference on the
// CPU computes it), so the result is bit-identical to the reference and costs one shared load.
// All kernels use grid-stride loops over their work items (1-D grid, any size).
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "cuda_host_emu.cuh"
#endif

namespace fame_merge_detail {

__device__ __forceinline__ long long source_clip(const long long* __restrict__ perm, long long b,
                                                 int num_clips) {
  const long long src = perm[b];
  return (src >= 0 && src < num_clips) ? src : b;
}

// Expands 16 mask bytes (one per pixel) to 12 byte-select words over the 48 RGB bytes of those
// pixels: byte k of the RGB run belongs to pixel k / 3.
__device__ __forceinline__ void expand_mask16(const uint4 m, unsigned int sel[12]) {
  const unsigned int mw[4] = {m.x, m.y, m.z, m.w};
#pragma unroll
  for (int j = 0; j < 12; ++j) {
    unsigned int s = 0u;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int pixel = (4 * j + i) / 3;
      const unsigned int mbyte = (mw[pixel >> 2] >> (8 * (pixel & 3))) & 0xFFu;
      s |= (mbyte != 0u ? 0xFFu : 0u) << (8 * i);
    }
    sel[j] = s;
  }
}

// Selected 48 bytes (12 words) of 16 pixels: fg_v[fg_off..] where selected, bg_v[bg_off..] elsewhere.
__device__ __forceinline__ void select16(const uint4* __restrict__ fg_v, long long fg_off,
                                         const uint4* __restrict__ bg_v, long long bg_off,
                                         const unsigned int sel[12],
                                         unsigned int out[12]) {
  bool all_fg = true, all_bg = true;
#pragma unroll
  for (int j = 0; j < 12; ++j) {
    all_fg = all_fg && (sel[j] == 0xFFFFFFFFu);
    all_bg = all_bg && (sel[j] == 0u);
  }
  unsigned int fg[12], bg[12];
  if (!all_bg) {
#pragma unroll
    for (int q = 0; q < 3; ++q) {
      const uint4 v = fg_v[fg_off + q];
      fg[4 * q] = v.x;
      fg[4 * q + 1] = v.y;
      fg[4 * q + 2] = v.z;
      fg[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 12; ++j) fg[j] = 0u;
  }
  if (!all_fg) {
#pragma unroll
    for (int q = 0; q < 3; ++q) {
      const uint4 v = bg_v[bg_off + q];
      bg[4 * q] = v.x;
      bg[4 * q + 1] = v.y;
      bg[4 * q + 2] = v.z;
      bg[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 12; ++j) bg[j] = 0u;
  }
#pragma unroll
  for (int j = 0; j < 12; ++j) out[j] = (fg[j] & sel[j]) | (bg[j] & ~sel[j]);
}

__device__ __forceinline__ void fill_lut(float* lut, const float* __restrict__ mean,
                                         const float* __restrict__ stdev) {
  for (int k = threadIdx.x; k < 3 * 256; k += blockDim.x) {
    const int c = k >> 8;
    const float x = static_cast<float>(k & 255);
    lut[k] = __fdiv_rn(__fsub_rn(__fdiv_rn(x, 255.0f), mean[c]), stdev[c]);
  }
}

}  // namespace fame_merge_detail

extern "C" __global__ void fame_merge(const unsigned char* __restrict__ clips,
                                      const unsigned char* __restrict__ background,
                                      const unsigned char* __restrict__ mask,
                                      const long long* __restrict__ perm,
                                      unsigned char* __restrict__ out, int num_clips, int T,
                                      int HW) {
  const long long n = static_cast<long long>(num_clips) * T * HW;
  const long long stride = static_cast<long long>(blockDim.x) * gridDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const long long frame = i / HW;  // b * T + t
    const long long pix = i - frame * HW;
    const long long b = frame / T;
    const long long t = frame - b * T;
    const unsigned char* in =
        mask[b * HW + pix]
            ? clips + i * 3
            : background +
                  ((fame_merge_detail::source_clip(perm, b, num_clips) * T + t) * HW + pix) * 3;
    unsigned char* o = out + i * 3;
    o[0] = in[0];
    o[1] = in[1];
    o[2] = in[2];
  }
}

extern "C" __global__ void fame_merge_vec16(const unsigned char* __restrict__ clips,
                                            const unsigned char* __restrict__ background,
                                            const unsigned char* __restrict__ mask,
                                            const long long* __restrict__ perm,
                                            unsigned char* __restrict__ out, int num_clips, int T,
                                            int HW) {
  const long long groups = HW / 16;
  const long long n = static_cast<long long>(num_clips) * T * groups;
  const long long stride = static_cast<long long>(blockDim.x) * gridDim.x;
  const long long frame_vecs = 3LL * HW / 16;  // uint4 per frame
  const uint4* clips_v = reinterpret_cast<const uint4*>(clips);
  const uint4* background_v = reinterpret_cast<const uint4*>(background);
  const uint4* mask_v = reinterpret_cast<const uint4*>(mask);
  uint4* out_v = reinterpret_cast<uint4*>(out);
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const long long frame = i / groups;
    const long long g = i - frame * groups;
    const long long b = frame / T;
    const long long t = frame - b * T;
    const long long src = fame_merge_detail::source_clip(perm, b, num_clips);
    unsigned int sel[12], res[12];
    fame_merge_detail::expand_mask16(mask_v[b * groups + g], sel);
    fame_merge_detail::select16(clips_v, frame * frame_vecs + 3 * g, background_v,
                                (src * T + t) * frame_vecs + 3 * g, sel, res);
#pragma unroll
    for (int q = 0; q < 3; ++q) {
      out_v[frame * frame_vecs + 3 * g + q] =
          make_uint4(res[4 * q], res[4 * q + 1], res[4 * q + 2], res[4 * q + 3]);
    }
  }
}

extern "C" __global__ void fame_merge_normalize(const unsigned char* __restrict__ clips,
                                                const unsigned char* __restrict__ background,
                                                const unsigned char* __restrict__ mask,
                                                const long long* __restrict__ perm,
                                                const float* __restrict__ mean,
                                                const float* __restrict__ stdev,
                                                float* __restrict__ out, int num_clips, int T,
                                                int HW) {
  __shared__ float lut[3 * 256];
  fame_merge_detail::fill_lut(lut, mean, stdev);
  __syncthreads();
  const long long n = static_cast<long long>(num_clips) * T * HW;
  const long long stride = static_cast<long long>(blockDim.x) * gridDim.x;
  const long long plane = static_cast<long long>(T) * HW;  // one channel of one clip
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const long long frame = i / HW;
    const long long pix = i - frame * HW;
    const long long b = frame / T;
    const long long t = frame - b * T;
    const unsigned char* in =
        mask[b * HW + pix]
            ? clips + i * 3
            : background +
                  ((fame_merge_detail::source_clip(perm, b, num_clips) * T + t) * HW + pix) * 3;
    float* o = out + (b * 3 * T + t) * HW + pix;  // channel 0 of (b, t, pix)
    o[0] = lut[in[0]];
    o[plane] = lut[256 + in[1]];
    o[2 * plane] = lut[512 + in[2]];
  }
}

extern "C" __global__ void fame_merge_normalize_vec16(const unsigned char* __restrict__ clips,
                                                      const unsigned char* __restrict__ background,
                                                      const unsigned char* __restrict__ mask,
                                                      const long long* __restrict__ perm,
                                                      const float* __restrict__ mean,
                                                      const float* __restrict__ stdev,
                                                      float* __restrict__ out, int num_clips,
                                                      int T, int HW) {
  __shared__ float lut[3 * 256];
  fame_merge_detail::fill_lut(lut, mean, stdev);
  __syncthreads();
  const long long groups = HW / 16;
  const long long n = static_cast<long long>(num_clips) * T * groups;
  const long long stride = static_cast<long long>(blockDim.x) * gridDim.x;
  const long long frame_vecs = 3LL * HW / 16;
  const long long plane_vecs = static_cast<long long>(T) * HW / 4;  // float4 per channel plane
  const uint4* clips_v = reinterpret_cast<const uint4*>(clips);
  const uint4* background_v = reinterpret_cast<const uint4*>(background);
  const uint4* mask_v = reinterpret_cast<const uint4*>(mask);
  float4* out_v = reinterpret_cast<float4*>(out);
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const long long frame = i / groups;
    const long long g = i - frame * groups;
    const long long b = frame / T;
    const long long t = frame - b * T;
    const long long src = fame_merge_detail::source_clip(perm, b, num_clips);
    unsigned int sel[12], res[12];
    fame_merge_detail::expand_mask16(mask_v[b * groups + g], sel);
    fame_merge_detail::select16(clips_v, frame * frame_vecs + 3 * g, background_v,
                                (src * T + t) * frame_vecs + 3 * g, sel, res);
    float vals[48];  // vals[16 * c + p]: channel c of pixel p
#pragma unroll
    for (int k = 0; k < 48; ++k) {
      const unsigned int byte = (res[k >> 2] >> (8 * (k & 3))) & 0xFFu;
      vals[16 * (k % 3) + k / 3] = lut[256 * (k % 3) + byte];
    }
    // float4 index of (b, c=0, t, pixel 16 g)
    const long long base = (b * 3 * T + t) * (HW / 4) + 4 * g;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        out_v[base + c * plane_vecs + q] =
            make_float4(vals[16 * c + 4 * q], vals[16 * c + 4 * q + 1],
                        vals[16 * c + 4 * q + 2], vals[16 * c + 4 * q + 3]);
      }
    }
  }
}
