from pathlib import Path

import pytest
import yaml

from pillsnap.environment import project_root
from pillsnap.exceptions import EquivalenceError
from pillsnap.report import notebook

REPO = Path(__file__).resolve().parents[2]


def test_resolve_path_works_from_repo_root_and_notebooks(monkeypatch, tmp_path):
    assert project_root() == REPO
    for cwd in (REPO, REPO / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        assert notebook.resolve_path("pyproject.toml") == REPO / "pyproject.toml"
        assert notebook.resolve_path("runs/not-yet") == REPO / "runs" / "not-yet"
    (tmp_path / "local.yaml").write_text("{}")
    assert (
        notebook.resolve_path("local.yaml") == tmp_path / "local.yaml"
    )  # the cwd wins when it has the file
    assert notebook.resolve_path(tmp_path / "x") == tmp_path / "x"


def test_open_stage_maps_parameters_to_overrides(tmp_path):
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({"paths": {"exp_dir": "exp"}, "export": {"opset": 17}}))
    stage = notebook.open_stage("export", str(cfg_file))
    assert stage.standalone and stage.out_dir.is_dir()
    assert stage.out_dir.parent == REPO / "runs" / "scratch"  # git-ignored, whatever the cwd
    assert stage.out_dir.name.startswith(f"export-{stage.tag}-")
    assert stage.cfg.export.opset == 17 and stage.cfg.paths.exp_dir == tmp_path / "exp"
    stage.out_dir.rmdir()
    out = tmp_path / "release"
    stage = notebook.open_stage(
        "export",
        str(cfg_file),
        exp_dir=str(tmp_path / "other"),
        out_dir=str(out),
        opset=18,
        compare_mode="full",
        version_tag="t1",
        overrides=["compare.seed=3"],
    )
    assert not stage.standalone and stage.out_dir == out and stage.tag == "t1"
    cfg = stage.cfg
    assert (cfg.export.opset, cfg.compare.mode, cfg.compare.seed) == (18, "full", 3)
    assert cfg.paths.exp_dir == tmp_path / "other"


def test_raise_if_failed_names_reason_and_cause():
    notebook.raise_if_failed({"failed": False})
    report = {
        "failed": True,
        "failure_reason": "classification.mse_mean = 0.1 > 1e-4",
        "verdict": {
            "likely_causes": [{"title": "normalisation mismatch", "advice": "check mean/std"}]
        },
    }
    with pytest.raises(
        EquivalenceError, match="mse_mean = 0.1 > 1e-4.*normalisation mismatch: check mean/std"
    ):
        notebook.raise_if_failed(report)
