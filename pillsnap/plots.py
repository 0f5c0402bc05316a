"""Tables and figures of the equivalence picture, for the release notebooks.

Every function takes the report dict and/or ``EquivalenceDetails`` (never the
models), returns a DataFrame, a string or a matplotlib Figure, and prints nothing.
``release_summary`` is the deterministic text that nbval checks against the
committed notebook output, so a regression in a gate or a parity figure fails it.
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


def gates_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per gate: metric, value, limit, pass (and the stricter informational aim)."""
    import pandas as pd

    rows = []
    for model in report.get("models", {}).values():
        if model:
            for g in model["compare"]["gates"]:
                rows.append(
                    {
                        "metric": g["name"],
                        "value": g["value"],
                        "op": g["op"],
                        "limit": g["limit"],
                        "pass": g["passed"],
                        "strict_limit": g.get("strict_limit"),
                        "strict_pass": g.get("strict_passed"),
                    }
                )
    e2e = report.get("end_to_end", {})
    if e2e.get("compared"):
        limit = (
            report.get("config", {}).get("compare", {}).get("gates", {}).get("e2e_agreement_min")
        )
        rows.append(
            {
                "metric": "end_to_end.pill_agreement",
                "value": e2e.get("pill_agreement"),
                "op": ">=",
                "limit": limit,
                "pass": not e2e.get("failed"),
                "strict_limit": None,
                "strict_pass": None,
            }
        )
    return pd.DataFrame(rows)


def detection_table(report: dict[str, Any]) -> pd.DataFrame:
    """mAP of each engine and their difference, plus box-level agreement."""
    import pandas as pd

    det = (report.get("models") or {}).get("detection")
    if not det:
        return pd.DataFrame()
    m = det["compare"]["metrics"]
    rows = [
        {
            "metric": f"mAP@{name}",
            "torch": m.get(f"map{key}_torch"),
            "onnx": m.get(f"map{key}_onnx"),
            "delta": m.get(f"delta_map{key}"),
        }
        for name, key in (("0.5", "50"), ("0.5:0.95", "50_95"))
    ]
    for key in (
        "iou_diff_p95",
        "iou_diff_max",
        "score_diff_p95",
        "matched_pairs",
        "unmatched_torch",
        "unmatched_onnx",
        "class_disagreements",
        "photos",
    ):
        rows.append({"metric": key, "torch": None, "onnx": None, "delta": m.get(key)})
    return pd.DataFrame(rows)


def end_to_end_table(report: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    e2e = report.get("end_to_end", {})
    keys = (
        "compared",
        "photos",
        "pills",
        "pill_agreement",
        "photo_agreement",
        "borderline_pills",
        "failed",
        "note",
    )
    return pd.DataFrame([{"item": k, "value": e2e.get(k)} for k in keys])


def release_summary(report: dict[str, Any], digits: int = 3) -> str:
    """Deterministic summary (verdicts, counts, rounded parity figures) for nbval to compare."""

    def r(value: Any) -> str:
        return "-" if value is None else f"{round(float(value), digits) + 0.0:.{digits}f}"

    lines = [f"verdict: {'FAILED' if report['failed'] else 'passed'}"]
    for g in gates_table(report).to_dict("records"):
        lines.append(
            f"  {g['metric']:<36} {g['op']:>4} {g['limit']:<8g} {'pass' if g['pass'] else 'FAIL'}"
        )
    models = report.get("models", {})
    if models.get("classification"):
        c = models["classification"]["compare"]
        lines.append(
            f"classification: {c['sampled_images']} images, {c['sampled_classes']} classes, "
            f"top-1 match {r(c['top1_match_rate'])}, mse_mean below 1e-6: {c['mse_mean'] < 1e-6}"
        )
    if models.get("detection"):
        m = models["detection"]["compare"]["metrics"]
        lines.append(
            f"detection: {int(m['photos'])} photos, mAP50 torch {r(m['map50_torch'])} "
            f"onnx {r(m['map50_onnx'])}, delta {r(m['delta_map50'])}"
        )
    e2e = report.get("end_to_end", {})
    if e2e.get("compared"):
        lines.append(
            f"end-to-end: {e2e['pills']} pills, edi_code agreement {r(e2e['pill_agreement'])}"
        )
    lines.append("report keys: " + ", ".join(sorted(report)))
    return "\n".join(lines)


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
    """1 - IoU of matched Torch/ONNX box pairs (0 = identical boxes)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    values = np.asarray(iou_diffs, float)
    if values.size:
        ax.hist(values, bins=30, color="tab:green")
    else:
        ax.text(
            0.5,
            0.5,
            "no matched boxes above the deployed confidence",
            ha="center",
            transform=ax.transAxes,
        )
    if limit is not None:
        ax.axvline(limit, color="tab:red", linestyle="--", label=f"p95 limit {limit:g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("1 - IoU (Torch box vs matched ONNX box)")
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
