"""Figures of the equivalence picture, for the release notebooks (tables: ``pillsnap.report.tables``).

Every function takes data from the report or ``EquivalenceDetails`` (never the
models), returns a matplotlib Figure detached from pyplot (so a notebook shows it
once, as the cell's result) and prints nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from pillsnap.classmap import ClassMap

_MSE_FLOOR = 1e-20
_IOU_FLOOR = 1e-9
_LAYER_FLOOR = 1e-10


def plot_mse_histogram(rows: pd.DataFrame, limits: dict[str, float] | None = None) -> Figure:
    """Per-sample probability MSE (log scale), with the gate limits drawn in."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    mse = np.log10(np.maximum(rows["mse"].to_numpy(float), _MSE_FLOOR))
    ax.hist(mse, bins=30, color="tab:blue")
    for name, value in (limits or {}).items():
        ax.axvline(np.log10(value), color="tab:red", linestyle="--", label=f"{name} {value:g}")
    ax.set_xlabel(f"log10 per-sample MSE (floored at {_MSE_FLOOR:g})")
    ax.set_ylabel("samples")
    if limits:
        ax.legend(fontsize=8)
    return _done(fig)


def plot_class_mismatch(rows: pd.DataFrame, top: int = 20) -> Figure:
    """Top-1 mismatch rate per true class (worst first); an all-zero chart is the good news."""
    import matplotlib.pyplot as plt

    g = rows.assign(mismatch=~rows["top1_match"].astype(bool)).groupby("true_class")
    table = g.agg(rate=("mismatch", "mean"), mse=("mse", "mean"), n=("mismatch", "size"))
    table = table.sort_values(["rate", "mse"], ascending=False).head(top)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([str(c) for c in table.index], table["rate"], color="tab:orange")
    total = int((~rows["top1_match"].astype(bool)).sum())
    ax.set_title(f"top-1 mismatches per class: {total} of {len(rows)} samples")
    ax.set_xlabel("true class index")
    ax.set_ylabel("mismatch rate")
    ax.set_ylim(0, max(0.05, float(table["rate"].max()) * 1.1) if len(table) else 1)
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    if total == 0:
        ax.text(
            0.5,
            0.6,
            f"no top-1 mismatch in any of the {rows['true_class'].nunique()} sampled classes",
            ha="center",
            transform=ax.transAxes,
        )
    return _done(fig)


