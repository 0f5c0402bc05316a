"""``release diff`` speed rows: slower / faster only when the 95 % intervals do not overlap."""

from __future__ import annotations

import json

from _report_example import example_report

from pillsnap.release.cli import main as release_main
from pillsnap.release.diff import diff_releases, format_diff, speed_verdict
from pillsnap.release.manifest import MANIFEST_FORMAT
from pillsnap.report.schema import validate_report


def iv(median, low, high):
    return {"median": median, "low": low, "high": high}


def summary(speed, pipeline, cpu="test cpu"):
    return {
        "file": "benchmark.json",
        "benchmarked_at_utc": "2025-01-01T00:00:00Z",
        "failed": False,
        "failure_reason": None,
        "threads": 2,
        "cpu": cpu,
        "int8_class": "vnni",
        "ran": ["ort-cpu-fp32"],
        "unavailable": {"tensorrt-fp16": "onnxruntime-gpu not installed"},
        "speed": [
            {
                "model": "classification",
                "configuration": c,
                "batch": 1,
                "latency_ms": lat,
                "images_per_s": 1.0,
                "noisy": False,
            }
            for c, lat in speed.items()
        ],
        "pipeline_ms_per_photo": pipeline,
        "goal_met": False,
    }


def release(folder, tag, speed, pipeline, cpu="test cpu"):
    folder.mkdir()
    report = example_report()
    report["benchmark"] = summary(speed, pipeline, cpu)
    assert validate_report(report) == []
    (folder / "export_report.json").write_text(json.dumps(report))
    (folder / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "tag": tag}))
    return folder


def test_speed_verdict_uses_the_intervals():
    a = iv(10.0, 9.0, 11.0)
    assert speed_verdict(a, iv(13.0, 12.0, 14.0)) == "slower (+30%)"
    assert speed_verdict(a, iv(7.0, 6.0, 8.0)) == "faster (-30%)"
    assert (
        speed_verdict(a, iv(11.5, 10.5, 12.5)) == "same"
    )  # 15 % slower, but the intervals overlap
    assert speed_verdict(a, iv(30.0, None, None)) == "no interval"
    assert speed_verdict(None, a) == "added" and speed_verdict(a, None) == "removed"


def test_release_diff_shows_speed_changes_with_their_intervals(tmp_path, capsys):
    a = release(
        tmp_path / "a",
        "a",
        {"ort-cpu-fp32": iv(10.0, 9.0, 11.0), "torch-cpu-fp32": iv(20.0, 18.0, 22.0)},
        {"ort-cpu-fp32": iv(100.0, 90.0, 110.0)},
    )
    b = release(
        tmp_path / "b",
        "b",
        {"ort-cpu-fp32": iv(13.0, 12.0, 14.0), "torch-cpu-fp32": iv(21.0, 19.0, 23.0)},
        {"ort-cpu-fp32": iv(80.0, 75.0, 85.0)},
    )
    rows = {r.key: r for r in diff_releases(a, b) if r.section == "speed"}
    assert rows["classification.ort-cpu-fp32.batch1"].verdict == "slower (+30%)"
    assert rows["classification.ort-cpu-fp32.batch1"].changed
    assert rows["classification.torch-cpu-fp32.batch1"].verdict == "same"
    assert not rows["classification.torch-cpu-fp32.batch1"].changed  # noise is not a change
    assert rows["pipeline.ort-cpu-fp32"].verdict == "faster (-20%)"
    assert rows["classification.ort-cpu-fp32.batch1"].b == "13 ms [12, 14]"
    text = format_diff(diff_releases(a, b), "a", "b")
    assert "13 ms [12, 14]  slower (+30%)" in text and "torch-cpu-fp32" not in text
    assert not any(r.section == "report" and "benchmark" in r.key for r in diff_releases(a, b))
    assert release_main(["diff", str(a), str(b)]) == 0
    assert "80 ms/photo [75, 85]  faster (-20%)" in capsys.readouterr().out


def test_speed_on_another_machine_is_not_comparable(tmp_path):
    """Another CPU (or thread count) makes any speed difference meaningless: no false alarm."""
    a = release(tmp_path / "a", "a", {"ort-cpu-fp32": iv(10.0, 9.0, 11.0)}, {})
    b = release(tmp_path / "b", "b", {"ort-cpu-fp32": iv(13.0, 12.0, 14.0)}, {}, cpu="other cpu")
    rows = {r.key: r for r in diff_releases(a, b) if r.section == "speed"}
    assert rows["benchmark.cpu"].changed and rows["benchmark.cpu"].b == "other cpu"
    row = rows["classification.ort-cpu-fp32.batch1"]
    assert row.verdict == "not comparable: other machine (slower (+30%))" and not row.changed
    assert not rows["benchmark.threads"].changed and not rows["benchmark.failed"].changed
