// fame_cpu.cpp: the FAME mask and merge on the CPU (backend "native", dali_fame/fame/native.py).
//
// The same arithmetic as the CUDA kernels, from the same source: this file includes
// motion_bins.cu and fame_mask.cu (as host C++ through cuda_host_emu.cuh) and calls their
// __device__ helpers (mean_hsv, the q() arguments, near_half, color_bin_exact, motion_value,
// minmax_den / minmax_value, the likelihood formulas). Only the execution model differs: one
// CPU thread per clip (clips b, b + n, ... on worker b of n) and loops laid out for the
// compiler's SIMD vectoriser (contiguous arrays, no calls inside the hot loops), instead of one
// CUDA thread per pixel. So the mask is bit-identical to fame_mask(backend="torch")
// (tests/fame/test_native.py compares them on odd sizes, every variant and both hue modes).
//
// Exactness on the CPU: compiled with -ffp-contract=off (no FMA contraction) and without
// -ffast-math, every float operation here is one IEEE operation rounded to nearest, in the
// order of the torch reference; vector and scalar instructions give the same results. Integer
// sums are exact. Order statistics come from std::nth_element on a copy: the k-th value of a
// row is a value of the row whichever algorithm finds it.
//
// Trigonometry: the bin needs cos / sin of the hue angle rounded to float32 from double
// precision (reference.py). The vectorised pass computes them with a branch-free double
// polynomial (sincos_poly, error ~1e-16, so the float32 rounding differs from the correctly
// rounded value by at most 1 ulp), then the kernels' near_half test sends every pixel whose q()
// argument lies within 1e-5 of a rounding edge to color_bin_exact (libm's double sincos) - the
// argument of motion_bins.cu's color_bin, whose premise (trig within 2.5 ulp) holds here.
//
// Layouts: clips uint8 (B, T, H, W, 3) RGB channels-last contiguous; motion float32 (B, H*W);
// bins int32 (B, H*W); mask uint8 (B, H*W) of 0 / 1; merged uint8 like clips; perm int64 (B,).
#include "motion_bins.cu"
#include "fame_mask.cu"

#include <algorithm>
#include <cstring>
#include <mutex>

namespace fame_cpu {

using fame_mask_detail::minmax_den;
using fame_mask_detail::minmax_value;

// sin and cos of x in [0, 2^20), branch-free (vectorisable), absolute error ~1e-16:
// Cody-Waite reduction by pi/2 (fdlibm's pio2_1 has 33 significant bits, so n * pio2_1 is exact
// for n < 2^20) and fdlibm's minimax polynomials on [-pi/4, pi/4].
inline void sincos_poly(double x, double* s_out, double* c_out) {
  const double n = __builtin_nearbyint(x * 6.36619772367581382433e-01);  // 2 / pi
  const double r = (x - n * 1.57079632673412561417e+00) - n * 6.07710050650619224932e-11;
  const double z = r * r;
  const double sp =
      r + r * z *
              (-1.66666666666666324348e-01 +
               z * (8.33333333332248946124e-03 +
                    z * (-1.98412698298579493134e-04 +
                         z * (2.75573137070700676789e-06 +
                              z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)))));
  const double cp =
      1.0 - 0.5 * z +
      z * z *
          (4.16666666666666019037e-02 +
           z * (-1.38888888888741095749e-03 +
                z * (2.48015872894767294178e-05 +
                     z * (-2.75573143513906633035e-07 +
                          z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)))));
  const long long q = static_cast<long long>(n);
  const bool swap = (q & 1) != 0;
  const double s = swap ? cp : sp;
  const double c = swap ? sp : cp;
  *s_out = (q & 2) ? -s : s;
  *c_out = ((q + 1) & 2) ? -c : c;
}

// Per-worker buffers, kept between calls (a call holds g_mutex): fresh multi-megabyte vectors
// per call would be page-faulted in again every time (glibc returns large blocks to the system).
struct Scratch {
  std::vector<unsigned short> csum16, dsum16;  // (3 HW) channel / |difference| sums, T <= 257
  std::vector<int> csum32, dsum32;             // the same for longer clips
  std::vector<float> s, v, theta, cs, sn, sel;  // (HW) HSV, trig, selection copy
  std::vector<float> pad, tmp;
  std::vector<int> hist;
  std::vector<unsigned char> keep;
};

