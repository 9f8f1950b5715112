"""Torch reference of the four FAME intermediates that the CUDA kernels reproduce.

This file is the executable contract of ``kernels/*.cu`` (see ``dali_fame/fame/cuda.py``): each
``<name>_ref`` here has a ``<name>_cuda`` twin with the same signature and the same outputs.
Integer outputs must match exactly, float outputs closely. Everything is device-agnostic torch
(CPU or CUDA tensors). The spec is ``shared/design/fame-spec.md`` sections 1-2; step numbers
below refer to its section 1.

Exact float32 arithmetic (so that a kernel can match the integer outputs bit for bit; every
operation is one IEEE float32 operation rounded to nearest, no FMA contraction):

* motion (step 1): ``D = float(sum_{t>=1} sum_c |X[t,c] - X[t-1,c]|) / float(255 * (T - 1))``.
  The sum is an exact integer, so D is one correctly rounded division.
* mean frame (step 3): ``Xbar_c = float(sum_t X[t,c]) / float(255 * T)``, likewise exact.
* HSV (step 4), with r, g, b = Xbar:
  ``v = max(r, g, b)``; ``mn = min(r, g, b)``; ``delta = v - mn``; ``s = delta / (v + 1e-8f)``;
  ``dl = delta == 0 ? 1 : delta``;
  ``h6 = (g - b) / dl`` if r is the max, else ``2 + (b - r) / dl`` if g is, else
  ``4 + (r - g) / dl`` (the first of r, g, b wins a tie for the max);
  ``a = h6 / 6``; ``frac = a < 0 ? a + 1 : a`` (== torch.remainder(a, 1));
  ``theta = 6.2831855f * frac`` (float32(2*pi)); legacy hue: ``theta = (theta * 2) * 3.1415927f``
  (float32(pi); the released code's ``h * 2 * np.pi`` evaluated left to right).
  ``c = (float)cos((double)theta)``, ``sn = (float)sin((double)theta)``: the trigonometry is done
  in float64 and rounded once, so that the result does not depend on a libm's float32 accuracy.
  ``px = (s * c + 1) / 2``; ``py = (s * sn + 1) / 2``;
  ``q(u) = rint(u * 9 + 1) - 1`` (rint: round half to even, like torch.round);
  ``bin = q(px) + 10 * q(py) + 100 * q(v)``, an int32 in 0..999.
"""

from __future__ import annotations

import math
import threading

import torch

__all__ = [
    "NUM_BINS",
    "PI_F32",
    "TWO_PI_F32",
    "check_clips",
    "check_merge_inputs",
    "color_histograms_ref",
    "device_scalar",
    "merge_normalize_ref",
    "merge_ref",
    "motion_and_bins_ref",
    "permuted",
    "scratch",
    "true_div",
    "true_div_",
]

#: colour bins: 10 levels each of the hue-disk x, hue-disk y and value (spec step 4)
NUM_BINS = 1000
#: float32(2*pi) and float32(pi), the constants torch uses when a float32 tensor is multiplied by
#: the Python floats 2*math.pi and math.pi
TWO_PI_F32 = float(torch.tensor(2.0 * math.pi, dtype=torch.float32))
PI_F32 = float(torch.tensor(math.pi, dtype=torch.float32))


def check_clips(clips: torch.Tensor, *, name: str = "clips", allow_float: bool = False) -> None:
    """Raise ValueError unless ``clips`` is a (B, T, H, W, 3) clip batch with T >= 2.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB, channels-last (DALI's layout); floating point in
            [0, 1] too when ``allow_float`` (the range is checked by the public API).
        name: how the error message calls the tensor.
        allow_float: accept floating dtypes besides uint8.
    """
    if not isinstance(clips, torch.Tensor):
        raise ValueError(  # noqa: TRY004 - one error type for every bad input (team rule)
            f"dali_fame.fame: {name} must be a torch.Tensor, got {type(clips).__name__}"
        )
    if clips.dim() != 5 or clips.shape[-1] != 3:
        raise ValueError(
            f"dali_fame.fame: {name} must have layout (B, T, H, W, 3) RGB channels-last, "
            f"got shape {tuple(clips.shape)} (a (B, 3, T, H, W) model tensor is not accepted)"
        )
    ok_dtype = clips.dtype == torch.uint8 or (allow_float and clips.dtype.is_floating_point)
    if not ok_dtype:
        want = "uint8 or floating point in [0, 1]" if allow_float else "uint8"
        raise ValueError(f"dali_fame.fame: {name} must be {want}, got {clips.dtype}")
    b, t, h, w, _ = clips.shape
    if t < 2:
        raise ValueError(
            f"dali_fame.fame: {name} needs T >= 2 frames for the motion map, got T = {t}"
        )
    if b < 1 or h < 1 or w < 1:
        raise ValueError(f"dali_fame.fame: {name} is empty, shape {tuple(clips.shape)}")


