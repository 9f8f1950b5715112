"""Benchmark the clip augmentations: ``dali_fame.augment.ClipAugment`` next to the alternatives.

Three implementations of the same recipe (fame-spec section 5: grayscale p 0.2, colour jitter
p 0.8 (0.4, 0.4, 0.4, 0.1), Gaussian blur p 0.5 with sigma in (0.1, 2), Kinetics normalisation,
one draw per clip for all its frames), each taking uint8 clips (B, T, S, S, 3) and returning the
model's float32 (B, 3, T, S, S):

* ``ClipAugment``: batched, each op once per jitter slot on the clips that drew it;
* ``torchvision per clip``: :func:`dali_fame.augment.torchvision_reference`, torchvision's image
  ops on each clip's frames with that clip's draws (what a per-clip Dataset transform does);
* ``kornia VideoSequential`` (same_on_frame=True), the released FAME code's choice, when kornia is
  installed (``pip install -e '.[bench]'``); kornia draws from torch's global RNG, so its clips
  get other draws at the same probabilities.

Correctness first: with the same draws ClipAugment must equal the torchvision path within
2e-4 (float32 rounding), else the benchmark stops. Then, per setting, the median and min of
``--repeats`` calls of each implementation on the same clips (fresh draws each call), and each of
ClipAugment's ops alone on the whole batch (every clip takes it), to show where the time goes.
On CUDA (when available) the clips live on the GPU and each call is synchronised.

    python benchmarks/bench_augment.py                 # or: dali-fame bench augment
    python benchmarks/bench_augment.py --settings demo --repeats 5

Writes ``augment.json`` and ``augment.md`` to --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dali_fame.augment import (
    ClipAugment,
    _luma,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    torchvision_reference,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: name -> (clips per batch, frames, side): the CPU demo's view, R(2+1)D-18's, I3D's
SETTINGS = {"demo": (16, 8, 64), "r2plus1d": (8, 16, 112), "i3d": (8, 16, 224)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], *, repeats: int, device: torch.device) -> dict:
    """Median and min milliseconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def check_correct(aug: ClipAugment, clips: torch.Tensor) -> float:
    """Largest |ClipAugment - torchvision per clip| over one batch with the same draws."""
    params = aug.draw(clips.shape[0], torch.Generator().manual_seed(0))
    ours = aug(clips, params=params)
    ref = torchvision_reference(aug, clips, params)
    err = float((ours - ref).abs().max())
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=1e-4)
    return err


def kornia_pipeline(aug: ClipAugment, device: torch.device):
    """kornia's VideoSequential with the recipe's ops and probabilities, or None without kornia."""
    if importlib.util.find_spec("kornia") is None:
        return None
    import kornia.augmentation as K

    k = aug.kernel_size
    seq = K.VideoSequential(
        K.RandomGrayscale(p=aug.gray_p),
        K.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue, p=aug.jitter_p),
        K.RandomGaussianBlur((k, k), aug.blur_sigma, p=aug.blur_p),
        K.Normalize(torch.tensor(aug.mean), torch.tensor(aug.std)),
        data_format="BCTHW",
        same_on_frame=True,
    ).to(device)

    def run(clips: torch.Tensor) -> torch.Tensor:
        return seq(clips.permute(0, 4, 1, 2, 3).float().div_(255.0))

    return run


