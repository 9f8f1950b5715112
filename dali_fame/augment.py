"""Clip-consistent batched augmentations (fame-spec section 5), on the batch's device.

:class:`ClipAugment` takes the loaders' (and FAME's) uint8 clips ``(B, T, H, W, 3)`` and
returns the model input, float32 ``(B, 3, T, H, W)`` normalised with the Kinetics-400 mean/std.
Per clip, in this order (fame-spec section 5 and the released FAME code: grayscale before the
jitter; the crop and flip already happened in the loader):

1. grayscale with p = 0.2 (ITU-R 601 luma, 3 channels kept);
2. colour jitter with p = 0.8: brightness, contrast, saturation (factors ~ U(0.6, 1.4)) and
   hue (shift ~ U(-0.1, 0.1) turns), applied in a random order drawn per clip (torchvision's
   ``ColorJitter`` semantics, one permutation per clip instead of per image); on a clip made
   gray in step 1 only brightness and contrast still change it (and clamping makes the order
   matter: gray-then-brighten is not brighten-then-gray for saturated colours);
3. Gaussian blur with p = 0.5, sigma ~ U(0.1, 2.0) per clip, kernel ``2 * floor(11.5 * S / 224)
   + 1`` for an ``S x S`` clip (23 at 224, 11 at 112), reflect padding;
4. normalisation ``(x - mean) / std``.

Every random draw is made once per clip (so all frames of a clip get the identical transform),
from a ``torch.Generator`` on the CPU that the caller passes: the parameters are then moved to the
clips' device in one packed, pinned, non-blocking copy, so a seeded run gives the same augmentations on CPU and GPU. The ops follow
torchvision's ``transforms.v2.functional`` definitions (contrast uses each frame's mean luma, as
the image op applied frame by frame would).

Why not kornia's ``VideoSequential`` (the paper's choice)? On this project's 2-core CPU machine
``benchmarks/bench_augment.py`` measured the whole augmentation at the spec's probabilities
2.3x faster than kornia 0.9 (8 clips x 16 x 112 x 112: 69 vs 159 ms) and 1.4x faster than
torchvision's image ops clip by clip (:func:`torchvision_reference`), in one run
(benchmarks/results/augment.md). It also draws from a passed generator (kornia uses torch's
global RNG) and matches torchvision's image ops applied
frame by frame (tests/test_augment.py). Vectorised: each jitter op runs once per slot on the
sub-batch of clips that drew it there (index_select / in-place index_copy_), the blur is one
grouped separable convolution with a per-clip kernel.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

#: Kinetics-400 statistics (fame-spec section 5), RGB order, on the [0, 1] scale
K400_MEAN: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)
K400_STD: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)

# torchvision's rgb_to_grayscale weights (ITU-R 601 luma, 0.299 rounded as torchvision does)
_LUMA = (0.2989, 0.587, 0.114)


def blur_kernel_size(crop: int) -> int:
    """Odd Gaussian-blur kernel for an ``crop x crop`` clip: 23 at 224 scaled with the crop."""
    return 2 * int(11.5 * crop / 224) + 1


@dataclasses.dataclass
class AugmentParams:
    """Per-clip draws (all CPU tensors, length B) made by :meth:`ClipAugment.draw`.

    Attributes:
        jitter: bool, colour jitter applied.
        brightness, contrast, saturation: float32 factors.
        hue: float32 shift in turns (fractions of the colour circle).
        order: int64 ``(B, 4)`` permutation of (brightness, contrast, saturation, hue).
        gray: bool, grayscale applied.
        blur: bool, blur applied.
        sigma: float32 blur sigma in pixels.
    """

    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, T, H, W) -> (N, 1, T, H, W) grayscale."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _per_clip(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x float (N, 3, T, H, W) in [0, 1], factor (N,): ``clamp(x * f)``."""
    return (x * _per_clip(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each frame's mean luma: ``clamp(f * x + (1 - f) * mean)``."""
    mean = _luma(x).mean(dim=(-2, -1), keepdim=True)
    f = _per_clip(factor)
    return (f * x + (1.0 - f) * mean).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image: ``clamp(f * x + (1 - f) * luma)``."""
    f = _per_clip(factor)
    return (f * x + (1.0 - f) * _luma(x)).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns, as torchvision's RGB -> HSV -> RGB round trip.

    Works in sextants (hue * 6) and uses ``v * s == max - min``, which avoids the HSV
    intermediate and the 0/0 of black pixels: ~3x fewer elementwise passes than the textbook
    round trip, same values (float rounding).
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)  # = v * s
    d = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(
        maxc == r, (g - b) / d, torch.where(maxc == g, (b - r) / d + 2.0, (r - g) / d + 4.0)
    )
    h6 = h6 + 6.0 * shift.view(-1, 1, 1, 1)
    # HSV -> RGB: channel n in (5, 3, 1) for (R, G, B) is
    # v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        out.append(maxc - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per clip, reflect padding, every frame alike.

    Args:
        x: float (N, 3, T, H, W).
        sigma: (N,) on x's device.
        kernel_size: odd.
    """
    n, c, t, h, w = x.shape
    half = kernel_size // 2
    pos = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - half
    kernel = torch.exp(-0.5 * (pos[None, :] / sigma.to(x.dtype)[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, k)
    # One group per (clip, channel, frame) image, each with its clip's kernel.
    weight = kernel.repeat_interleave(c * t, dim=0)  # (N*C*T, k)
    planes = x.reshape(1, n * c * t, h, w)
    pad = min(half, h - 1, w - 1)  # reflect padding needs pad < size
    planes = F.pad(planes, (pad, pad, pad, pad), mode="reflect")
    if pad < half:
        planes = F.pad(planes, (half - pad,) * 4, mode="replicate")
    planes = F.conv2d(planes, weight.view(-1, 1, 1, kernel_size), groups=n * c * t)
    planes = F.conv2d(planes, weight.view(-1, 1, kernel_size, 1), groups=n * c * t)
    return planes.view(n, c, t, h, w)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _to_device_packed(
    indices: list[torch.Tensor], factors: torch.Tensor, device: torch.device
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Move CPU int64 index lists and float32 factors (R, B) to ``device`` in one transfer.

    Packed as bytes (the int64 part first, so both parts stay aligned for ``view``), pinned when
    the target is CUDA, copied with ``non_blocking=True`` and sliced there. On the CPU the same
    tensors come back unchanged in value (a no-op ``.to``).
    """
    ints = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64)
    packed = torch.cat((ints.view(torch.uint8), factors.contiguous().view(-1).view(torch.uint8)))
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    else:
        packed = packed.to(device)
    n_int = ints.numel() * 8
    dev_ints = packed[:n_int].view(torch.int64)
    dev_factors = packed[n_int:].view(torch.float32).view(factors.shape)
    out, start = [], 0
    for part in indices:
        out.append(dev_ints[start:start + part.numel()])
        start += part.numel()
    return out, dev_factors


def torchvision_reference(
    aug: ClipAugment, clips: torch.Tensor, params: AugmentParams
) -> torch.Tensor:
    """What :class:`ClipAugment` computes, spelled with torchvision's image ops clip by clip.

    Each clip's frames go through ``torchvision.transforms.v2.functional`` as a batch of images
    with that clip's drawn parameters, in the module's order (grayscale, the jitter ops in the
    drawn order, blur, normalise). The independent definition the tests compare with, and the
    per-clip alternative ``benchmarks/bench_augment.py`` times.

    Args:
        aug: the augmentation whose kernel size and statistics apply.
        clips: uint8 (B, T, H, W, 3) on any device.
        params: :meth:`ClipAugment.draw`'s CPU draws for these B clips.

    Returns:
        float32 (B, 3, T, H, W), equal to ``aug(clips, params=params)`` up to float rounding.
    """
    import torchvision.transforms.v2.functional as TF  # lazy: only the tests and the benchmark

    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factors = (params.brightness, params.contrast, params.saturation, params.hue)
    out = []
    for i, clip in enumerate(clips):
        x = clip.permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W): frames as images
        if params.gray[i]:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if params.jitter[i]:
            for op in params.order[i].tolist():
                x = ops[op](x, float(factors[op][i]))
        if params.blur[i]:
            k = aug.kernel_size
            x = TF.gaussian_blur(x, [k, k], [float(params.sigma[i])] * 2)
        out.append(TF.normalize(x, list(aug.mean), list(aug.std)).permute(1, 0, 2, 3))
    return torch.stack(out)


class ClipAugment:
    """Colour jitter, grayscale, blur and normalisation with one draw per clip.

    Args:
        crop: clip side in pixels (sets the blur kernel, see :func:`blur_kernel_size`).
        jitter_p, brightness, contrast, saturation, hue: colour jitter (spec: 0.8, 0.4, 0.4,
            0.4, 0.1).
        gray_p: grayscale probability (0.2).
        blur_p, blur_sigma: blur probability (0.5) and sigma range ((0.1, 2.0)).
        mean, std: normalisation (Kinetics-400).

    Call ``aug(clips, generator=g)``: clips uint8 ``(B, T, H, W, 3)`` (channels-last, any
    device) -> float32 ``(B, 3, T, H, W)`` contiguous (NCDHW), normalised, on the clips'
    device. ``g`` is a CPU ``torch.Generator`` (None: torch's default CPU generator).
    """

    def __init__(
        self,
        *,
        crop: int,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        gray_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        mean: tuple[float, float, float] = K400_MEAN,
        std: tuple[float, float, float] = K400_STD,
    ) -> None:
        for name, p in (("jitter_p", jitter_p), ("gray_p", gray_p), ("blur_p", blur_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] turns, got {hue}")
        self.crop = int(crop)
        self.kernel_size = blur_kernel_size(self.crop)
        self.jitter_p, self.gray_p, self.blur_p = jitter_p, gray_p, blur_p
        self.brightness, self.contrast, self.saturation, self.hue = (
            brightness, contrast, saturation, hue,
        )
        self.blur_sigma = blur_sigma
        self.mean, self.std = mean, std

    def draw(self, batch: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw every clip's parameters (CPU tensors); a fixed number of draws per clip."""

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(batch, generator=generator)

        jitter = torch.rand(batch, generator=generator) < self.jitter_p
        brightness = uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        contrast = uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        saturation = uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        hue = uniform(-self.hue, self.hue)
        order = torch.argsort(torch.rand(batch, 4, generator=generator), dim=1)
        gray = torch.rand(batch, generator=generator) < self.gray_p
        blur = torch.rand(batch, generator=generator) < self.blur_p
        sigma = uniform(*self.blur_sigma)
        return AugmentParams(jitter, brightness, contrast, saturation, hue, order, gray, blur,
                             sigma)

    def __call__(
        self, clips: torch.Tensor, *, generator: torch.Generator | None = None,
        params: AugmentParams | None = None,
    ) -> torch.Tensor:
        if clips.dtype != torch.uint8 or clips.dim() != 5 or clips.shape[-1] != 3:
            raise ValueError(
                f"ClipAugment expects uint8 clips (B, T, H, W, 3); got {clips.dtype} "
                f"{tuple(clips.shape)}"
            )
        device = clips.device
        if params is None:
            params = self.draw(clips.shape[0], generator)
        # Every index list is decided on the host (CPU tensors, host-side counts); the indices and
        # the factors then travel together: one packed, pinned, non-blocking copy per call
        # instead of one small pageable copy per op (each of which waits for the GPU).
        gray = torch.nonzero(params.gray).flatten()
        selections = []  # (slot op, host indices)
        for slot in range(4):
            for op_index in range(len(_JITTER_OPS)):
                sel = torch.nonzero(params.jitter & (params.order[:, slot] == op_index)).flatten()
                selections.append((op_index, sel))
        blur = torch.nonzero(params.blur).flatten()
        index_parts = [gray, *(sel for _, sel in selections), blur]
        factors = torch.stack((params.brightness, params.contrast, params.saturation, params.hue,
                               params.sigma)).float()  # (5, B)
        dev_indices, dev_factors = _to_device_packed(index_parts, factors, device)
        dev_gray, dev_blur = dev_indices[0], dev_indices[-1]

        # contiguous (B, 3, T, H, W) before any op: the channel-wise ops (luma, contrast means,
        # the blur's planes) then read dense planes instead of stride-3 views (faster on the
        # CPU, same values), and both encoders get NCDHW without another copy
        x = clips.permute(0, 4, 1, 2, 3).contiguous().float().div_(255.0)
        if gray.numel():
            x = self._apply(x, dev_gray, lambda part: _luma(part).expand(-1, 3, -1, -1, -1))
        for (op_index, sel), dev_sel in zip(selections, dev_indices[1:-1]):
            if sel.numel():
                x = self._apply(x, dev_sel, lambda part, s=dev_sel, o=_JITTER_OPS[op_index], i=op_index:
                                o(part, dev_factors[i].index_select(0, s)))
        if blur.numel():
            x = self._apply(x, dev_blur, lambda part: gaussian_blur(
                part, dev_factors[4].index_select(0, dev_blur), self.kernel_size))
        mean, std = self._stats(device)
        return x.sub_(mean).div_(std)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean, std float32 (1, 3, 1, 1, 1) on ``device``, built once per device."""
        cache = self.__dict__.setdefault("_stats_cache", {})
        if device not in cache:
            cache[device] = tuple(torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1, 1).to(device)
                                  for v in (self.mean, self.std))
        return cache[device]

    @staticmethod
    def _apply(x: torch.Tensor, index: torch.Tensor, fn) -> torch.Tensor:
        """Run ``fn`` on the clips ``index`` (int64 on x's device) only and write them back."""
        if index.numel() == x.shape[0]:
            return fn(x).contiguous()
        # In place: x is this call's own float copy of the clips.
        return x.index_copy_(0, index, fn(x.index_select(0, index)).contiguous())

    def __repr__(self) -> str:
        return (
            f"ClipAugment(crop={self.crop}, jitter_p={self.jitter_p}, "
            f"bcsh=({self.brightness}, {self.contrast}, {self.saturation}, {self.hue}), "
            f"gray_p={self.gray_p}, blur_p={self.blur_p}, blur_sigma={self.blur_sigma}, "
            f"kernel={self.kernel_size})"
        )

