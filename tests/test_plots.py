import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from _report_example import example_report

from pillsnap import plots


def _report():
    report = example_report()
    report["models"]["classification"]["compare"]["gates"] = [
        {
            "name": "classification.mse_mean",
            "value": 3e-13,
            "limit": 1e-4,
            "op": "<=",
            "passed": True,
            "strict_limit": 1e-6,
            "strict_passed": True,
            "would_pass_at": None,
        },
    ]
    report["models"]["detection"]["compare"]["gates"] = [
        {
            "name": "detection.delta_map50",
            "value": -0.0004,
            "limit": 0.01,
            "op": "|<=|",
            "passed": True,
            "strict_limit": None,
            "strict_passed": None,
            "would_pass_at": None,
        },
    ]
    report["models"]["detection"]["compare"]["metrics"] = {
        "photos": 8.0,
        "map50_torch": 0.98765,
        "map50_onnx": 0.98725,
        "delta_map50": -0.0004,
        "map50_95_torch": 0.8,
        "map50_95_onnx": 0.8,
        "delta_map50_95": -0.0000001,
    }
    report["end_to_end"] = {
        "compared": True,
        "photos": 8,
        "pills": 20,
        "pill_agreement": 1.0,
        "failed": False,
    }
    report["config"] = {"compare": {"gates": {"e2e_agreement_min": 0.99}}}
    return report


def _rows(n=20):
    rng = np.random.default_rng(0)
    match = np.ones(n, bool)
    match[3] = False
    margin = rng.uniform(0, 1, n)
    diff = rng.uniform(0, 1e-6, n)
    diff[5] = margin[5]  # one at-risk sample
    return pd.DataFrame(
        {
            "path": [f"missing_{i}.jpg" for i in range(n)],
            "true_class": np.arange(n) % 4,
            "mse": rng.uniform(0, 1e-10, n),
            "top1_match": match,
            "margin": margin,
            "max_abs_prob_diff": diff,
            "at_risk": diff >= margin / 2,
        }
    )


def test_gates_table_includes_end_to_end():
    table = plots.gates_table(_report())
    assert list(table["metric"]) == [
        "detection.delta_map50",
        "classification.mse_mean",
        "end_to_end.pill_agreement",
    ]
    assert table["pass"].all() and table.loc[2, "limit"] == 0.99


def test_release_summary_is_rounded_and_stable():
    text = plots.release_summary(_report())
    assert text.splitlines()[0] == "verdict: passed"
    assert (
        "mAP50 torch 0.988 onnx 0.987, delta 0.000" in text
    )  # -0.0004 rounds to 0.000, never -0.000
    assert "top-1 match 1.000, mse_mean below 1e-6: True" in text
    assert "end-to-end: 20 pills, edi_code agreement 1.000" in text
    failed = _report()
    failed["failed"] = True
    failed["models"]["classification"]["compare"]["gates"][0]["passed"] = False
    assert plots.release_summary(failed) != text and "FAIL" in plots.release_summary(failed)


def test_figures_render_without_images_or_boxes():
    rows = _rows()
    assert len(plots.plot_mse_histogram(rows, {"gate": 1e-4}).axes) == 1
    fig = plots.plot_class_mismatch(rows)
    assert "1 of 20 samples" in fig.axes[0].get_title()
    fig = plots.plot_margin_vs_diff(rows)
    assert any("at risk (1)" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    case = {
        "path": "missing.jpg",
        "true_class": 1,
        "torch_top2": [[1, 0.6], [2, 0.4]],
        "onnx_top2": [[2, 0.5], [1, 0.5]],
        "top1_match": False,
    }
    assert "TOP-1 DIFFERS" in plots.plot_borderline_gallery([case]).axes[0].get_title()
    assert plots.plot_iou_diffs(np.array([]), 0.01).axes[0].texts  # "no matched boxes"
    example = {
        "path": "missing.jpg",
        "torch": [[1, 1, 5, 5, 0.9, 0]],
        "onnx": [],
        "labels": [[1, 1, 5, 5]],
    }
    axes = plots.plot_detections([example]).axes
    assert [len(ax.patches) for ax in axes] == [
        2,
        1,
    ]  # torch: box + ground truth; onnx: ground truth
