"""The bias benchmark's outputs: ``NAME.json``, ``NAME.md`` and PNG plots (:func:`write_report`).

The payload (built by :func:`dali_fame.bias.bench.build_payload`)::

    {"command": str, "wall_seconds": float, "seeds": [int, ...], "settings": {...},
     "chance": {metric: percent},
     "results": {method: {"kind": "pretrain" | "supervised" | "random",
                          "per_seed": {"<seed>": {metric: percent}},
                          "mean": {metric: percent}, "std": {metric: percent},
                          "train": {"<seed>": {"epochs", "steps", "loss_first_epoch", ...}}}},
     "runs": {"<method>/seed<S>": {"train_seconds", "train_cached", "eval_seconds", ...}},
     "machine": {...}}

Every metric is a percentage (0-100); ``std`` is the sample standard deviation over the seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

#: metric -> column title of the markdown table, in table order
COLUMNS: dict[str, str] = {
    "same_top1": "same",
    "swapped_top1": "swapped",
    "unseen_top1": "unseen",
    "static_top1": "static",
    "biased_probe_swapped_top1": "biased probe, swapped",
    "scene_decode_top1": "scene decode",
    "contrasted_acc": "contrasted",
    "retrieval_r1": "R@1",
    "retrieval_scene_at1": "scene@1",
}
#: the four test sets of the top-1 bar chart
BAR_METRICS: tuple[str, ...] = ("same_top1", "swapped_top1", "unseen_top1", "static_top1")
_BAR_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def _columns(payload: dict) -> list[str]:
    """The table's metrics: :data:`COLUMNS` first, then any other metric the results carry."""
    first = next(iter(payload["results"].values()))["mean"]
    return [k for k in COLUMNS if k in first] + [k for k in first if k not in COLUMNS]


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.1f}" if n < 2 else f"{mean:.1f} ± {std:.1f}"


