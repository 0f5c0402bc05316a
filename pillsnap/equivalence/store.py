"""Persist the per-sample equivalence data of a release, so no notebook computes it twice.

``export.ipynb`` runs the comparison and calls ``save_details(result, release_dir)``;
``equivalence.ipynb`` calls ``load_or_compare(cfg, release_dir)``, which loads
those files, or, in a folder without them, exports and compares itself.

Layout (``<release>/equivalence/``), plain formats that any tool reads:

* ``classification_rows.csv`` -- one row per sampled image (``ClassificationParity.rows``);
* ``detection_diffs.npz``     -- ``iou_diffs`` / ``score_diffs`` of matched boxes;
* ``details.json``            -- metrics, per-class mismatches, borderline cases,
  logit fit, detection examples (boxes per engine), end-to-end disagreements, notes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.fileio import atomic_write_bytes, ensure_dir, save_json

if TYPE_CHECKING:
    import pandas as pd

    from pillsnap.config import Config

log = logging.getLogger(__name__)

FOLDER = "equivalence"
DETAILS_FORMAT = "pillsnap-equivalence-details-v1"
REPORT_NAME = "export_report.json"


@dataclass
class EquivalenceDetails:
    """What the equivalence notebook plots; built from a fresh result or from the saved files."""

    report: dict[str, Any]
    classification_rows: pd.DataFrame | None
    iou_diffs: np.ndarray
    score_diffs: np.ndarray
    classification: dict[str, Any] = field(default_factory=dict)
    detection: dict[str, Any] = field(default_factory=dict)
    end_to_end: dict[str, Any] = field(default_factory=dict)
    source: str = "loaded"
    """``loaded`` (files written by export.ipynb) or ``computed`` (this notebook ran the comparison)."""

    @property
    def failed(self) -> bool:
        return bool(self.report.get("failed"))


def save_details(result: Any, release_dir: str | Path) -> Path:
    """Write the per-sample data of an ``EquivalenceResult`` into ``<release_dir>/equivalence/``."""
    folder = ensure_dir(Path(release_dir) / FOLDER)
    details: dict[str, Any] = {"format": DETAILS_FORMAT}
    if result.classification is not None:
        c = result.classification
        atomic_write_bytes(folder / "classification_rows.csv", c.rows.to_csv(index=False).encode())
        details["classification"] = {
            "metrics": c.metrics,
            "per_class_mismatch": c.per_class_mismatch,
            "borderline": c.borderline,
            "logit_fit": c.logit_fit,
            "notes": c.notes,
        }
    if result.detection is not None:
        d = result.detection
        tmp = folder / ".detection_diffs.tmp.npz"
        np.savez(
            tmp,
            iou_diffs=np.asarray(d.iou_diffs, np.float64),
            score_diffs=np.asarray(d.score_diffs, np.float64),
        )
        tmp.replace(folder / "detection_diffs.npz")
        details["detection"] = {
            "metrics": d.metrics,
            "examples": d.examples,
            "thresholds": d.thresholds,
            "notes": d.notes,
        }
    if result.end_to_end is not None:
        e = result.end_to_end
        details["end_to_end"] = {"metrics": e.metrics, "disagreements": e.disagreements}
    from pillsnap.report.record import to_jsonable

    return save_json(folder / "details.json", to_jsonable(details))


def load_details(release_dir: str | Path) -> EquivalenceDetails | None:
    """The saved details of a release folder, or None when it has none (or no report)."""
    import pandas as pd

    release_dir = Path(release_dir)
    folder = release_dir / FOLDER
    if not (folder / "details.json").is_file() or not (release_dir / REPORT_NAME).is_file():
        return None
    details = json.loads((folder / "details.json").read_text())
    if details.get("format") != DETAILS_FORMAT:
        raise ValueError(
            f"{folder / 'details.json'}: format {details.get('format')!r}, expected {DETAILS_FORMAT!r}"
        )
    rows_path = folder / "classification_rows.csv"
    rows = pd.read_csv(rows_path) if rows_path.is_file() else None
    diffs_path = folder / "detection_diffs.npz"
    iou = score = np.zeros(0)
    if diffs_path.is_file():
        with np.load(diffs_path) as arrays:
            iou, score = arrays["iou_diffs"], arrays["score_diffs"]
    return EquivalenceDetails(
        json.loads((release_dir / REPORT_NAME).read_text()),
        rows,
        iou,
        score,
        details.get("classification", {}),
        details.get("detection", {}),
        details.get("end_to_end", {}),
        source="loaded",
    )


def load_or_compare(cfg: Config, release_dir: str | Path, tag: str = "") -> EquivalenceDetails:
    """Load the release's saved details; without them, run the comparison (exporting if needed).

    A finished release (it has ``manifest.json``) is never modified: a comparison
    for it runs on its ONNX files but writes into a new temporary folder.
    """
    release_dir = Path(release_dir)
    loaded = load_details(release_dir)
    if loaded is not None:
        log.info("equivalence details loaded from %s", release_dir / FOLDER)
        return loaded
    from pillsnap.equivalence import run_equivalence

    onnx = {task: _find_onnx(release_dir, task, tag) for task in ("detection", "classification")}
    out = release_dir
    if (release_dir / "manifest.json").is_file():
        out = Path(tempfile.mkdtemp(prefix="pillsnap-equivalence-"))
        log.info(
            "%s is a finished release: comparing its ONNX files, writing into %s", release_dir, out
        )
    if all(onnx.values()):
        result = run_equivalence(
            cfg,
            classification_onnx=onnx["classification"],
            detection_onnx=onnx["detection"],
            out_dir=out,
            progress=False,
        )
    else:
        from pillsnap.models.export import export_models
        from pillsnap.versioning import prepare_version_tag

        log.info("no ONNX files in %s: exporting both models first", release_dir)
        exports = export_models(cfg, out, tag or prepare_version_tag())
        result = run_equivalence(cfg, exports, out_dir=out, progress=False)
    save_details(result, out)
    details = load_details(out)
    assert details is not None  # just written
    details.source = "computed"
    return details


def _find_onnx(folder: Path, task: str, tag: str) -> Path | None:
    exact = folder / f"{task}-{tag}.onnx"
    if tag and exact.is_file():
        return exact
    found = sorted(p for p in folder.glob(f"{task}-*.onnx") if not p.is_symlink())
    return found[0] if len(found) == 1 else None
