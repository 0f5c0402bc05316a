"""Helpers of the hardening tests (tests/hardening/): payload checkpoints, projects, tree hashes.

* ``Payload`` pickles as a call of ``os.system("touch MARKER")``: a checkpoint holding one
  runs it when something unpickles it fully, so "the marker never appears" proves that
  nothing did.
* ``project(...)`` lays out a config in a temporary folder around the tiny experiment of
  ``_tiny.tiny_release_inputs`` (built once per session, linked, never copied), with a
  notebooks folder holding a fast fake stage that writes a valid release.
* ``tree(root)`` maps every path under ``root`` to its sha256 (or link target), so a test
  can assert that a refused command changed nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import nbformat
import yaml
from _tiny import TINY, python3_notebook, tiny_project_config, tiny_release_inputs

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "synthetic"


class Payload:
    """An object whose unpickling runs ``touch <marker>`` (what a malicious checkpoint carries)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_classifier(path: Path, marker: Path, tiny: Path) -> Path:
    """The tiny classifier's own checkpoint, plus a payload in its metadata."""
    import torch

    good = torch.load(tiny / "exp" / "checkpoints" / "classification_best.pt", weights_only=True)
    torch.save({**good, "extra": Payload(marker)}, path)
    return path


def payload_detector(path: Path, marker: Path, imgsz: int = 160) -> Path:
    """An Ultralytics-style detector checkpoint whose ``train_args`` carry a payload."""
    import torch

    from pillsnap.models.detector import build_detection_model

    model = build_detection_model(TINY["detection"]["architecture"], 1).half()
    ckpt = {"model": model, "ema": None, "train_args": {"task": "detect", "imgsz": imgsz}}
    ckpt["train_args"]["note"] = Payload(marker)
    torch.save(ckpt, path)
    return path


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` -> sha256 / link target / "dir" (nothing followed)."""
    out: dict[str, str] = {}
    root = Path(root)
    if not root.exists():
        return out
    for base, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(base) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


PARAMS = """config_path: str = ""  # config YAML
exp_dir: str = ""  # experiment folder
out_dir: str = ""  # release folder to write into
opset: int = 0  # ONNX opset
compare_mode: str = ""  # smoke | coverage | full
version_tag: str = ""  # release tag
overrides: list = []  # config overrides"""

FAKE_STAGE = """
import hashlib, json
from pathlib import Path
out = Path(out_dir)
report = json.loads(Path(REPORT).read_text())
report["version_tag"] = version_tag
for task in ("detection", "classification"):
    data = b"fake onnx " + task.encode() * 64
    (out / f"{task}-{version_tag}.onnx").write_bytes(data)
    report["models"][task].update(onnx_path=str(out / f"{task}-{version_tag}.onnx"),
                                  onnx_sha256=hashlib.sha256(data).hexdigest())
Path(out, "export_report.json").write_text(json.dumps(report))
"""


def project(root: Path, factory: Any, **config: Any) -> dict[str, Path]:
    """A config (``root/config.yaml``) over the tiny experiment, its data and a fake stage.

    ``config`` entries are dotted keys merged into the YAML (``paths__class_map=...`` style
    is not needed: pass nested dicts under the section name).
    """
    from _report_example import example_report

    raw: dict[str, Any] = tiny_project_config(factory, root)
    tiny, exp = tiny_release_inputs(factory), root / "exp"
    nb_dir = root / "notebooks"
    nb_dir.mkdir()
    template = root / "report_template.json"
    template.write_text(json.dumps(example_report()))
    body = textwrap.dedent(FAKE_STAGE).replace("REPORT", repr(str(template)))
    nbformat.write(python3_notebook(body, parameters=PARAMS), nb_dir / "good.ipynb")
    raw["release"] = {"stages": ["good"], "notebooks_dir": "notebooks"}
    for section, values in config.items():
        raw.setdefault(section, {}).update(values)
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return {
        "root": root,
        "config": root / "config.yaml",
        "exp": exp,
        "out": root / "runs",
        "tiny": tiny,
        "notebooks": nb_dir,
    }


def release_args(p: dict[str, Path], *extra: str) -> list[str]:
    return ["--config", str(p["config"]), *extra]


class ConstructorPayload:
    """A pickle that *calls* ``DetectionModel(cfg)`` (REDUCE) instead of rebuilding one from its
    state: ``parse_model`` then ``eval``s the yaml's activation string. Only allow-listed classes
    appear in the file, so a plain allow-list of model classes would run it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        from ultralytics.nn.tasks import DetectionModel

        cfg = {
            "nc": 1,
            "activation": f"__import__('os').system('touch {self.marker}') or nn.SiLU()",
            "backbone": [[-1, 1, "Conv", [16, 3, 2]]],
            "head": [[-1, 1, "Conv", [16, 3, 2]]],
        }
        return (DetectionModel, (cfg, 3, None, False))
