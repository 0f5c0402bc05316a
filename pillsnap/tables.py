"""Tables of a release's equivalence verdict, for the release notebooks (figures: ``pillsnap.plots``).

Every function reads the ``export_report.json`` dict only and returns a DataFrame or
a string. ``release_summary`` is the deterministic text that nbval checks against
the committed notebook output, so a regression in a gate or a parity figure fails it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


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
