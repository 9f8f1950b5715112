"""Temporal-kernel weight distributions per layer of R(2+1)D encoders (the paper's Figure 3 kind).

An R(2+1)D block factorises each 3 x 3 x 3 convolution into a spatial (1, 3, 3) and a temporal
(t, 1, 1) convolution. The temporal ones are the network's only means of modelling motion: an
encoder that matches clips by their static scene has little use for them. This figure collects,
for each layer (``stem``, ``layer1`` ... ``layer4``), every ``nn.Conv3d`` whose kernel is
(t > 1, 1, 1) and plots a violin per layer and checkpoint of one statistic:

* ``"abs"`` (default): |w| of every temporal weight w[o, i, k] (the weight magnitudes);
* ``"kernel-l2"``: the L2 norm over the t taps of each temporal kernel w[o, i, :], one value per
  (output, input) channel pair (how strongly each filter responds to change over time).

Checkpoints stand side by side within each layer. Each violin is drawn from 2001 evenly spaced
quantiles of at most 2**18 of its values taken at a fixed stride (layer4 of R(2+1)D-18 holds
6.4 M temporal weights: a kernel density of all of them would take seconds per violin, a strided
sample has the same distribution); the median, mean and count per layer, from all the values,
are written to ``temporal.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from dali_fame.figures.common import Encoder
from dali_fame.figures.plot import plt, save_png

__all__ = ["STATS", "temporal_figure", "temporal_kernels", "temporal_values"]

STATS = ("abs", "kernel-l2")
#: quantiles per violin (odd: the median is one of them)
_QUANTILES = 2001
#: values per violin at most (a fixed-stride sample of the layer's values)
_SAMPLE = 1 << 18


def temporal_kernels(model: nn.Module) -> dict[str, list[np.ndarray]]:
    """The (t > 1, 1, 1) convolution weights of ``model``, grouped by top-level child.

    Returns:
        {layer name: [float32 (out, in, t) arrays, ...]} in module order (``stem``, ``layer1``...).

    Raises:
        ValueError: the model has no such convolution (not a (2+1)D network), naming its class.
    """
    out: dict[str, list[np.ndarray]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv3d):
            kt, kh, kw = module.kernel_size
            if kt > 1 and kh == 1 and kw == 1:
                w = module.weight.detach().float().cpu().numpy()[:, :, :, 0, 0]
                out.setdefault(name.split(".")[0], []).append(w)
    if not out:
        raise ValueError(f"{type(model).__name__} has no temporal (t, 1, 1) convolution: the "
                         f"temporal figure needs a (2+1)D network such as r2plus1d_18 (--backbone)")
    return out


def temporal_values(model: nn.Module, *, stat: str = "abs") -> dict[str, np.ndarray]:
    """{layer: float64 (n,)} values of ``stat`` (module docstring) over the layer's temporal kernels."""
    if stat not in STATS:
        raise ValueError(f"--stat must be one of {STATS}, got {stat!r}")
    values = {}
    for layer, weights in temporal_kernels(model).items():
        if stat == "abs":
            parts = [np.abs(w).ravel() for w in weights]
        else:
            parts = [np.sqrt((w.astype(np.float64) ** 2).sum(axis=2)).ravel() for w in weights]
        values[layer] = np.concatenate(parts).astype(np.float64)
    return values


def temporal_figure(encoders: list[Encoder], *, out_dir: str | Path, stat: str = "abs") -> tuple[Path, dict]:
    """Write ``temporal.png`` (violins per layer, checkpoints side by side) and ``temporal.json``.

    Args:
        encoders: the checkpoints (their ``name`` labels the legend), all (2+1)D networks.
        out_dir: output folder.
        stat: "abs" or "kernel-l2".

    Returns:
        (the PNG's path, {checkpoint name: {layer: {"median", "mean", "count"}}}).
    """
    if not encoders:
        raise ValueError("temporal_figure: give at least one checkpoint (--pretrained NAME=PATH)")
    names = [e.name for e in encoders]
    if len(set(names)) != len(names):
        raise ValueError(f"--pretrained names must differ, got {names}")
    per_model = [temporal_values(e.model, stat=stat) for e in encoders]
    layers = list(per_model[0])
    for enc, vals in zip(encoders, per_model):
        if list(vals) != layers:
            raise ValueError(f"checkpoint {enc.name!r} has temporal layers {list(vals)}, the first "
                             f"has {layers}: compare checkpoints of one architecture")
    k = len(encoders)
    colours = plt.get_cmap("tab10").colors
    probs = np.linspace(0.0, 1.0, _QUANTILES)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(layers) * (k + 1) * 0.5, 4.0))
    summary: dict[str, dict] = {}
    for m, (enc, vals) in enumerate(zip(encoders, per_model)):
        positions = [li * (k + 1) + m for li in range(len(layers))]
        data = [np.quantile(vals[layer][::-(-vals[layer].size // _SAMPLE)], probs) for layer in layers]
        parts = ax.violinplot(data, positions=positions, widths=0.9, showmedians=True)
        for body in parts["bodies"]:
            body.set_facecolor(colours[m % len(colours)])
            body.set_alpha(0.6)
        for line in ("cmedians", "cmins", "cmaxes", "cbars"):
            parts[line].set_color(colours[m % len(colours)])
        ax.plot([], [], color=colours[m % len(colours)], linewidth=6, alpha=0.6, label=enc.name)
        summary[enc.name] = {layer: {"median": float(np.median(vals[layer])),
                                     "mean": float(vals[layer].mean()),
                                     "count": int(vals[layer].size)} for layer in layers}
    ax.set_xticks([li * (k + 1) + (k - 1) / 2 for li in range(len(layers))], layers)
    ax.set_ylabel("|w| of temporal weights" if stat == "abs" else "L2 norm of each temporal kernel")
    ax.set_title(f"temporal (t,1,1) convolutions per layer: {stat}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    out_dir = Path(out_dir)
    path = save_png(fig, out_dir / "temporal.png")
    (out_dir / "temporal.json").write_text(json.dumps({"stat": stat, "layers": layers,
                                                       "checkpoints": summary}, indent=1) + "\n")
    return path, summary
