"""The demo experiment exported once per test session, for the equivalence and fault tests.

``demo_release(tmp_path_factory)`` returns ``(cfg, exports)``: the config of
``examples/synthetic`` (its val split from ``data/synthetic`` when generated, else
regenerated into a session folder with the same seed) and both models exported
into a session folder. Cached at module level so that every test module of the
session shares one export (candidate for a session fixture in conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pillsnap.config import Config, apply_overrides, load_config

DEMO = Path(__file__).resolve().parents[1] / "examples" / "synthetic"
_CACHE: dict[str, Any] = {}


def demo_available() -> bool:
    ckpts = DEMO / "checkpoints"
    return (ckpts / "detection_best.pt").exists() and (ckpts / "classification_best.pt").exists()


def _val_data(cfg: Config, root: Path) -> Config:
    """The configured val split if present, else the demo's val split regenerated under ``root``."""
    from pillsnap.classmap import ClassMap
    from pillsnap.synth import generate_dataset

    det, cls = cfg.paths.detection_data, cfg.paths.classification_data
    if det and Path(det).exists() and cls and (Path(cls) / "val").is_dir():
        return cfg
    synth = Path(cls).parent / "synth.json" if cls else None
    params = json.loads(synth.read_text())["parameters"] if synth and synth.exists() else {}
    out = root / "synthetic"
    generate_dataset(
        out,
        num_classes=cfg.classification.num_classes,
        seed=params.get("seed", 0),
        splits=("val",),
        val_photos=params.get("val_photos", 200),
        force=True,
    )
    want = ClassMap.load(cfg.paths.class_map_path).digest()
    if ClassMap.load(out / "class_map.json").digest() != want:
        raise RuntimeError(
            "regenerated synthetic val split has another class map than examples/synthetic; "
            "regenerate data/synthetic with `pillsnap synth` using the demo's seed"
        )
    return apply_overrides(
        cfg,
        {
            "paths.detection_data": str(out / "detection" / "data.yaml"),
            "paths.classification_data": str(out / "classification"),
        },
    )


def demo_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict[str, Any]]:
    """``(cfg, exports)`` of the demo experiment; skips when the fixture models are not trained yet."""
    if not demo_available():
        pytest.skip(
            "examples/synthetic/checkpoints are not trained yet (run `pillsnap synth train`)"
        )
    if "release" not in _CACHE:
        from pillsnap.models.export import export_models

        root = tmp_path_factory.mktemp("demo-release")
        cfg = load_config(DEMO / "config.yaml", {"paths.out_dir": str(root / "runs")})
        cfg = _val_data(cfg, root)
        _CACHE["release"] = (
            cfg,
            export_models(cfg, root / "release", tag="20250101-000000-test000"),
        )
    return _CACHE["release"]