std::mutex g_mutex;
std::vector<Scratch> g_scratch;

template <class F>
void parallel_clips(int num_clips, int num_threads, F&& fn) {
  const int n = std::max(1, std::min(num_threads, num_clips));
  if (static_cast<int>(g_scratch.size()) < n) g_scratch.resize(n);
  auto work = [&](int w) {
    for (int b = w; b < num_clips; b += n) fn(b, g_scratch[w]);
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < n; ++w) pool.emplace_back(work, w);
  work(0);
  for (auto& t : pool) t.join();
}

// Spec steps 1, 3, 4 for one clip: integer sums over the frames, then D and the bin per pixel.
template <class Acc>
void sums(const unsigned char* x, int T, int n3, std::vector<Acc>& csum, std::vector<Acc>& dsum) {
  csum.resize(n3);
  dsum.resize(n3);
  Acc* __restrict__ cs = csum.data();
  Acc* __restrict__ ds = dsum.data();
  for (int j = 0; j < n3; ++j) {
    cs[j] = x[j];
    ds[j] = 0;
  }
  for (int t = 1; t < T; ++t) {  // frame-major: contiguous rows, vectorised
    const unsigned char* __restrict__ cur = x + static_cast<long long>(t) * n3;
    const unsigned char* __restrict__ prev = cur - n3;
    for (int j = 0; j < n3; ++j) {
      const Acc a = cur[j], p = prev[j];
      ds[j] += a > p ? a - p : p - a;
      cs[j] += a;
    }
  }
}

template <class Acc>
void motion_bins_clip(const Acc* cs, const Acc* ds, int T, int hw, int legacy, Scratch& sc,
                      float* __restrict__ motion, int* __restrict__ bins) {
  for (int p = 0; p < hw; ++p) {
    motion[p] = fame_mb::motion_value(static_cast<int>(ds[3 * p]) + static_cast<int>(ds[3 * p + 1]) +
                                          static_cast<int>(ds[3 * p + 2]),
                                      T);
  }
  sc.s.resize(hw);
  sc.v.resize(hw);
  sc.theta.resize(hw);
  sc.cs.resize(hw);
  sc.sn.resize(hw);
  float* __restrict__ s = sc.s.data();
  float* __restrict__ v = sc.v.data();
  float* __restrict__ th = sc.theta.data();
  for (int p = 0; p < hw; ++p) {
    fame_mb::mean_hsv(cs[3 * p], cs[3 * p + 1], cs[3 * p + 2], T, legacy, &s[p], &v[p], &th[p]);
  }
  float* __restrict__ cf = sc.cs.data();
  float* __restrict__ sf = sc.sn.data();
  for (int p = 0; p < hw; ++p) {
    double sd, cd;
    sincos_poly(static_cast<double>(th[p]), &sd, &cd);
    cf[p] = static_cast<float>(cd);
    sf[p] = static_cast<float>(sd);
  }
#ifdef FAME_CPU_TRIG_SKEW_ULP
  // Tests only: move every float trig value k ulps (towards +inf for k > 0), the error bound
  // color_bin's argument allows, so that the near_half fallback must repair the bins it moves
  // (tests/fame/test_native.py; the polynomial itself is too accurate to reach the fallback).
  for (int p = 0; p < hw; ++p) {
    constexpr int k = FAME_CPU_TRIG_SKEW_ULP;
    for (int i = 0; i < (k > 0 ? k : -k); ++i) {
      cf[p] = nextafterf(cf[p], k > 0 ? HUGE_VALF : -HUGE_VALF);
      sf[p] = nextafterf(sf[p], k > 0 ? HUGE_VALF : -HUGE_VALF);
    }
  }
#endif
#ifdef FAME_CPU_NO_EXACT_FALLBACK
  constexpr bool fallback = false;  // tests only: shows that the skew above changes bins
#else
  constexpr bool fallback = true;
#endif
  for (int p = 0; p < hw; ++p) {
    const float ax = fame_mb::disk_q_arg(s[p], cf[p]);
    const float ay = fame_mb::disk_q_arg(s[p], sf[p]);
    const int qx = static_cast<int>(rintf(ax)) - 1;
    const int qy = static_cast<int>(rintf(ay)) - 1;
    const int bin = qx + 10 * qy + 100 * fame_mb::quantize10(v[p]);
    // near a rounding edge of q the exact (double libm) path decides; flagged as -1
    const bool edge =
        fallback && s[p] != 0.0f && (fame_mb::near_half(ax) || fame_mb::near_half(ay));
    bins[p] = edge ? -1 : bin;
  }
  for (int p = 0; p < hw; ++p) {
    if (bins[p] < 0) bins[p] = fame_mb::color_bin_exact(cs[3 * p], cs[3 * p + 1], cs[3 * p + 2], T, legacy);
  }
}