def markdown_table(payload: dict) -> str:
    """One row per method and reference (mean ± std over the seeds), then the chance row."""
    cols = _columns(payload)
    n = len(payload["seeds"])
    lines = ["| method | " + " | ".join(COLUMNS.get(c, c) for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for method, entry in payload["results"].items():
        cells = [_cell(entry["mean"][c], entry["std"][c], n) for c in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("| *chance* | " + " | ".join(f"{payload['chance'][c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


def _noise(entry: dict, key: str) -> float:
    return max(entry["std"][key], 1.0)


def reading(payload: dict) -> str:
    """A short paragraph stating what the numbers say, computed from them (no claim is fixed).

    A difference counts only when it exceeds the two seed spreads added (each at least 1 point);
    with one seed nothing is called a difference beyond that 2-point floor.
    """
    res, ch = payload["results"], payload["chance"]
    out: list[str] = []
    sup, sup_b = res.get("supervised_balanced"), res.get("supervised_biased")
    if sup:
        m = sup["mean"]
        above = m["same_top1"] - ch["same_top1"] > 3 * _noise(sup, "same_top1")
        out.append(
            f"The scene-balanced supervised encoder reaches {m['same_top1']:.1f}% on same-scene and "
            f"{m['swapped_top1']:.1f}% on swapped-scene clips (chance {ch['same_top1']:.1f}%): motion is "
            + ("learnable by this encoder at this scale." if above else
               "NOT clearly learnable by this encoder at this scale, so the table cannot rank methods.")
        )
    if sup_b:
        m = sup_b["mean"]
        own = _own_test(sup_b)
        if own is not None:
            ref = _own_test(sup) if sup else None
            real = own < m["same_top1"] - 2 * _noise(sup_b, "same_top1")
            out.append(
                f"The scene-biased supervised encoder's own classifier (trained on the biased set) "
                f"scores {own:.1f}% on swapped-scene clips"
                + (f", against {ref:.1f}% for the balanced one" if ref is not None else "")
                + (": the scene bias is real." if real else
                   ": at this scale the biased training set does not make it fail on swapped scenes.")
            )
        out.append(
            f"Probed on balanced data, its features give {m['same_top1']:.1f}% (same) / "
            f"{m['swapped_top1']:.1f}% (swapped) and decode the scene at {m['scene_decode_top1']:.1f}% "
            f"(chance {ch['scene_decode_top1']:.1f}%)"
            + (f", far below the balanced encoder's {sup['mean']['swapped_top1']:.1f}% swapped: trained "
               "on biased data it learned the scene in place of most of the motion."
               if sup and sup["mean"]["swapped_top1"] - m["swapped_top1"]
               > _noise(sup, "swapped_top1") + _noise(sup_b, "swapped_top1") else ".")
        )
    ssl = {k: v for k, v in res.items() if v.get("kind") == "pretrain"}
    if ssl:
        best = max(ssl, key=lambda k: ssl[k]["mean"]["swapped_top1"])
        worst = min(ssl, key=lambda k: ssl[k]["mean"]["swapped_top1"])
        out.append(
            f"Among the self-supervised methods, swapped-scene top-1 ranges from {ssl[worst]['mean']['swapped_top1']:.1f}% "
            f"({worst}) to {ssl[best]['mean']['swapped_top1']:.1f}% ({best})."
        )
        if "moco" in ssl:
            moco = ssl["moco"]
            parts = []
            for name, entry in ssl.items():
                if name == "moco":
                    continue
                d = entry["mean"]["swapped_top1"] - moco["mean"]["swapped_top1"]
                spread = _noise(entry, "swapped_top1") + _noise(moco, "swapped_top1")
                verdict = "above" if d > spread else "below" if d < -spread else "within"
                parts.append(f"{name} {d:+.1f} ({verdict} the seed spread)")
            if parts:
                out.append("Against MoCo on swapped scenes: " + ", ".join(parts) + ".")
            s = moco["mean"]
            out.append(
                f"MoCo's scene decoding is {s['scene_decode_top1']:.1f}% and its static-clip top-1 "
                f"{s['static_top1']:.1f}% (chance {ch['static_top1']:.1f}%; a pure motion encoder sits at chance there)."
            )
    rnd = res.get("random_init")
    if rnd:
        m = rnd["mean"]
        out.append(f"A random encoder scores {m['same_top1']:.1f}% same / {m['swapped_top1']:.1f}% swapped "
                   f"and decodes the scene at {m['scene_decode_top1']:.1f}%: the floor any pretraining must beat.")
    return " ".join(out)


def _own_test(entry: dict) -> float | None:
    """Mean over seeds of a supervised run's own test top-1 on test_swapped (None if absent)."""
    values = [t["finetune_test_swapped_top1"] for t in (entry.get("train") or {}).values()
              if "finetune_test_swapped_top1" in t]
    return sum(values) / len(values) if values else None


def plot_top1(payload: dict, path: Path) -> Path:
    """Bar chart: same / swapped / unseen / static top-1 per method (mean, std bars, seed dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(payload["results"])
    width = 0.8 / len(BAR_METRICS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 2), 4.2), dpi=110)
    for j, (metric, colour) in enumerate(zip(BAR_METRICS, _BAR_COLOURS)):
        xs = [i + (j - (len(BAR_METRICS) - 1) / 2) * width for i in range(len(methods))]
        means = [payload["results"][m]["mean"][metric] for m in methods]
        stds = [payload["results"][m]["std"][metric] for m in methods]
        ax.bar(xs, means, width, yerr=stds, color=colour, label=metric.replace("_top1", ""),
               capsize=2, error_kw={"elinewidth": 0.8})
        for x, m in zip(xs, methods):
            seeds = [v[metric] for v in payload["results"][m]["per_seed"].values()]
            ax.scatter([x] * len(seeds), seeds, s=6, color="black", zorder=3)
    ax.axhline(payload["chance"]["same_top1"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("probe top-1 (%), balanced probe")
    ax.set_ylim(0, 100)
    ax.set_title(f"Motion top-1 per test set ({len(payload['seeds'])} seed(s): mean, std, seeds)")
    ax.legend(fontsize=7, ncol=5, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_scene_vs_swapped(payload: dict, path: Path) -> Path:
    """Scatter: scene decodability (x) against swapped-scene motion top-1 (y), one point per
    method (mean, std bars; seeds as small dots); the good corner is top left."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.6), dpi=110)
    cmap = plt.get_cmap("tab20")  # 12+ methods: 20 distinct colours
    for i, (method, entry) in enumerate(payload["results"].items()):
        colour = cmap(i % 20)
        xs = [v["scene_decode_top1"] for v in entry["per_seed"].values()]
        ys = [v["swapped_top1"] for v in entry["per_seed"].values()]
        ax.scatter(xs, ys, s=8, color=colour, alpha=0.6)
        ax.errorbar(entry["mean"]["scene_decode_top1"], entry["mean"]["swapped_top1"],
                    xerr=entry["std"]["scene_decode_top1"], yerr=entry["std"]["swapped_top1"],
                    fmt="o", color=colour, label=method, capsize=2, markersize=6)
        # methods often overlap near the scene-decoding ceiling: name each point
        ax.annotate(method, (entry["mean"]["scene_decode_top1"], entry["mean"]["swapped_top1"]),
                    xytext=(4, 3 + 7 * (i % 3)), textcoords="offset points", fontsize=6, color=colour)
    ch = payload["chance"]
    ax.axvline(ch["scene_decode_top1"], color="grey", linestyle=":", linewidth=1)
    ax.axhline(ch["swapped_top1"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("scene decode top-1 (%) on test_swapped")
    ax.set_ylabel("motion top-1 (%) on test_swapped")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_title("Scene decodability vs motion on swapped scenes (dotted: chance)")
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def markdown(payload: dict, plots: list[Path]) -> str:
    """The NAME.md text: what ran, the table, the reading, the plots, the timings."""
    world = payload["settings"].get("world") or {}
    counts = world.get("counts") or {}
    n = len(payload["seeds"])
    runs = payload["runs"]
    train_s = sum(r["train_seconds"] for r in runs.values() if not r["train_cached"])
    eval_s = sum(r["eval_seconds"] for r in runs.values() if not r["eval_cached"])
    cached = sum(r["train_cached"] for r in runs.values())
    lines = [
        "# Background bias benchmark",
        "",
        f"Command: `{payload['command']}`  ",
        f"Wall time: {payload['wall_seconds'] / 60:.1f} min on {payload['machine']['cpus']} CPU cores "
        f"({payload['machine']['parallel']} runs at a time, {payload['machine']['threads_per_job']} thread(s) each); "
        f"training {train_s / 60:.1f} min and evaluation {eval_s / 60:.1f} min of job time"
        + (f"; {cached} training run(s) reused from an earlier identical run" if cached else "") + ".  ",
        f"Seeds: {payload['seeds']} (mean ± sample std over seeds). World: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + (f"; {world.get('num_known_scenes')} known scenes, realised pretraining bias "
           f"{(world.get('realised_bias') or {}).get('train_biased')}" if world else "") + ".  ",
        ("Columns: motion top-1 of a probe trained on the scene-balanced set, tested on the same "
         "foregrounds on their own scene (same), another class's scene (swapped), unseen scenes "
         "(unseen, SCUBA-like) and one repeated frame (static, SCUFO-like: a motion encoder is at "
         "chance); the probe trained on the biased set, on swapped scenes; scene decoding on "
         "swapped clips; contrasted accuracy (ALBAR: right on unseen and changed on static); "
         "retrieval of swapped queries in the balanced gallery (R@1: class, scene@1: scene). "
         "All in %."),
        "",
        markdown_table(payload),
        "",
        reading(payload),
        "",
    ]
    for p in plots:
        lines.append(f"![{p.stem}]({p.name})")
    lines.append("")
    per = ", ".join(f"{k} {v['train_seconds']:.0f}+{v['eval_seconds']:.0f}" for k, v in runs.items())
    lines.append(f"Per-run seconds (train + eval{', cached runs show their original time' if cached else ''}): {per}")
    lines.append("")
    if n < 2:
        lines.insert(6, "One seed: no spread is shown; differences under ~2 points are noise.  ")
    return "\n".join(lines)


def write_report(payload: dict, results_dir: str | Path, name: str) -> list[Path]:
    """Write NAME.json, NAME_top1.png, NAME_scene_vs_swapped.png and NAME.md; return the paths."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    plots = [plot_top1(payload, out / f"{name}_top1.png"),
             plot_scene_vs_swapped(payload, out / f"{name}_scene_vs_swapped.png")]
    md_path = out / f"{name}.md"
    md_path.write_text(markdown(payload, plots))
    return [json_path, md_path, *plots]