def bench_setting(name: str, *, device: torch.device, repeats: int) -> list[dict]:
    b, t, s = SETTINGS[name]
    clips = torch.randint(0, 256, (b, t, s, s, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1)).to(device)
    aug = ClipAugment(crop=s)
    err = check_correct(aug, clips)
    gen = torch.Generator().manual_seed(2)
    impls = {
        "ClipAugment": lambda: aug(clips, generator=gen),
        "torchvision per clip": lambda: torchvision_reference(aug, clips, aug.draw(b, gen)),
    }
    kornia = kornia_pipeline(aug, device)
    if kornia is not None:
        impls["kornia VideoSequential"] = lambda: kornia(clips)
    rows = []
    base = None
    for impl, fn in impls.items():
        r = time_call(fn, repeats=repeats, device=device)
        base = base or r["median_ms"]
        rows.append({"setting": name, "shape": f"{b}x{t}x{s}x{s}", "device": str(device),
                     "implementation": impl, "stage": "whole augmentation", **r,
                     "clips_per_s": b / (r["median_ms"] / 1000),
                     "vs_ClipAugment": r["median_ms"] / base, "max_abs_err_vs_torchvision": err})
    # ClipAugment's ops alone, every clip taking each one
    x = clips.permute(0, 4, 1, 2, 3).contiguous().float().div_(255.0)
    f = torch.full((b,), 1.2, device=device)
    ops = {
        "uint8 -> float NCDHW":
            lambda: clips.permute(0, 4, 1, 2, 3).contiguous().float().div_(255.0),
        "grayscale": lambda: _luma(x).expand(-1, 3, -1, -1, -1).contiguous(),
        "brightness": lambda: adjust_brightness(x, f),
        "contrast": lambda: adjust_contrast(x, f),
        "saturation": lambda: adjust_saturation(x, f),
        "hue": lambda: adjust_hue(x, f * 0.05),
        "blur": lambda: gaussian_blur(x, f, aug.kernel_size),
        "normalise": lambda: (x - 0.4) / 0.2,
    }
    for op, fn in ops.items():
        r = time_call(fn, repeats=repeats, device=device)
        rows.append({"setting": name, "shape": f"{b}x{t}x{s}x{s}", "device": str(device),
                     "implementation": "ClipAugment op", "stage": op, **r,
                     "clips_per_s": b / (r["median_ms"] / 1000)})
    return rows


def to_markdown(rows: list[dict], header: str) -> str:
    cols = ("setting", "clips", "device", "implementation", "stage", "median ms", "min ms",
            "clips/s", "time vs ClipAugment")
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        ratio = f"{r['vs_ClipAugment']:.2f}x" if "vs_ClipAugment" in r else ""
        lines.append(f"| {r['setting']} | {r['shape']} | {r['device']} | {r['implementation']} | "
                     f"{r['stage']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{r['clips_per_s']:.0f} | {ratio} |")
    errs = {r["setting"]: r["max_abs_err_vs_torchvision"] for r in rows
            if "max_abs_err_vs_torchvision" in r}
    lines += ["", "Checked before timing: ClipAugment vs torchvision per clip with the same draws, "
              "largest difference " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None,
                   help="default: demo and r2plus1d on the CPU, r2plus1d and i3d on a GPU")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per case (median)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default = ["r2plus1d", "i3d"] if device.type == "cuda" else ["demo", "r2plus1d"]
    settings = args.settings or default
    rows = []
    for name in settings:
        for r in bench_setting(name, device=device, repeats=args.repeats):
            rows.append(r)
            ratio = (f"  ({r['vs_ClipAugment']:.2f}x ClipAugment's time)"
                     if "vs_ClipAugment" in r else "")
            print(f"{name:9s} {r['implementation']:23s} {r['stage']:20s} "
                  f"{r['median_ms']:8.1f} ms{ratio}", flush=True)
    kornia = (f"kornia {importlib.import_module('kornia').__version__}"
              if importlib.util.find_spec("kornia") else "kornia not installed")
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else None
    header = (f"# Augmentation benchmark\n\ntorch {torch.__version__}, {kornia}, {gpu or 'CPU'} "
              f"({platform.machine()}, {torch.get_num_threads()} threads); "
              f"median of {args.repeats} "
              f"calls after one warm-up; command: `python benchmarks/bench_augment.py "
              f"{' '.join(sys.argv[1:] if argv is None else argv)}`")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "augment.json").write_text(json.dumps(rows, indent=2))
    (args.out / "augment.md").write_text(to_markdown(rows, header))
    print(f"wrote {args.out / 'augment.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