void motion_bins_one(const unsigned char* x, int T, int hw, int legacy, Scratch& sc, float* motion,
                     int* bins) {
  const int n3 = 3 * hw;
  if (255LL * T <= 65535) {
    sums(x, T, n3, sc.csum16, sc.dsum16);
    motion_bins_clip(sc.csum16.data(), sc.dsum16.data(), T, hw, legacy, sc, motion, bins);
  } else {
    sums(x, T, n3, sc.csum32, sc.dsum32);
    motion_bins_clip(sc.csum32.data(), sc.dsum32.data(), T, hw, legacy, sc, motion, bins);
  }
}

// Gaussian blur (ops.gaussian_blur: along W with reflect padding, then along H) of one clip's
// map in -> out, then out = minmax(out) (ops.minmax). taps[0..2 radius], radius < min(H, W).
void blur_minmax(const float* in, float* out, int H, int W, const float* taps, int radius,
                 Scratch& sc) {
  const int p = radius;
  sc.pad.resize(W + 2 * p);
  sc.tmp.resize(static_cast<size_t>(H) * W);
  float* __restrict__ pad = sc.pad.data();
  float* __restrict__ tmp = sc.tmp.data();
  for (int h = 0; h < H; ++h) {  // along W: one reflect-padded row at a time
    const float* row = in + static_cast<long long>(h) * W;
    std::memcpy(pad + p, row, sizeof(float) * W);
    for (int i = 1; i <= p; ++i) {
      pad[p - i] = row[i];
      pad[p + W - 1 + i] = row[W - 1 - i];
    }
    float* __restrict__ o = tmp + static_cast<long long>(h) * W;
    const float w0 = taps[p];
    for (int j = 0; j < W; ++j) o[j] = __fmul_rn(pad[p + j], w0);
    for (int i = 1; i <= p; ++i) {
      const float wi = taps[p + i];
      const float* __restrict__ l = pad + p - i;
      const float* __restrict__ r = pad + p + i;
      for (int j = 0; j < W; ++j) o[j] = __fadd_rn(o[j], __fmul_rn(__fadd_rn(l[j], r[j]), wi));
    }
  }
  for (int h = 0; h < H; ++h) {  // along H: whole rows, reflected row indices
    float* __restrict__ o = out + static_cast<long long>(h) * W;
    const float* __restrict__ c = tmp + static_cast<long long>(h) * W;
    const float w0 = taps[p];
    for (int j = 0; j < W; ++j) o[j] = __fmul_rn(c[j], w0);
    for (int i = 1; i <= p; ++i) {
      const float wi = taps[p + i];
      const float* __restrict__ l = tmp + static_cast<long long>(fame_mask_detail::reflect(h - i, H)) * W;
      const float* __restrict__ r = tmp + static_cast<long long>(fame_mask_detail::reflect(h + i, H)) * W;
      for (int j = 0; j < W; ++j) o[j] = __fadd_rn(o[j], __fmul_rn(__fadd_rn(l[j], r[j]), wi));
    }
  }
  const int hw = H * W;
  float lo = out[0], hi = out[0];
  for (int j = 1; j < hw; ++j) {
    lo = out[j] < lo ? out[j] : lo;
    hi = out[j] > hi ? out[j] : hi;
  }
  // the kernels' minmax_den reads the order-preserving keys of lo / hi
  const unsigned int stats[2] = {fame_mask_detail::float_key(lo), fame_mask_detail::float_key(hi)};
  float lo_f;
  const float den = minmax_den(stats, &lo_f);
  for (int j = 0; j < hw; ++j) out[j] = minmax_value(out[j], lo_f, den);
}

