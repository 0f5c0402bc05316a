from pathlib import Path

import pytest

from pillsnap.config import Config, apply_overrides, load_config
from pillsnap.exceptions import ConfigError, MissingPathError

ROOT = Path(__file__).resolve().parents[1]


def test_root_config_describes_production():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg.detection.architecture == "yolo11m" and cfg.detection.imgsz == 640
    assert cfg.classification.backbone == "efficientnetv2_s"
    assert cfg.classification.num_classes == 5000 and cfg.classification.img_size == 384
    assert cfg.classification_input_shape == [1, 3, 384, 384]
    assert cfg.export.opset == 17 and cfg.export.dynamic is True
    assert cfg.postprocess.nms.conf_threshold == 0.3 and cfg.postprocess.nms.iou_threshold == 0.5
    assert cfg.paths.exp_dir.is_absolute()  # resolved against the file's folder


def test_relative_paths_resolve_against_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    cfg_file = tmp_path / "sub" / "c.yaml"
    cfg_file.write_text("paths:\n  exp_dir: ../exp\n  out_dir: out\n")
    cfg = load_config(cfg_file)
    assert cfg.paths.exp_dir == (tmp_path / "exp").resolve()
    assert cfg.paths.out_dir == (tmp_path / "sub" / "out").resolve()
    assert cfg.source == cfg_file.resolve()


def test_dotted_overrides_are_typed(tmp_path):
    cfg = load_config(
        ROOT / "config.yaml", ["export.opset=18", "compare.mode=smoke", "paths.out_dir=x"]
    )
    assert cfg.export.opset == 18 and cfg.compare.mode == "smoke"
    assert cfg.paths.out_dir == Path("x").resolve()
    again = apply_overrides(cfg, {"classification.img_size": 256})
    assert again.classification_input_shape == [1, 3, 256, 256] and again.export.opset == 18


def test_unknown_key_names_nearest_valid_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "config.yaml", ["export.opest=18"])
    assert "export.opest" in str(err.value) and "did you mean `export.opset`" in str(err.value)


def test_unknown_key_in_file_is_reported(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("classification:\n  backbon: x\n")
    with pytest.raises(ConfigError, match="classification.backbone"):
        load_config(f)


def test_wrong_type_names_key_expected_and_given():
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "config.yaml", ["export.opset=seventeen"])
    msg = str(err.value)
    assert "`export.opset`" in msg and "expected an integer" in msg and "'seventeen'" in msg


def test_all_problems_are_collected_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "config.yaml", ["export.opset=x", "compare.mode=fast", "serve.prot=1"])
    assert len(err.value.problems) == 3


def test_missing_config_file_names_path(tmp_path):
    with pytest.raises(MissingPathError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_env_var_selects_config(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("export:\n  opset: 18\n")
    monkeypatch.setenv("PILLSNAP_CONFIG", str(f))
    assert load_config().export.opset == 18


def test_missing_checkpoint_names_path_and_key(tmp_path):
    cfg = load_config(ROOT / "config.yaml", [f"paths.exp_dir={tmp_path}"])
    with pytest.raises(MissingPathError) as err:
        cfg.checkpoint_path("classification")
    msg = str(err.value)
    assert (
        str(tmp_path / "checkpoints" / "classification_best.pt") in msg and "paths.exp_dir" in msg
    )


def test_export_input_shape_sets_model_size():
    cfg = Config.model_validate({"export": {"classification_input_shape": [1, 3, 224, 224]}})
    assert cfg.classification.img_size == 224 and cfg.classification.crop_size == 224
    with pytest.raises(ConfigError):
        load_config(ROOT / "config.yaml", ["export.classification_input_shape=[1,3,224,200]"])


def test_snapshot_round_trips():
    cfg = load_config(ROOT / "config.yaml")
    assert Config.model_validate(cfg.snapshot()).snapshot() == cfg.snapshot()


def test_export_input_shape_carries_an_explicit_crop_along():
    cfg = Config.model_validate(
        {
            "classification": {"img_size": 128, "preprocessing": {"resize": 146, "crop": 128}},
            "export": {"classification_input_shape": [1, 3, 256, 256]},
        }
    )
    assert cfg.classification.crop_size == 256 and cfg.classification.img_size == 256
    assert cfg.classification.resize_size == 292  # crop_pct 128/146 kept
