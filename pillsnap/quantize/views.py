"""Tables and figures of a quantization result, so ``quantization.ipynb`` stays a dozen short calls.

Every function reads a ``QuantizationResult`` (what the stage returned in this kernel)
and returns a DataFrame, a figure or a string. The comparison's own plots
(``pillsnap.report.plots``) are reused, relabelled: on the reference side of an INT8
gate is the float32 ONNX, not Torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.report.tables import number

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from pillsnap.quantize.stage import QuantizationResult


def cpu_table(result: QuantizationResult) -> pd.DataFrame:
    """The CPU the models were quantized and gated on, and what it decided."""
    import pandas as pd

    cpu = result.record.get("cpu") or {}
    flags = cpu.get("flags") or {}
    rows = [
        {"item": "cpu", "value": cpu.get("model", "")},
        {"item": "cores", "value": str(cpu.get("cores", ""))},
        {"item": "INT8 class", "value": cpu.get("int8_class", "")},
        {
            "item": "flags",
            "value": ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items()),
        },
    ]
    rows += [
        {"item": f"{t}: float32 source", "value": o.float_path.name}
        for t, o in result.outcomes.items()
    ]
    rows += [
        {
            "item": f"{t}: reduce_range",
            "value": f"{o.recipe['reduce_range']} ({o.recipe['reduce_range_source']})",
        }
        for t, o in result.outcomes.items()
    ]
    return pd.DataFrame(rows)


def raise_if_failed(result: QuantizationResult) -> None:
    """Fail the cell (and so the release) when INT8 failed and ``quantize.required`` is true."""
    from pillsnap.exceptions import EquivalenceError

    if result.failed and result.required:
        causes = [c for o in result.outcomes.values() for c in o.causes]
        hint = f" Likely cause: {causes[0]['title']}: {causes[0]['advice']}" if causes else ""
        raise EquivalenceError(f"INT8 quantization failed: {result.reason}.{hint}")


def recipes_table(result: QuantizationResult) -> pd.DataFrame:
    """One row per model and recipe tried: settings as applied, gate verdict, key metrics, speed."""
    import pandas as pd

    rows = []
    for task, outcome in result.outcomes.items():
        for entry in outcome.recipes:
            a = entry["applied"]
            rows.append(
                {
                    "model": task,
                    "recipe": entry["recipe"],
                    "chosen": entry["recipe"] == outcome.recipe["name"],
                    "calibration": a["calibration"],
                    "weights": "per channel" if a["per_channel"] else "per tensor",
                    "activations": a["activations"],
                    "reduce_range": a["reduce_range"],
                    "gate": "pass" if entry["passed"] else "fail",
                    **{k: number(v) for k, v in entry["metrics"].items()},
                    "speedup": number(entry["speedup"], 3),
                    "seconds": entry["seconds"],
                }
            )
    return pd.DataFrame(rows).fillna("")


def calibration_table(result: QuantizationResult) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for task, outcome in result.outcomes.items():
        c = outcome.calibration
        rows.append(
            {
                "model": task,
                "split": c.split,
                "images": len(c.items),
                "strata": len({it.label for it in c.items}),
                "sha256": c.sha256[:16],
                "left out of the gate": len(c.reserved),
                "note": "; ".join(c.notes),
            }
        )
    return pd.DataFrame(rows)


def exclusions_table(result: QuantizationResult) -> pd.DataFrame:
    """Nodes kept float per model and kind, with the reason."""
    import pandas as pd

    rows = []
    for task, outcome in result.outcomes.items():
        kinds: dict[str, list[Any]] = {}
        for e in outcome.exclusions:
            kinds.setdefault(e.kind, []).append(e)
        for kind, items in kinds.items():
            groups = sorted({e.group for e in items if e.group})
            rows.append(
                {
                    "model": task,
                    "kind": kind,
                    "nodes": len(items),
                    "groups": ", ".join(groups[:4]) + (" ..." if len(groups) > 4 else ""),
                    "reason": items[0].reason,
                }
            )
    return pd.DataFrame(rows, columns=["model", "kind", "nodes", "groups", "reason"])


def plot_layer_sqnr(result: QuantizationResult, top: int = 25) -> Figure:
    """Per model, the SQNR each layer group loses (worst first); groups kept float marked."""
    import matplotlib.pyplot as plt

    outcomes = [o for o in result.outcomes.values() if o.sensitivity is not None]
    fig, axes = plt.subplots(
        1, max(1, len(outcomes)), figsize=(6.5 * max(1, len(outcomes)), 6), squeeze=False
    )
    for ax, outcome in zip(axes[0], outcomes):
        table = outcome.sensitivity.groups.head(top).iloc[::-1]
        floated = set(outcome.search_groups)
        colours = ["tab:red" if g in floated else "tab:blue" for g in table["group"]]
        ax.barh([_label(g) for g in table["group"]], table["lost_db"], color=colours)
        ax.set_xlabel("SQNR lost across the group (dB, xmodel)")
        ax.set_title(
            f"{outcome.task}: worst {len(table)} of {len(outcome.sensitivity.groups)} groups "
            f"(red: kept float by the search; {outcome.sensitivity.images} images)",
            fontsize=9,
        )
        ax.tick_params(axis="y", labelsize=7)
    return _done(fig)


def plot_layer_profile(result: QuantizationResult) -> Figure:
    """Per model, both SQNRs of every tensor in execution order (``qdq_loss_debug``'s view)."""
    import matplotlib.pyplot as plt

    outcomes = [o for o in result.outcomes.values() if o.sensitivity is not None]
    fig, axes = plt.subplots(
        len(outcomes) or 1, 1, figsize=(10, 3 * max(1, len(outcomes))), squeeze=False
    )
    for ax, outcome in zip(axes[:, 0], outcomes):
        layers = outcome.sensitivity.layers
        ax.plot(layers["position"], layers["xmodel_sqnr_db"], label="xmodel (vs float32)", lw=1)
        ax.plot(layers["position"], layers["qdq_sqnr_db"], ".", ms=3, label="qdq (own rounding)")
        ax.set_ylabel("SQNR (dB)")
        ax.set_title(f"{outcome.task}: per-tensor SQNR in execution order", fontsize=9)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("tensor position")
    return _done(fig)


def steps_table(result: QuantizationResult) -> pd.DataFrame:
    """Every step of every model's path: recipe or group, float groups, gate, distance, speed."""
    import pandas as pd

    rows = [
        {
            "model": task,
            "step": s.index,
            "action": s.action,
            "recipe": s.recipe,
            "group": s.group or "",
            "float groups": len(s.float_groups),
            "excluded nodes": s.excluded_nodes,
            "gate": "pass" if s.passed else "fail",
            "distance": number(s.excess),
            "speedup": number(s.speedup, 3),
            "failed": "; ".join(s.failed_checks),
        }
        for task, o in result.outcomes.items()
        for s in o.steps
    ]
    return pd.DataFrame(rows)


def plot_search_path(result: QuantizationResult) -> Figure:
    """Gate distance from passing and speedup against the number of groups kept float."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for task, outcome in result.outcomes.items():
        path = [s for s in outcome.steps if s.action != "no_help"]
        chosen = [s for s in path if s.action == "revert" or s.recipe == outcome.recipe["name"]]
        chosen = [
            s for s in chosen if s.action == "revert" or s.index == min(x.index for x in chosen)
        ]
        xs = [len(s.float_groups) for s in chosen]
        axes[0].plot(xs, [s.excess for s in chosen], "o-", label=task)
        axes[1].plot(xs, [s.speedup for s in chosen], "o-", label=task)
    axes[0].set_ylabel("distance from passing (0 = all int8 gates pass)")
    axes[1].set_ylabel("speedup vs float32")
    min_speedup = getattr(result, "min_speedup", None)
    if min_speedup:
        axes[1].axhline(min_speedup, color="grey", ls="--", lw=1, label="min_speedup")
    for ax in axes:
        ax.set_xlabel("layer groups kept float by the search")
        ax.legend(fontsize=7)
    return _done(fig)


def gates_table(result: QuantizationResult) -> pd.DataFrame:
    """The int8 gates that decided: the final gate (both models) or each model's last gate."""
    import pandas as pd

    if result.final is not None:
        checks = result.final.checks
    else:
        checks = [c for o in result.outcomes.values() if o.gate for c in o.gate.checks]
    return pd.DataFrame(
        [
            {
                "metric": c.name,
                "value": number(c.value),
                "op": c.op,
                "limit": c.limit,
                "pass": c.passed,
            }
            for c in checks
        ]
    )


def _rows(result: QuantizationResult) -> pd.DataFrame | None:
    gate = result.final or (result.outcomes.get("classification") or _none()).gate
    if gate is None or gate.result.classification is None:
        return None
    return gate.result.classification.rows


def _none() -> Any:
    class _N:
        gate = None

    return _N()


def plot_disagreements(result: QuantizationResult, top: int = 12) -> Figure:
    """Confusion of the disagreements: float32 top-1 class (rows) vs INT8 top-1 class (columns)."""
    import matplotlib.pyplot as plt

    rows = _rows(result)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if rows is None or rows["top1_match"].all():
        ax.text(0.5, 0.5, "no top-1 disagreement", ha="center", va="center")
        ax.axis("off")
        return _done(fig)
    d = rows.loc[~rows["top1_match"]]
    pairs = d.groupby(["torch_top1", "onnx_top1"]).size().sort_values(ascending=False).head(top)
    ref = sorted({int(a) for a, _ in pairs.index})
    cand = sorted({int(b) for _, b in pairs.index})
    grid = np.zeros((len(ref), len(cand)), int)
    for (a, b), n in pairs.items():
        grid[ref.index(int(a)), cand.index(int(b))] = n
    ax.imshow(grid, cmap="Reds")
    ax.set_xticks(range(len(cand)), [str(c) for c in cand], fontsize=7)
    ax.set_yticks(range(len(ref)), [str(c) for c in ref], fontsize=7)
    for i in range(len(ref)):
        for j in range(len(cand)):
            if grid[i, j]:
                ax.text(j, i, str(grid[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xlabel("INT8 top-1 class")
    ax.set_ylabel("float32 top-1 class")
    ax.set_title(f"{len(d)} disagreements of {len(rows)} samples", fontsize=9)
    return _done(fig)


def plot_class_recall_change(result: QuantizationResult) -> Figure:
    """Per class, recall against the labels: INT8 minus float32 (the worst class shows)."""
    import matplotlib.pyplot as plt

    rows = _rows(result)
    fig, ax = plt.subplots(figsize=(10, 3))
    if rows is None:
        ax.axis("off")
        return _done(fig)
    truth = rows["true_class"]
    per = (
        rows.assign(ref=rows["torch_top1"] == truth, int8=rows["onnx_top1"] == truth)
        .groupby("true_class")[["ref", "int8"]]
        .mean()
    )
    change = (per["int8"] - per["ref"]).sort_index()
    ax.bar(
        [str(c) for c in change.index],
        change.to_numpy(),
        color=np.where(change < 0, "tab:red", "tab:green"),
    )
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("recall change")
    ax.set_xlabel("class")
    ax.tick_params(axis="x", labelsize=6, rotation=90)
    return _done(fig)


def plot_detections(result: QuantizationResult, count: int = 3) -> Figure:
    """float32 (left) and INT8 (right) detections on the same photos (``report.plots``)."""
    from pillsnap.report import plots

    gate = result.final or (result.outcomes.get("detection") or _none()).gate
    examples = gate.result.detection_examples if gate is not None else []
    fig = plots.plot_detections(examples, count)
    for ax in fig.axes:
        title = ax.get_title()
        ax.set_title(title.replace("torch:", "float32:").replace("onnx:", "INT8:"), fontsize=8)
    return fig


def verdict_text(result: QuantizationResult) -> str:
    """The deterministic summary nbval checks: verdict, shipped files, each gate's limit and verdict."""
    lines = [f"verdict: {'passed' if not result.failed else 'FAILED'}"]
    for task in result.outcomes:
        name = result.shipped.get(task)
        lines.append(f"  {task}: {'<task>-<tag>.int8.onnx shipped' if name else 'no INT8 file'}")
    if result.failed and not result.required:
        lines.append("  shipped without INT8 (quantize.required: false)")
    for _, row in gates_table(result).iterrows():
        verdict = "pass" if row["pass"] else "FAIL"
        lines.append(f"  {row['metric']:<38} {row['op']:>4} {row['limit']:<8g} {verdict}")
    return "\n".join(lines)


def summary(result: QuantizationResult) -> dict[str, Any]:
    """What the notebook records for tests and the release record."""
    return {
        "failed": result.failed,
        "reason": result.reason,
        "shipped": {t: p.name for t, p in result.shipped.items()},
        "speedup": {t: o.speed.get("speedup") for t, o in result.outcomes.items()},
        "recipe": {t: o.recipe["name"] for t, o in result.outcomes.items()},
        "search_groups": {t: o.search_groups for t, o in result.outcomes.items()},
        "seconds": result.seconds,
    }


def _label(group: str, width: int = 42) -> str:
    return group if len(group) <= width else "..." + group[-(width - 3) :]


def _done(fig: Figure) -> Figure:
    fig.tight_layout()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return fig