def _check_contiguous(x: torch.Tensor, name: str) -> None:
    # The CUDA launchers read raw pointers; the reference keeps the same contract.
    if not x.is_contiguous():
        raise ValueError(f"dali_fame.fame: {name} must be contiguous (call .contiguous() first)")


_DEVICE_SCALARS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def device_scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim tensor holding ``value`` in ``like``'s dtype on ``like``'s device, built once.

    A fresh ``torch.tensor(value, device=cuda)`` per call is a pageable host-to-device copy that
    waits for the GPU; the constants here are created once per (value, dtype, device) and reused
    (read only) by every later call.
    """
    key = (float(value), like.dtype, like.device)
    scalar = _DEVICE_SCALARS.get(key)
    if scalar is None:
        scalar = torch.tensor(float(value), dtype=like.dtype).to(like.device)
        _DEVICE_SCALARS[key] = scalar
    return scalar


_SCRATCH = threading.local()


def scratch(
    name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialised buffer for an intermediate that never leaves the FAME functions, kept
    per thread and per ``name`` and reused while the shape, dtype and device stay the same.

    Why: on the CPU, glibc returns large freed blocks to the system and hands out fresh pages
    for the next allocation, so each call's multi-megabyte temporaries were page-faulted in
    again (about 7800 faults, a third of the mask's time at 8 x 16 x 224 x 224). Per thread, so
    that concurrent callers never share a buffer; one buffer per name (the last shape used).
    Never return one of these to a caller.
    """
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    buf = cache.get(name)
    if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
        buf = torch.empty(shape, dtype=dtype, device=device)
        cache[name] = buf
    return buf


