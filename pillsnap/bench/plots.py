"""Figures of a benchmark record (tables: ``tables.py``); each returns a detached matplotlib Figure.

Error bars are the bootstrap 95 % intervals over rounds (none below three rounds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.report.plots import _done

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _err(iv: dict[str, Any]) -> tuple[float, float]:
    med = iv["median"]
    lo, hi = iv.get("low"), iv.get("high")
    return (med - lo if lo is not None else 0.0, hi - med if hi is not None else 0.0)


def _measured(record: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return [r for r in record["rows"] if r["model"] == task and r["status"] == "measured"]


def plot_latency(record: dict[str, Any]) -> Figure:
    """Median latency per call with its interval, per configuration, one panel per model x batch."""
    import matplotlib.pyplot as plt

    panels = [
        (t, b) for t in record["settings"]["models"] for b in record["settings"]["batch_sizes"]
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (task, batch) in zip(axes[0], panels):
        rows = [r for r in _measured(record, task) if r["batch"] == batch]
        names = [r["configuration"] for r in rows]
        med = [r["latency"]["median_ms"]["median"] for r in rows]
        err = np.array([_err(r["latency"]["median_ms"]) for r in rows]).T.reshape(2, -1)
        colors = ["tab:red" if r["latency"]["noisy"] else "tab:blue" for r in rows]
        ax.barh(names, med, xerr=err, color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_title(f"{task}, batch {batch}", fontsize=9)
        ax.set_xlabel("ms per call (red: noisy)")
        ax.tick_params(labelsize=7)
    return _done(fig)


def plot_throughput(record: dict[str, Any]) -> Figure:
    """Images per second against batch size, per configuration, one panel per model."""
    import matplotlib.pyplot as plt

    tasks = record["settings"]["models"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = _measured(record, task)
        for name in dict.fromkeys(r["configuration"] for r in rows):
            mine = sorted((r for r in rows if r["configuration"] == name), key=lambda r: r["batch"])
            ivs = [r["throughput"]["images_per_s"] for r in mine]
            err = np.array([_err(iv) for iv in ivs]).T.reshape(2, -1)
            ax.errorbar(
                [r["batch"] for r in mine],
                [iv["median"] for iv in ivs],
                yerr=err,
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=7)
    return _done(fig)


def plot_phases(record: dict[str, Any]) -> Figure:
    """The end-to-end pipeline per photo, stacked by phase, per configuration."""
    import matplotlib.pyplot as plt

    from pillsnap.bench.phases import PHASES

    rows = [p for p in record["pipeline"] if p["per_photo_ms"]]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(rows), 1)))
    left = np.zeros(len(rows))
    for phase in PHASES:
        values = np.array([p["phases_ms_per_photo"].get(phase, 0.0) for p in rows])
        ax.barh([p["configuration"] for p in rows], values, left=left, label=phase)
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("ms per photo (median over rounds, per phase)")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    if not rows:
        ax.text(0.5, 0.5, "no pipeline rows (needs both models and val photos)", ha="center")
    return _done(fig)


def plot_speed_vs_accuracy(record: dict[str, Any], batch: int | None = None) -> Figure:
    """One point per configuration: median latency (``batch``, default the largest) vs agreement with Torch."""
    import matplotlib.pyplot as plt

    batch = batch or max(record["settings"]["batch_sizes"])
    runs = {(c["name"], t): run for c in record["configurations"] for t, run in c["models"].items()}
    tasks = record["settings"]["models"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in _measured(record, task) if r["batch"] == batch):
            acc = runs[(r["configuration"], task)].get("accuracy")
            if not acc or acc.get("agreement") is None:
                continue
            x, y = r["latency"]["median_ms"]["median"], acc["agreement"]
            ax.scatter([x], [y])
            ax.annotate(
                r["configuration"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"ms per call, batch {batch} (log)")
        ax.set_ylabel("top-1 agreement" if task == "classification" else "box agreement")
        ax.set_title(f"{task}: speed vs agreement with Torch fp32", fontsize=9)
    return _done(fig)