def plot_margin_vs_diff(rows: pd.DataFrame) -> Figure:
    """Torch top-1 margin vs largest probability difference; above the line a flip is possible."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    risk = rows["at_risk"].astype(bool).to_numpy()
    diff = np.maximum(rows["max_abs_prob_diff"].to_numpy(float), _MSE_FLOOR)
    margin = rows["margin"].to_numpy(float)
    ax.scatter(margin[~risk], diff[~risk], s=12, label="safe", color="tab:blue")
    ax.scatter(
        margin[risk], diff[risk], s=24, label=f"at risk ({int(risk.sum())})", color="tab:red"
    )
    xs = np.linspace(max(margin.min(), 1e-6), max(margin.max(), 1e-5), 50)
    ax.plot(xs, xs / 2, color="grey", linestyle="--", label="difference = margin / 2")
    ax.set_yscale("log")
    ax.set_xlabel("Torch top-1 minus top-2 probability (margin)")
    ax.set_ylabel("max |p_torch - p_onnx|")
    ax.legend(fontsize=8)
    return _done(fig)


def plot_borderline_gallery(
    borderline: list[dict[str, Any]], class_map: ClassMap | None = None, count: int = 8
) -> Figure:
    """The borderline cases: image, true class, Torch top-2 and ONNX top-2 with probabilities."""
    import matplotlib.pyplot as plt

    cases = borderline[:count]
    cols = max(1, min(4, len(cases)))
    nrows = max(1, -(-len(cases) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.6 * nrows), squeeze=False)
    names = {c.index: c.name for c in class_map.classes} if class_map is not None else {}
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), cases):
        _show_image(ax, case["path"])
        flag = "" if case["top1_match"] else "  TOP-1 DIFFERS"
        ax.set_title(
            f"true {names.get(case['true_class'], case['true_class'])}{flag}\n"
            f"torch {_top2(case['torch_top2'], names)}\nonnx  {_top2(case['onnx_top2'], names)}",
            fontsize=7,
        )
    if not cases:
        axes[0, 0].text(0.5, 0.5, "no borderline cases recorded", ha="center")
    return _done(fig)


def plot_iou_diffs(iou_diffs: np.ndarray, limit: float | None = None) -> Figure:
    """1 - IoU of matched Torch/ONNX box pairs on a log scale (fp32 exports sit near 1e-7)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    values = np.asarray(iou_diffs, float)
    if values.size:
        ax.hist(np.log10(np.maximum(values, _IOU_FLOOR)), bins=30, color="tab:green")
        ax.set_title(f"{values.size} matched box pairs, max 1 - IoU {values.max():.2e}", fontsize=9)
    else:
        ax.text(
            0.5,
            0.5,
            "no matched boxes above the deployed confidence",
            ha="center",
            transform=ax.transAxes,
        )
    if limit is not None:
        ax.axvline(np.log10(limit), color="tab:red", linestyle="--", label=f"p95 limit {limit:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel(f"log10 (1 - IoU), Torch box vs matched ONNX box (floored at {_IOU_FLOOR:g})")
    ax.set_ylabel("box pairs")
    return _done(fig)


def plot_detections(examples: list[dict[str, Any]], count: int = 3) -> Figure:
    """Torch (left) and ONNX (right) detections drawn on the same photos; ground truth dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    shown = examples[:count]
    fig, axes = plt.subplots(
        max(1, len(shown)), 2, figsize=(8, 3.6 * max(1, len(shown))), squeeze=False
    )
    for row, example in zip(axes, shown):
        for ax, engine, colour in ((row[0], "torch", "tab:blue"), (row[1], "onnx", "tab:orange")):
            _show_image(ax, example["path"])
            for x1, y1, x2, y2 in example.get("labels", []):
                ax.add_patch(
                    Rectangle(
                        (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="white", linestyle="--"
                    )
                )
            for x1, y1, x2, y2, conf, _cls in example[engine]:
                ax.add_patch(
                    Rectangle(
                        (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5
                    )
                )
                ax.text(x1, y1, f"{conf:.2f}", color=colour, fontsize=6, va="bottom")
            ax.set_title(
                f"{engine}: {len(example[engine])} boxes  ({Path(example['path']).name})",
                fontsize=8,
            )
            ax.axis("off")
    return _done(fig)


def plot_layer_errors(divergence: dict[str, Any] | None) -> Figure:
    """Per-layer relative error along depth, per model, tolerance dashed, first divergent layer marked.

    ``divergence`` is the report's ``divergence`` section (model -> localisation). A
    failed run shows where the engines part; a passing run recorded with
    ``compare.localise: always`` shows every layer under the tolerance. Without a
    section (a passing release does not pay for it) the figure says so in one line.
    """
    import matplotlib.pyplot as plt

    sections = [(m, d) for m, d in (divergence or {}).items() if d]
    if not sections:
        fig, ax = plt.subplots(figsize=(7, 0.8))
        ax.axis("off")
        ax.text(
            0.0,
            0.5,
            "per-layer localisation did not run: no classification or detection gate failed "
            "(set compare.localise=always to record it in a passing run)",
            va="center",
            fontsize=9,
        )
        return _done(fig)
    fig, axes = plt.subplots(len(sections), 1, figsize=(9, 3.2 * len(sections)), squeeze=False)
    for ax, (model, d) in zip(axes[:, 0], sections):
        layers = d["layers"]
        depth = np.arange(len(layers))
        err = np.array(
            [np.nan if r["rel_error"] is None else r["rel_error"] for r in layers], float
        )
        shown = np.log10(np.maximum(np.nan_to_num(err, nan=1e3), _LAYER_FLOOR))
        ax.plot(depth, shown, marker=".", markersize=3, linewidth=0.8, color="tab:blue")
        tol = d["tolerance"]
        ax.axhline(
            np.log10(tol), color="tab:red", linestyle="--", linewidth=1, label=f"tolerance {tol:g}"
        )
        index = {r["position"]: i for i, r in enumerate(layers)}
        for key, colour, name in (
            ("first_divergent", "tab:red", "first divergent"),
            ("worst", "tab:orange", "worst"),
        ):
            row = d.get(key)
            if row is None or row["position"] not in index:
                continue
            i = index[row["position"]]
            label = row["module"] or row["layer"]
            if key == "first_divergent":
                ax.axvline(i, color=colour, linewidth=1)
            ax.scatter([i], [shown[i]], s=40, color=colour, zorder=3, label=f"{name}: {label}")
        ax.set_title(
            f"{model}: {d['pattern']} -- {d['matched']} of {d['tapped']} ONNX tensors matched, "
            f"{d['samples']} samples",
            fontsize=9,
        )
        ax.set_xlabel("compared layer, in execution order (depth)")
        ax.set_ylabel(f"log10 relative error (floor {_LAYER_FLOOR:g})")
        ax.legend(fontsize=7, loc="upper left")
    return _done(fig)


def _top2(pairs: list[list[float]], names: dict[int, str]) -> str:
    return " / ".join(f"{names.get(int(c), c)} {p:.3f}" for c, p in pairs)


def _done(fig: Figure) -> Figure:
    """Detach from pyplot: the notebook shows the returned figure once, as the cell's result."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    plt.close(fig)
    return fig


def _show_image(ax: Any, path: str) -> None:
    from pillsnap.exceptions import DataError
    from pillsnap.preprocess import load_image

    try:
        ax.imshow(load_image(path))
    except (DataError, FileNotFoundError):
        ax.text(0.5, 0.5, f"image not available:\n{Path(path).name}", ha="center", fontsize=7)