// The rank-th smallest (1-based) value of v[0..n) (a copy is partitioned in sel).
float kth_smallest(const float* v, int n, int rank, std::vector<float>& sel) {
  sel.assign(v, v + n);
  std::nth_element(sel.begin(), sel.begin() + (rank - 1), sel.end());
  return sel[rank - 1];
}

// ops.select_top: exactly k ones, every pixel above the k-th largest score t, then the pixels
// equal to t in row-major order while slots remain. 0 < k < n.
void select_top(const float* score, int n, int k, Scratch& sc, unsigned char* mask) {
  const float t = kth_smallest(score, n, n - k + 1, sc.sel);
  int above = 0;
  for (int i = 0; i < n; ++i) above += score[i] > t;
  int slots = k - above;
  for (int i = 0; i < n; ++i) {
    const float x = score[i];
    unsigned char m = x > t;
    if (x == t) {
      m = slots > 0;
      slots -= m;
    }
    mask[i] = m;
  }
}

// Spec steps 5-7 before the blur: thresholds, tie-weighted colour histograms, pF, pB and the soft
// mask M (soft[i] = pF / (pF + pB) of pixel i's bin), as fame_seed_hist_soft.
void seed_hist_soft(const float* seed, const int* bins, int n, int k_fg, int k_bg, float den_fg,
                    float den_bg, Scratch& sc, float* soft) {
  // thr_fg = the (n - kF + 1)-th smallest, thr_bg = the kB-th smallest: one copy, and when
  // kB <= n - kF the second selection only searches the part left of the first one
  float tf = fame_mask_detail::pos_inf(), tb = -fame_mask_detail::pos_inf();
  int left = n;  // sel[0..left) holds the kB smallest values (all values before a selection)
  if (k_fg > 0) {
    tf = kth_smallest(seed, n, n - k_fg + 1, sc.sel);
    if (k_bg <= n - k_fg) left = n - k_fg;
  } else {
    sc.sel.assign(seed, seed + n);
  }
  if (k_bg > 0) {
    std::nth_element(sc.sel.begin(), sc.sel.begin() + (k_bg - 1), sc.sel.begin() + left);
    tb = sc.sel[k_bg - 1];
  }
  sc.hist.assign(4 * FAME_NUM_BINS, 0);
  int* h = sc.hist.data();
  int tot[4] = {0, 0, 0, 0};
  for (int i = 0; i < n; ++i) {
    const float s = seed[i];
    const int bin = bins[i];
    const int cf = s > tf ? 0 : (s == tf ? 1 : -1);
    const int cb = s < tb ? 2 : (s == tb ? 3 : -1);
    if (cf >= 0) {
      ++h[cf * FAME_NUM_BINS + bin];
      ++tot[cf];
    }
    if (cb >= 0) {
      ++h[cb * FAME_NUM_BINS + bin];
      ++tot[cb];
    }
  }
  float ratio[FAME_NUM_BINS];
  fame_mask_detail::soft_table(h, tot, k_fg, k_bg, den_fg, den_bg, ratio);
  for (int i = 0; i < n; ++i) soft[i] = ratio[bins[i]];
}

// d = f where keep == 0xFF else g, as merge_ref's g ^ ((f ^ g) & keep). A function of its own:
// unsigned char stores may alias any object, so inside the caller's loop the compiler could not
// prove that the length stays fixed, and would not vectorise.
void select_bytes(const unsigned char* __restrict__ f, const unsigned char* __restrict__ g,
                  const unsigned char* __restrict__ keep, long long n,
                  unsigned char* __restrict__ d) {
  for (long long j = 0; j < n; ++j) d[j] = g[j] ^ ((f[j] ^ g[j]) & keep[j]);
}

}  // namespace fame_cpu

