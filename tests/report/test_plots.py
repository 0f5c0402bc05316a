import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
from _report_example import divergence_section

from pillsnap.report import plots


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


def test_layer_error_plot_marks_the_first_divergent_layer():
    fig = plots.plot_layer_errors({"detection": divergence_section(2)})
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "first divergent: m2" in legend and "worst: m3" in legend and "tolerance 0.001" in legend
    assert "interior" in ax.get_title() and len(ax.lines[0].get_xdata()) == 4
    both = plots.plot_layer_errors(
        {"detection": divergence_section(2), "classification": divergence_section(None)}
    )
    assert len(both.axes) == 2
    assert "first divergent: m2" not in [
        t.get_text() for t in both.axes[1].get_legend().get_texts()
    ]


def test_layer_error_plot_without_localisation_says_so():
    fig = plots.plot_layer_errors(None)
    assert "did not run" in fig.axes[0].texts[0].get_text()