def true_div(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """x / divisor as an IEEE division on every device.

    torch's CUDA kernels compute ``tensor / python_scalar`` (and ``tensor / cpu_scalar_tensor``)
    as ``tensor * (1 / scalar)``, which is not always the correctly rounded quotient; a divisor
    tensor on x's device keeps the true division (the CPU always divides). The divisor tensor is
    cached per device (:func:`device_scalar`): no host-to-device copy per call.
    """
    return x / device_scalar(divisor, x)


def true_div_(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """In-place :func:`true_div`: ``x /= divisor`` as an IEEE division; returns x."""
    return x.div_(device_scalar(divisor, x))


def _q10_float(u: torch.Tensor) -> torch.Tensor:
    """rint(u * 9 + 1) of float32 u in [0, 1], in place: the level plus one, as an exact float."""
    return u.mul_(9.0).add_(1.0).round_()


def _bins_from_mean(
    r: torch.Tensor, g: torch.Tensor, b: torch.Tensor, *, legacy_hue: bool
) -> torch.Tensor:
    """Colour bin of each pixel of the mean frame (spec step 4; exact ops in the module doc).

    Args:
        r, g, b: float32 (...) mean-frame channels in [0, 1], same shape, contiguous.
        legacy_hue: multiply the hue angle by 2*pi once more, as the released code does.

    Returns:
        int32 (...) in 0..999.
    """
    def buf(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return scratch(f"bins.{name}", tuple(r.shape), dtype, r.device)

    v = torch.maximum(r, g, out=buf("v"))
    torch.maximum(v, b, out=v)
    delta = torch.minimum(r, g, out=buf("delta"))
    torch.minimum(delta, b, out=delta)
    torch.sub(v, delta, out=delta)
    s = torch.add(v, 1e-8, out=buf("s"))
    torch.div(delta, s, out=s)
    # Selections are exact arithmetic with float 0/1 masks (x * 1, x * 0 = +-0, x + 0): on the
    # CPU torch.where and any bool tensor cost ~15-30x an add. A comparison written into a float
    # tensor (out=) holds 1.0 / 0.0 directly.
    dl = torch.eq(delta, 0.0, out=buf("dl")).add_(delta)  # delta, or 1 where delta == 0
    r_max = torch.eq(r, v, out=buf("r_max"))  # the first of r, g, b wins a tie for the max
    g_max = torch.eq(g, v, out=buf("g_max"))
    torch.gt(g_max, r_max, out=g_max)  # g is the max and r is not
    not_r = torch.sub(1.0, r_max, out=buf("not_r"))
    b_max = torch.sub(not_r, g_max, out=buf("b_max"))
    # h6 = (g - b) / dl, 2 + (b - r) / dl or 4 + (r - g) / dl: the selected numerator is exact
    # (the two others contribute +-0), so num / dl + offset rounds exactly like the spec's
    # per-case formula (only the sign of a zero h6 can differ, which theta = 0 absorbs).
    term = buf("term")
    num = torch.sub(g, b, out=buf("num")).mul_(r_max)
    num += torch.sub(b, r, out=term).mul_(g_max)
    num += torch.sub(r, g, out=term).mul_(b_max)
    offset = not_r.add_(b_max).mul_(2.0)  # 2 * g_max + 4 * b_max
    a = true_div_(num.div_(dl).add_(offset), 6.0)  # h6 / 6
    frac = torch.lt(a, 0.0, out=dl).add_(a)  # a + 1 where a < 0: torch.remainder(a, 1)
    theta = frac.mul_(TWO_PI_F32)
    if legacy_hue:
        theta = theta.mul_(2.0).mul_(PI_F32)
    theta64 = buf("theta64", torch.float64).copy_(theta)
    trig = buf("trig", torch.float64)
    px = buf("px").copy_(torch.cos(theta64, out=trig)).mul_(s).add_(1.0).div_(2.0)
    py = buf("py").copy_(torch.sin(theta64, out=trig)).mul_(s).add_(1.0).div_(2.0)
    # q(px) + 10 q(py) + 100 q(v) with q = rint(u * 9 + 1) - 1: small integers, exact in float32
    # in any order; Horner form (q(v) * 10 + q(py)) * 10 + q(px).
    out = _q10_float(v).mul_(10.0).add_(_q10_float(py)).mul_(10.0).add_(_q10_float(px))
    return out.sub_(111.0).to(torch.int32)


def motion_and_bins_ref(
    clips: torch.Tensor, *, legacy_hue: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion map D (spec step 1) and the colour bin of the mean frame (steps 3-4).

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous, T >= 2.
        legacy_hue: reproduce the released code's doubly scaled hue angle (spec step 4).

    Returns:
        motion: float32 (B, H, W), D on the [0, 1] scale (0..3).
        bins: int32 (B, H, W) in 0..999.
    """
    check_clips(clips)
    _check_contiguous(clips, "clips")
    bsz, t, h, w, _ = clips.shape
    n = h * w * 3
    # Integer sums are exact. Per pixel and channel, |a - b| = 2 max(a, b) - a - b, so
    #   sum_t |X[t] - X[t-1]| = 2 (sum_t max(X[t], X[t-1]) - sum_t X[t]) + X[0] + X[T-1]:
    # the motion sum costs one max and one reduction on top of the mean frame's sum. Widened to
    # int16 once per clip (half the traffic of int32; torch's uint8 -> int16 reduction is several
    # times slower than the widening copy plus an int16 reduction) while the channel sum
    # 3 * 255 * T fits; one clip at a time, so the (T, N) buffers are reused and stay in cache.
    acc = torch.int16 if 3 * 255 * t <= torch.iinfo(torch.int16).max else torch.int32
    dev = clips.device
    wide = scratch("motion.wide", (t, n), acc, dev)
    pair_max = scratch("motion.pair_max", (t - 1, n), acc, dev)
    frame_sum = scratch("motion.frame_sum", (bsz, n), acc, dev)
    motion_sum = scratch("motion.motion_sum", (bsz, n), acc, dev)
    for i in range(bsz):
        wide.copy_(clips[i].view(t, n))
        torch.sum(wide, dim=0, out=frame_sum[i])
        torch.maximum(wide[1:], wide[:-1], out=pair_max)
        torch.sum(pair_max, dim=0, out=motion_sum[i])
    motion_sum.sub_(frame_sum).mul_(2)
    motion_sum += clips[:, 0].reshape(bsz, n)
    motion_sum += clips[:, t - 1].reshape(bsz, n)
    # Channel sum in integers, then one conversion (exact below 2**24) and one division.
    per_channel = motion_sum.view(bsz, h * w, 3)
    motion = torch.add(per_channel[..., 0], per_channel[..., 1])
    motion += per_channel[..., 2]
    motion = true_div_(motion.float(), float(255 * (t - 1))).view(bsz, h, w)
    # Planar (3, B, H*W) so that r, g and b are contiguous for the elementwise HSV maths (a copy
    # into a planar buffer: .to(memory_format=...) of the permuted view is ~10x slower).
    planes = scratch("motion.planes", (3, bsz, h * w), torch.float32, dev)
    planes.copy_(frame_sum.view(bsz, h * w, 3).permute(2, 0, 1))
    r, g, b = true_div_(planes, float(255 * t)).unbind(0)
    bins = _bins_from_mean(r, g, b, legacy_hue=legacy_hue).view(bsz, h, w)
    return motion, bins


def color_histograms_ref(
    bins: torch.Tensor, seed: torch.Tensor, thr_fg: torch.Tensor, thr_bg: torch.Tensor
) -> torch.Tensor:
    """Per-clip colour-bin counts of the foreground / background seed pixels (spec steps 5-6).

    The fractional tie weights are formed from these integer counts afterwards (in torch), so that
    the kernel stays integer-exact.

    Args:
        bins: int32 (B, H, W) in 0..999.
        seed: float32 (B, H, W), the seed map S.
        thr_fg: float32 (B,), the kF-th largest seed value of each clip (+inf when kF = 0).
        thr_bg: float32 (B,), the kB-th smallest seed value of each clip (-inf when kB = 0).

    Returns:
        int32 (B, 4, 1000): counts per bin of the pixels with [0] seed > thr_fg,
        [1] seed == thr_fg, [2] seed < thr_bg, [3] seed == thr_bg.
    """
    if bins.dtype != torch.int32 or bins.dim() != 3:
        raise ValueError(
            f"dali_fame.fame: bins must be int32 (B, H, W), got {bins.dtype} {tuple(bins.shape)}"
        )
    if seed.dtype != torch.float32 or seed.shape != bins.shape:
        raise ValueError(
            f"dali_fame.fame: seed must be float32 of the shape of bins "
            f"{tuple(bins.shape)}, got {seed.dtype} {tuple(seed.shape)}"
        )
    bsz = bins.shape[0]
    for name, thr in (("thr_fg", thr_fg), ("thr_bg", thr_bg)):
        if thr.dtype != torch.float32 or thr.shape != (bsz,):
            raise ValueError(
                f"dali_fame.fame: {name} must be float32 ({bsz},), got "
                f"{thr.dtype} {tuple(thr.shape)}"
            )
    s_flat = seed.reshape(bsz, -1)
    fg_t, bg_t = thr_fg[:, None], thr_bg[:, None]
    # Per pixel, a category c in 0..2 for each set: foreground c = (seed > thr_fg) +
    # (seed >= thr_fg), 2 above, 1 equal; background c = (seed < thr_bg) + (seed <= thr_bg),
    # 2 below, 1 equal; 0 (also for a NaN seed) counts nowhere. The histogram slot of a pixel is
    # (clip * 6 + set * 3 + c) * 1000 + bin. The category arithmetic runs on float 0/1 maps (on
    # the CPU bool maps and mixed-dtype arithmetic cost several times more), exact small
    # integers, converted once to int32.
    cat = scratch("hist.cat", (2, *s_flat.shape), torch.float32, seed.device)
    tie = scratch("hist.tie", (2, *s_flat.shape), torch.float32, seed.device)
    torch.gt(s_flat, fg_t, out=cat[0])
    torch.ge(s_flat, fg_t, out=tie[0])
    torch.lt(s_flat, bg_t, out=cat[1])
    torch.le(s_flat, bg_t, out=tie[1])
    cat += tie
    cat[1] += 3.0
    slots = scratch("hist.slots", tuple(cat.shape), torch.int32, cat.device)
    slots.copy_(cat.mul_(NUM_BINS))
    clip_base = torch.arange(0, bsz * 6 * NUM_BINS, 6 * NUM_BINS, dtype=torch.int32,
                             device=bins.device)
    slots += bins.reshape(bsz, -1) + clip_base[:, None]
    size = bsz * 6 * NUM_BINS
    if slots.device.type == "cpu":
        counts = torch.bincount(slots.view(-1), minlength=size)  # 2x index_add_ on the CPU
    else:
        # torch.bincount sizes its output from the data (a host read of the maximum, i.e. a
        # synchronisation on a GPU); adding into a buffer of the known size does not wait.
        # Integer additions are exact in any order, so the counts are those of bincount.
        ones = torch.ones(1, dtype=torch.int32, device=slots.device).expand(slots.numel())
        counts = torch.zeros(size, dtype=torch.int32, device=slots.device)
        counts.index_add_(0, slots.view(-1), ones)
    counts = counts.view(bsz, 6, NUM_BINS)
    # slot 2: seed > thr_fg, 1: == thr_fg, 5: seed < thr_bg, 4: == thr_bg
    return counts[:, [2, 1, 5, 4]].to(torch.int32)


def check_background(background: torch.Tensor, clips: torch.Tensor) -> None:
    """Raise ValueError unless ``background`` (intra-video background sources) has the clips'
    shape, dtype and device."""
    if (
        not isinstance(background, torch.Tensor)
        or background.shape != clips.shape
        or background.dtype != clips.dtype
        or background.device != clips.device
    ):
        raise ValueError(
            "dali_fame.fame: background clips must match the clips' shape, dtype and device "
            f"{tuple(clips.shape)} {clips.dtype} {clips.device}"
        )


def check_merge_inputs(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raise ValueError unless clips (contiguous clip batch), mask (bool / uint8 (B, H, W)), perm
    (int64 (B,)) and background (None, or a contiguous batch like clips) fit together and share a
    device (the merges' shared contract). Returns the background sources: ``background``, or
    ``clips`` itself when it is None (inter-video merging)."""
    check_clips(clips)
    _check_contiguous(clips, "clips")
    if background is not None:
        check_background(background, clips)
        _check_contiguous(background, "background")
    bsz, _, h, w, _ = clips.shape
    if mask.shape != (bsz, h, w) or mask.dtype not in (torch.bool, torch.uint8):
        raise ValueError(
            f"dali_fame.fame: mask must be bool or uint8 ({bsz}, {h}, {w}), got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    if perm.shape != (bsz,) or perm.dtype != torch.int64:
        raise ValueError(
            f"dali_fame.fame: perm must be int64 ({bsz},), got {perm.dtype} {tuple(perm.shape)}"
        )
    if mask.device != clips.device or perm.device != clips.device:
        raise ValueError("dali_fame.fame: clips, mask and perm must be on the same device")
    return clips if background is None else background


def merge_ref(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Foreground-background merge (spec section 2): a per-pixel select, exact in uint8.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous.
        mask: bool or uint8 (B, H, W); nonzero = foreground (kept from the clip itself).
        perm: int64 (B,), a permutation of 0..B-1: clip b takes its background from perm[b].
        background: None (inter-video: the backgrounds are ``clips``) or uint8
            (B, T, H, W, 3) contiguous like clips (intra-video: a third clip of each video).

    Returns:
        uint8 (B, T, H, W, 3): out[b] = clips[b] where mask[b], background[perm[b]] elsewhere,
        for every frame and channel.
    """
    source = check_merge_inputs(clips, mask, perm, background)
    t = clips.shape[1]
    out = torch.empty_like(clips)
    keep = byte_mask(mask)  # (B, 1, H*W*3)
    # One clip at a time: reads two clips and writes one.
    for b, bg in enumerate(permuted(source, perm)):
        select_bytes(clips[b].view(t, -1), bg.view(t, -1), keep[b], out=out[b].view(t, -1))
    return out


def permuted(source: torch.Tensor, perm: torch.Tensor) -> list[torch.Tensor]:
    """``[source[perm[b]] for b in range(B)]`` without reading a device ``perm`` on the host.

    Args:
        source: (B, ...) on perm's device.
        perm: int64 (B,).

    Returns:
        B tensors of shape ``source.shape[1:]``: views into ``source`` when perm is on the CPU
        (its values are free to read there: no permuted batch copy), else the slices of one
        device-side gather (reading a GPU perm's values would wait for the GPU).
    """
    if perm.device.type == "cpu":
        return [source[s] for s in perm.tolist()]
    return list(source.index_select(0, perm).unbind(0))


def byte_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool/uint8 (B, H, W) -> uint8 (B, 1, H*W*3): 0xFF where mask, 0 elsewhere, per channel."""
    bsz, h, w = mask.shape
    # a bool tensor's bytes are 0 / 1: read them as uint8 (no conversion pass)
    ones = (mask if mask.dtype == torch.bool else mask != 0).view(torch.uint8)
    return (ones * 255)[..., None].expand(bsz, h, w, 3).reshape(bsz, 1, h * w * 3)


def select_bytes(
    fg: torch.Tensor, bg: torch.Tensor, keep: torch.Tensor, *, out: torch.Tensor
) -> torch.Tensor:
    """out = fg where keep == 0xFF else bg, as bg ^ ((fg ^ bg) & keep): exact for uint8, and on
    the CPU several times faster than torch.where, whose uint8 select does not vectorise."""
    torch.bitwise_xor(fg, bg, out=out)
    out.bitwise_and_(keep)
    return out.bitwise_xor_(bg)


def merge_normalize_ref(
    clips: torch.Tensor,
    mask: torch.Tensor,
    perm: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge (as :func:`merge_ref`) fused with normalisation into the model's layout.

    Args:
        clips: uint8 (B, T, H, W, 3) RGB channels-last, contiguous.
        mask: bool or uint8 (B, H, W).
        perm: int64 (B,).
        mean: float32 (3,) per-channel mean on the [0, 1] scale.
        std: float32 (3,) per-channel standard deviation on the [0, 1] scale.
        background: as :func:`merge_ref`.

    Returns:
        float32 (B, 3, T, H, W) contiguous: ``(x / 255 - mean[c]) / std[c]`` of the merged clip,
        in float32 in exactly that order of operations.
    """
    source = check_merge_inputs(clips, mask, perm, background)
    for name, v in (("mean", mean), ("std", std)):
        if v.shape != (3,) or v.dtype != torch.float32:
            raise ValueError(
                f"dali_fame.fame: {name} must be float32 (3,), got {v.dtype} {tuple(v.shape)}"
            )
    bsz, t, h, w, _ = clips.shape
    keep = byte_mask(mask)
    mean_c = mean.to(clips.device)[:, None, None, None]
    std_c = std.to(clips.device)[:, None, None, None]
    out = torch.empty(bsz, 3, t, h, w, dtype=torch.float32, device=clips.device)
    d255 = device_scalar(255.0, out)  # a tensor divisor: true division on CUDA
    merged = torch.empty_like(clips[0])
    for b, bg in enumerate(permuted(source, perm)):
        select_bytes(clips[b].view(t, -1), bg.view(t, -1), keep[b], out=merged.view(t, -1))
        # one pass converts and transposes (T, H, W, 3) uint8 -> (3, T, H, W) float32
        out[b].copy_(merged.permute(3, 0, 1, 2))
        out[b].div_(d255).sub_(mean_c).div_(std_c)
    return out
