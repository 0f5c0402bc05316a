"""Tables of a release's equivalence verdict, for the release notebooks (figures: ``pillsnap.report.plots``).

Every function reads the ``export_report.json`` dict only and returns a DataFrame or
a string. Tables are for people: counts are integers, figures have a few significant
digits (``number``), and a value that does not apply is an empty cell, never ``NaN``. ``release_summary`` is the deterministic text that nbval checks against
the committed notebook output, so a regression in a gate or a parity figure fails it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

SIGNIFICANT_DIGITS = 4


def number(value: Any, digits: int = SIGNIFICANT_DIGITS) -> str:
    """A figure for a table: integers as integers, floats to ``digits`` significant digits, None empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (
        isinstance(value, float) and value.is_integer() and abs(value) < 1e15
    ):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


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
                        "value": number(g["value"]),
                        "op": g["op"],
                        "limit": g["limit"],
                        "pass": g["passed"],
                        "strict_limit": number(g.get("strict_limit")),
                        "strict_pass": number(g.get("strict_passed")),
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
                "value": number(e2e.get("pill_agreement")),
                "op": ">=",
                "limit": limit,
                "pass": not e2e.get("failed"),
                "strict_limit": "",
                "strict_pass": "",
            }
        )
    return pd.DataFrame(rows)


def detection_table(report: dict[str, Any]) -> pd.DataFrame:
    """mAP of each engine against the labels and their difference."""
    import pandas as pd

    det = (report.get("models") or {}).get("detection")
    if not det:
        return pd.DataFrame()
    m = det["compare"]["metrics"]
    return pd.DataFrame(
        [
            {
                "metric": f"mAP@{name}",
                "torch": number(m.get(f"map{key}_torch")),
                "onnx": number(m.get(f"map{key}_onnx")),
                "delta": number(m.get(f"delta_map{key}")),
            }
            for name, key in (("0.5", "50"), ("0.5:0.95", "50_95"))
        ]
    )


BOX_AGREEMENT_KEYS = (
    "photos",
    "matched_pairs",
    "unmatched_torch",
    "unmatched_onnx",
    "class_disagreements",
    "iou_diff_p95",
    "iou_diff_max",
    "score_diff_p95",
)


def box_agreement_table(report: dict[str, Any]) -> pd.DataFrame:
    """Box-by-box Torch <-> ONNX agreement of the deployed detections (one value per row)."""
    import pandas as pd

    det = (report.get("models") or {}).get("detection")
    if not det:
        return pd.DataFrame()
    m = det["compare"]["metrics"]
    return pd.DataFrame([{"metric": k, "value": number(m.get(k))} for k in BOX_AGREEMENT_KEYS])


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
    return pd.DataFrame([{"item": k, "value": number(e2e.get(k))} for k in keys])


def divergence_table(report: dict[str, Any]) -> pd.DataFrame:
    """Per localised model: where Torch and ONNX part (first divergent layer, error before/after) and the worst layer."""
    import pandas as pd

    rows = []
    for model, d in (report.get("divergence") or {}).items():
        if not d:
            continue
        first, worst = d.get("first_divergent"), d.get("worst")
        rows.append(
            {
                "model": model,
                "pattern": d["pattern"],
                "first_divergent": (first["module"] or first["layer"]) if first else "",
                "op_type": first["op_type"] if first else "",
                "error_before": number(first["before"]) if first else "",
                "error_after": number(first["rel_error"]) if first else "",
                "worst": (worst["module"] or worst["layer"]) if worst else "",
                "worst_error": number(worst["rel_error"]) if worst else "",
                "tolerance": d["tolerance"],
                "matched": f"{d['matched']} of {d['tapped']}",
            }
        )
    return pd.DataFrame(rows)


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


def skipped_summary(report: dict[str, Any], limit: int = 3) -> list[str]:
    """Console lines: per model, how many files were skipped (the first few with reasons) and
    which class folders were empty; the full lists stay in the report."""
    lines = []
    for task, model in report.get("models", {}).items():
        compare = model.get("compare") or {}
        files = compare.get("skipped_files") or []
        count = int(compare.get("skipped_count") or len(files))
        if count:
            shown = "; ".join(f"{f['path']}: {f['reason']}" for f in files[:limit])
            more = f"; ... (+{count - limit} more in export_report.json)" if count > limit else ""
            lines.append(f"{task}: {count} file(s) skipped: {shown}{more}")
        empty = compare.get("empty_classes") or []
        if empty:
            more = ", ..." if len(empty) > limit else ""
            lines.append(
                f"{task}: {len(empty)} empty class folder(s): {', '.join(empty[:limit])}{more}"
            )
    return lines