extern "C" {

// Motion D and colour bins of a batch (reference.motion_and_bins_ref).
int fame_cpu_motion_bins(const unsigned char* clips, int B, int T, int H, int W, int legacy_hue,
                         float* motion, int* bins, int num_threads) {
  using namespace fame_cpu;
  std::lock_guard<std::mutex> lock(g_mutex);
  const long long hw = static_cast<long long>(H) * W;
  parallel_clips(B, num_threads, [&](int b, Scratch& sc) {
    motion_bins_one(clips + static_cast<long long>(b) * T * hw * 3, T, static_cast<int>(hw),
                    legacy_hue, sc, motion + b * hw, bins + b * hw);
  });
  return 0;
}

// The FAME mask of a batch (api.fame_mask, variants "fame" and "seed"): uint8 (B, H*W) 0 / 1,
// exactly k_mask ones per clip (0 <= k_mask <= H*W). motion, bins, seed, soft: float32 / int32
// (B, H*W) outputs of the intermediate stages (seed: the min-max of the blurred motion; soft:
// the soft mask M before its blur, written for variant "fame" only).
int fame_cpu_mask(const unsigned char* clips, int B, int T, int H, int W, int legacy_hue,
                  int seed_variant, int k_fg, int k_bg, float den_fg, float den_bg, int k_mask,
                  const float* taps, int radius, float* motion, int* bins, float* seed, float* soft,
                  unsigned char* mask, int num_threads) {
  using namespace fame_cpu;
  std::lock_guard<std::mutex> lock(g_mutex);
  const long long hw = static_cast<long long>(H) * W;
  const int n = static_cast<int>(hw);
  parallel_clips(B, num_threads, [&](int b, Scratch& sc) {
    const long long off = b * hw;
    motion_bins_one(clips + off * T * 3, T, n, legacy_hue, sc, motion + off, bins + off);
    blur_minmax(motion + off, seed + off, H, W, taps, radius, sc);
    const float* score = seed + off;
    if (!seed_variant) {
      seed_hist_soft(seed + off, bins + off, n, k_fg, k_bg, den_fg, den_bg, sc, soft + off);
      // the blurred soft mask's min-max lands in motion (no longer needed) as the score
      blur_minmax(soft + off, motion + off, H, W, taps, radius, sc);
      score = motion + off;
    }
    unsigned char* m = mask + off;
    if (k_mask <= 0) {
      std::memset(m, 0, n);
    } else if (k_mask >= n) {
      std::memset(m, 1, n);
    } else {
      select_top(score, n, k_mask, sc, m);
    }
  });
  return 0;
}

// merge_ref: out[b] = clips[b] where mask[b], background[perm[b]] elsewhere, every frame and
// channel; background is clips itself for the inter-video merge (both are only read).
int fame_cpu_merge(const unsigned char* clips, const unsigned char* background,
                   const unsigned char* mask, const long long* perm, int B, int T, int H, int W,
                   unsigned char* out, int num_threads) {
  using namespace fame_cpu;
  std::lock_guard<std::mutex> lock(g_mutex);
  const long long hw = static_cast<long long>(H) * W;
  const long long n3 = 3 * hw;
  parallel_clips(B, num_threads, [&](int b, Scratch& sc) {
    sc.keep.resize(n3);
    unsigned char* __restrict__ keep = sc.keep.data();
    const unsigned char* m = mask + b * hw;
    for (long long p = 0; p < hw; ++p) {
      const unsigned char k = m[p] ? 0xFF : 0;
      keep[3 * p] = keep[3 * p + 1] = keep[3 * p + 2] = k;
    }
    const unsigned char* fg = clips + b * T * n3;
    const unsigned char* bg = background + perm[b] * T * n3;
    unsigned char* o = out + b * T * n3;
    for (int t = 0; t < T; ++t) select_bytes(fg + t * n3, bg + t * n3, keep, n3, o + t * n3);
  });
  return 0;
}

}  // extern "C"
