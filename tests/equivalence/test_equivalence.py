"""Equivalence: metrics, gates, box matching, mAP, probes and diagnosis; then a real run on the fixture."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pillsnap.config import GatesConfig
from pillsnap.equivalence import diagnose, gates
from pillsnap.equivalence.batches import prefetch
from pillsnap.equivalence.boxes import MapAccumulator, box_iou, match_boxes
from pillsnap.equivalence.classification import LogitFit, per_sample_metrics
from pillsnap.equivalence.probes import fit_input_stage

# -- classification metrics -----------------------------------------------------------------------


def test_identical_logits_give_zero_differences():
    logits = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32) * 4
    m = per_sample_metrics(logits, logits.copy())
    assert np.all(m["mse"] == 0) and np.all(m["kl"] == 0) and m["top1_match"].all()
    assert np.all(m["top5_overlap"] == 1) and not m["at_risk"].any()


def test_metrics_see_flips_and_near_ties():
    t = np.array([[5.0, 4.99, 0.0], [5.0, 0.0, 0.0]], np.float32)
    o = np.array([[4.99, 5.0, 0.0], [5.0, 0.0, 0.0]], np.float32)
    m = per_sample_metrics(t, o)
    assert m["top1_match"].tolist() == [False, True]
    assert m["at_risk"].tolist() == [True, False]
    assert m["margin"][0] < 0.01 and m["kl"][0] > 0
    t64, o64 = t[0].astype(np.float64), o[0].astype(np.float64)
    p, q = np.exp(t64) / np.exp(t64).sum(), np.exp(o64) / np.exp(o64).sum()
    assert m["mse"][0] == pytest.approx(np.mean((p - q) ** 2), rel=1e-9)


def test_logit_fit_recovers_a_scaled_layer():
    t = np.random.default_rng(1).normal(size=(50, 20))
    fit = LogitFit()
    fit.update(t, 1.03 * t + 0.01)
    r = fit.result()
    assert r["slope"] == pytest.approx(1.03, abs=1e-9) and r["residual_rms"] < 1e-9


# -- gates ------------------------------------------------------------------------------------------


def test_gates_decide_and_name_a_passing_tolerance():
    c = gates.check("classification.mse_mean", 3.2e-3, 1e-4, "<=", 1e-6)
    assert not c.passed and c.would_pass_at == 5e-3 and c.strict_passed is False
    assert (
        c.describe()
        == "classification.mse_mean = 0.0032, limit <= 0.0001 (would pass with <= 0.005)"
    )
    assert gates.check("d", -0.02, 0.01, "|<=|").would_pass_at == 0.02
    assert gates.check("e", 0.97, 0.99, ">=").would_pass_at == 0.97
    nan = gates.check("f", float("nan"), 1.0)
    assert not nan.passed and "NaN" in nan.describe()


def test_fp16_uses_relaxed_limits():
    metrics = {
        "mse_mean": 3e-4,
        "mse_p99": 1e-4,
        "top1_mismatch_rate": 0.015,
        "rel_logit_diff_p99": 1e-2,
    }
    g = GatesConfig()
    assert not all(c.passed for c in gates.classification_checks(metrics, g, "fp32"))
    assert all(c.passed for c in gates.classification_checks(metrics, g, "fp16"))


def test_verdict_failure_reason_lists_every_failed_metric_and_cause():
    checks = [
        gates.check("classification.mse_mean", 1e-3, 1e-4),
        gates.check("classification.mse_p99", 1e-2, 5e-4),
        gates.check("detection.iou_diff_p95", 0.0, 0.01),
    ]
    v = gates.Verdict(
        checks, [{"model": "classification", "title": "normalisation", "evidence": "x"}]
    )
    reason = v.failure_reason()
    assert v.failed and "mse_mean" in reason and "mse_p99" in reason and "normalisation" in reason
    assert v.failure_reason("detection") is None


# -- detection --------------------------------------------------------------------------------------


def test_box_iou_and_matching():
    a = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 0]], np.float32)
    b = np.array(
        [[21, 20, 31, 30, 0.8, 0], [0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.5, 0]], np.float32
    )
    assert box_iou(a[:1], a[:1])[0, 0] == pytest.approx(1.0)
    pairs = match_boxes(a, b)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]
    # Two identical boxes with different scores pair with their own counterparts.
    same = np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.2, 0]], np.float32)
    assert sorted((i, j) for i, j, _ in match_boxes(same, same[::-1].copy())) == [(0, 1), (1, 0)]


def test_map_accumulator():
    gt = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32)
    perfect, shifted = MapAccumulator(), MapAccumulator()
    perfect.add(
        np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.8, 0]], np.float32), np.zeros(2), gt
    )
    shifted.add(
        np.array([[2, 2, 12, 12, 0.9, 0], [20, 20, 40, 40, 0.8, 0]], np.float32), np.zeros(2), gt
    )
    m50, m = perfect.compute()
    assert m50 == pytest.approx(1.0, abs=0.01) and m == pytest.approx(1.0, abs=0.01)
    s50, s = shifted.compute()
    assert s50 < 0.99 or s < m


# -- probes and diagnosis ---------------------------------------------------------------------------


def test_input_stage_fit_names_permutation_affine_and_padding():
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    assert fit_input_stage(x, x)["kind"] == "identity"
    assert fit_input_stage(x[:, ::-1], x)["permutation"] == [2, 1, 0]
    assert fit_input_stage(x[:, ::-1], x)["kind"] == "channel_permutation"
    aff = fit_input_stage(x * 1.5 + 0.2, x)
    assert (
        aff["kind"] == "affine"
        and aff["scale"][0] == pytest.approx(1.5)
        and aff["shift"][1] == pytest.approx(0.2)
    )
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
    assert fit_input_stage(padded, x)["kind"] == "identity"
    assert fit_input_stage(np.tanh(x * 3), x)["kind"] == "other"


@pytest.mark.parametrize(
    "stage, metrics, expected",
    [
        (
            {
                "kind": "channel_permutation",
                "permutation": [2, 1, 0],
                "scale": [1] * 3,
                "shift": [0] * 3,
            },
            {"rel_logit_diff_p99": 2.0},
            "channel_order",
        ),
        (
            {"kind": "affine", "permutation": [0, 1, 2], "scale": [1] * 3, "shift": [0.1] * 3},
            {"rel_logit_diff_p99": 0.3},
            "normalisation",
        ),
        (
            {"kind": "identity"},
            {"rel_logit_diff_p99": 0.3, "top1_mismatch_count": 3, "mismatch_margin_median": 0.4},
            "conversion",
        ),
        (
            {"kind": "identity"},
            {"rel_logit_diff_p99": 2e-3, "top1_mismatch_count": 2, "mismatch_margin_median": 0.001},
            "numeric_precision",
        ),
    ],
)
def test_rank_causes_follows_the_evidence(stage, metrics, expected):
    ev = diagnose.Evidence(
        "classification",
        metrics,
        "fp32",
        stage,
        {"torch": 0.0, "onnx": 0.0},
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    causes = diagnose.rank_causes(ev)
    assert causes[0]["cause"] == expected and causes[0]["advice"]


def test_detection_postprocessing_and_batch_dependence():
    ev = diagnose.Evidence(
        "detection",
        {"raw_box_max_abs_diff": 1e-4, "raw_score_max_abs_diff": 1e-7},
        "fp32",
        {"kind": "identity"},
        {"onnx": 0.0},
    )
    assert diagnose.rank_causes(ev)[0]["cause"] == "postprocessing"
    ev.batch_consistency = {"onnx": 0.2}
    assert diagnose.rank_causes(ev)[0]["cause"] == "batch_dependence"


# -- end to end ------------------------------------------------------------------------------------


def _pill(box, edi, det_conf=0.9):
    from pillsnap.pipeline import PillPrediction

    return PillPrediction(tuple(float(v) for v in box), det_conf, 0, edi, "p", 0.9)


def test_compare_photo_counts_agreement_disagreement_and_borderline():
    from pillsnap.equivalence.end_to_end import compare_photo

    torch_pills = [
        _pill([0, 0, 10, 10], "990000001"),
        _pill([20, 20, 30, 30], "990000002"),
        _pill([50, 50, 60, 60], "990000003", det_conf=0.305),
    ]
    onnx_pills = [
        _pill([0, 0, 10, 10], "990000001"),
        _pill([20, 20, 30, 30], "990000009"),
        _pill([80, 80, 90, 90], "990000004"),
    ]
    res = compare_photo(torch_pills, onnx_pills, conf_threshold=0.3)
    assert res["agree"] == 1 and res["borderline"] == 1
    assert {d.get("only_in") for d in res["differ"]} == {None, "onnx"} and len(res["differ"]) == 2


# -- prefetch ---------------------------------------------------------------------------------------


def test_prefetch_keeps_order_and_reraises():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def boom():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(prefetch(boom()))


def test_prefetch_stops_its_thread_when_abandoned():
    before = threading.active_count()
    gen = prefetch(iter(range(10**6)), depth=2)
    next(gen)
    gen.close()
    time.sleep(0.3)
    assert threading.active_count() <= before


def test_schema_of_report_is_valid_json_schema():
    import jsonschema

    from pillsnap.report.schema import SCHEMA_PATH

    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))


# -- a real run on the demo experiment ---------------------------------------------------------------

from _demo_release import demo_release
from _report_example import COMPARE_KEYS_E3 as E3_COMPARE
from _report_example import MODEL_KEYS_E3 as E3_MODEL


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return demo_release(tmp_path_factory)


@pytest.fixture(scope="module")
def smoke_run(release, tmp_path_factory):
    """One smoke comparison of both models, recording every batch each runner saw."""
    from pillsnap.engines.runners import Runner
    from pillsnap.equivalence.run import run_equivalence

    cfg, exports = release
    seen: list[tuple[str, int]] = []
    original = Runner.infer

    def recording(self, batch):
        seen.append((self.name, len(batch)))
        return original(self, batch)

    Runner.infer = recording
    try:
        result = run_equivalence(
            cfg, exports, out_dir=tmp_path_factory.mktemp("smoke"), progress=False
        )
    finally:
        Runner.infer = original
    return cfg, result, seen


@pytest.mark.slow
def test_smoke_run_passes_and_writes_a_schema_valid_report(smoke_run):
    import jsonschema

    from pillsnap.report.schema import SCHEMA_PATH

    cfg, result, _ = smoke_run
    on_disk = json.loads(result.report_path.read_text())
    assert on_disk == json.loads(json.dumps(result.report))
    jsonschema.validate(on_disk, json.loads(SCHEMA_PATH.read_text()))
    assert (
        not result.failed
        and on_disk["failed"] is False
        and on_disk["verdict"]["failure_reason"] is None
    )
    for task in ("classification", "detection"):
        model = on_disk["models"][task]
        assert all(k in model for k in E3_MODEL) and all(k in model["compare"] for k in E3_COMPARE)
        assert model["opset"] == cfg.export.opset and model["providers"] and model["dynamic_axes"]
        assert (
            model["postprocess"]["applied_in"] == "python_common"
            and len(model["onnx_sha256"]) == 64
        )
    cls, det = (
        on_disk["models"]["classification"]["compare"],
        on_disk["models"]["detection"]["compare"],
    )
    assert cls["sampled_images"] >= cfg.compare.sample_count and cls["mse_mean"] < 1e-6
    assert sum(b["added"] for b in cls["hardness_bins"].values()) >= 1
    assert det["deltas"]["map_0_5"] is not None and det["metrics"]["map50_torch"] > 0.5
    assert on_disk["end_to_end"]["compared"] and on_disk["end_to_end"]["pills"] > 0


@pytest.mark.slow
def test_hard_cases_reuse_the_torch_outputs(smoke_run):
    _, result, seen = smoke_run
    sample = result.samples["classification"]
    candidates = sum(b["candidates"] for b in sample.hardness.values())
    torch_images = sum(n for name, n in seen if name == "torch-classification")
    onnx_images = sum(
        n for name, n in seen if name.endswith("classification") and not name.startswith("torch")
    )
    hard = sum(1 for it in sample.items if it.source != "base")
    assert hard >= 1
    # Torch saw each candidate once and each base image once (plus the pipeline's crops); ONNX saw the sample.
    pipeline_crops = (
        result.end_to_end.metrics["pills"] + result.end_to_end.metrics["borderline_pills"]
    )
    assert torch_images <= candidates + (sample.sampled_images - hard) + pipeline_crops
    assert onnx_images >= sample.sampled_images


@pytest.mark.slow
def test_result_carries_per_sample_data_for_plots(smoke_run):
    _, result, _ = smoke_run
    rows = result.classification_rows
    assert len(rows) == result.samples["classification"].sampled_images
    assert {
        "path",
        "true_class",
        "mse",
        "kl",
        "margin",
        "top1_match",
        "at_risk",
        "torch_top2",
    } <= set(rows.columns)
    assert len(result.detection_iou_diffs) == result.detection.metrics["matched_pairs"]
    assert result.detection.examples and {"torch", "onnx", "labels"} <= set(
        result.detection.examples[0]
    )
    assert (
        len(result.classification.borderline)
        == result.report["config"]["compare"]["borderline_log_count"]
    )


@pytest.mark.slow
def test_engines_side_by_side_measure_what_engines_in_turn_measure(release, smoke_run, tmp_path):
    import torch

    from pillsnap.config import apply_overrides
    from pillsnap.equivalence.lanes import plan_lanes
    from pillsnap.equivalence.run import run_equivalence

    cfg, side_by_side, _ = smoke_run
    threads = torch.get_num_threads()
    expected = "side by side" if plan_lanes(cfg).parallel else "in turn"
    assert side_by_side.report["timing"]["engines"] == expected
    in_turn = run_equivalence(
        apply_overrides(cfg, {"compare.parallel_engines": False}),
        release[1],
        out_dir=tmp_path,
        progress=False,
    )
    assert in_turn.report["timing"]["engines"] == "in turn" and torch.get_num_threads() == threads
    a, b = side_by_side.report, in_turn.report
    for task in ("classification", "detection"):
        ca, cb = a["models"][task]["compare"], b["models"][task]["compare"]
        assert ca["sampled_images"] == cb["sampled_images"] and ca["failed"] == cb["failed"]
    cls_a, cls_b = (r["models"]["classification"]["compare"] for r in (a, b))
    assert cls_a["top1_match_rate"] == cls_b["top1_match_rate"]
    assert abs(cls_a["mse_mean"] - cls_b["mse_mean"]) < 1e-9
    det_a, det_b = (r["models"]["detection"]["compare"] for r in (a, b))
    assert det_a["metrics"]["matched_pairs"] == det_b["metrics"]["matched_pairs"]
    assert abs(det_a["deltas"]["map_0_5"] - det_b["deltas"]["map_0_5"]) < 1e-6
    assert a["end_to_end"]["pills"] == b["end_to_end"]["pills"]
    assert a["end_to_end"]["pill_agreement"] == b["end_to_end"]["pill_agreement"]


@pytest.mark.slow
def test_cli_passes_with_exit_code_0(release, tmp_path, capsys):
    from pillsnap.equivalence.cli import main

    cfg, exports = release
    code = main(
        [
            "--config",
            str(cfg.source),
            "--classification-onnx",
            exports["classification"].onnx_path,
            "--detection-onnx",
            exports["detection"].onnx_path,
            "--out-dir",
            str(tmp_path),
            "--quiet",
            f"--set=paths.detection_data={cfg.paths.detection_data}",
            f"--set=paths.classification_data={cfg.paths.classification_data}",
            "--set",
            "compare.sample_count=8",
            "--set",
            "compare.detection_sample_count=4",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "equivalence passed" in out and (tmp_path / "export_report.json").exists()


@pytest.mark.slow
def test_map_equals_ultralytics_val(release, tmp_path):
    """Our mAP of the ONNX detector on the whole val split = Ultralytics' own validator's, within 0.01."""
    from ultralytics import YOLO

    from pillsnap.config import apply_overrides
    from pillsnap.equivalence.run import run_equivalence

    cfg, exports = release
    cfg = apply_overrides(cfg, {"compare.mode": "full"})
    ours = run_equivalence(
        cfg, detection_onnx=exports["detection"].onnx_path, out_dir=tmp_path, progress=False
    )
    pp = cfg.postprocess
    val = YOLO(exports["detection"].onnx_path, task="detect").val(
        data=str(cfg.paths.detection_data),
        imgsz=cfg.detection.imgsz,
        batch=1,
        conf=pp.eval_conf_threshold,
        iou=pp.eval_iou_threshold,
        max_det=pp.eval_max_detections,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(tmp_path / "yolo"),
        name="val",
    )
    m = ours.detection.metrics
    assert m["photos"] == len(list(Path(cfg.paths.detection_data).parent.glob("images/val/*")))
    assert abs(m["map50_onnx"] - val.box.map50) <= 0.01, (m["map50_onnx"], val.box.map50)
    assert abs(m["map50_95_onnx"] - val.box.map) <= 0.01, (m["map50_95_onnx"], val.box.map)


@pytest.mark.slow
def test_unreadable_images_are_skipped_and_reported(release, tmp_path):
    from pillsnap.config import apply_overrides
    from pillsnap.equivalence.run import run_equivalence

    cfg, exports = release
    src = Path(cfg.paths.classification_data) / "val"
    for folder in sorted(p for p in src.iterdir() if p.is_dir())[:4]:
        dst = tmp_path / "cls" / "val" / folder.name
        dst.mkdir(parents=True)
        for img in sorted(folder.iterdir())[:2]:
            (dst / img.name).symlink_to(img)
    (tmp_path / "cls" / "val" / folder.name / "truncated.jpg").write_bytes(
        next(folder.iterdir()).read_bytes()[:300]
    )
    (tmp_path / "cls" / "val" / folder.name / "zero.jpg").write_bytes(b"")
    cfg = apply_overrides(
        cfg, {"paths.classification_data": str(tmp_path / "cls"), "compare.sample_count": 50}
    )
    result = run_equivalence(
        cfg,
        classification_onnx=exports["classification"].onnx_path,
        out_dir=tmp_path,
        progress=False,
    )
    compare = result.report["models"]["classification"]["compare"]
    assert compare["skipped_count"] == 2 and {
        Path(s["path"]).name for s in compare["skipped_files"]
    } == {"truncated.jpg", "zero.jpg"}
    assert compare["sampled_images"] == 8 and not result.failed
    assert not result.report["end_to_end"]["compared"]
