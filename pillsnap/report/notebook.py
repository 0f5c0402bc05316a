"""What the release notebooks call, so that they stay narration plus a dozen short calls.

``open_stage`` turns a notebook's parameters into a validated config, an output
folder and a version tag; the table helpers return pandas DataFrames the
notebook displays (environment, checkpoints, ONNX inputs/outputs, metadata);
``raise_if_failed`` makes a failed gate fail the cell, so papermill marks it and
the release fails.

Relative paths in notebook parameters work from the repository root *and* from
``notebooks/`` (nbval starts kernels there): see ``resolve_path``.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.config import Config, load_config
from pillsnap.exceptions import EquivalenceError, UserInputError

if TYPE_CHECKING:
    import pandas as pd

    from pillsnap.models.common import ExportResult

log = logging.getLogger(__name__)
SCRATCH_DIR = "runs/scratch"
"""Where notebooks run without ``out_dir`` write (relative to the project root; git-ignored)."""


def resolve_path(path: str | Path) -> Path:
    """Absolute ``path``: as given when absolute or present under the cwd, else under the project root.

    The project root is the checkout holding this package (``pyproject.toml``);
    paths that exist nowhere yet resolve against it too, so a default output folder
    lands in the same git-ignored place whichever folder the kernel started in.
    """
    from pillsnap.environment import project_root

    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    root = project_root()
    return (root / p).resolve() if root is not None else p.resolve()


@dataclass
class Stage:
    """One notebook run: its config, the folder it writes into, the release tag."""

    name: str
    cfg: Config
    out_dir: Path
    tag: str
    standalone: bool
    """True when the notebook runs on its own (no release driver): it writes into a new scratch folder."""


def open_stage(
    name: str,
    config_path: str = "",
    exp_dir: str = "",
    out_dir: str = "",
    opset: int = 0,
    compare_mode: str = "",
    version_tag: str = "",
    overrides: list[str] | None = None,
) -> Stage:
    """Notebook parameters -> ``Stage``. Empty / zero parameters keep the config's value.

    ``out_dir=""`` makes a new folder ``runs/scratch/<stage>-<tag>-<random>/`` under the
    project root (git-ignored, emptied by ``make clean-runs``), so a standalone or nbval
    run never writes into a shared or committed place; the release driver passes the
    ``runs/<tag>.partial`` folder instead.
    """
    from pillsnap.names import check_tag, record_of
    from pillsnap.preprocess import apply_image_limits
    from pillsnap.versioning import prepare_version_tag

    # Stages run with progress bars off; tqdm.auto's "IProgress not found" hint is noise in a record.
    warnings.filterwarnings("ignore", message="IProgress not found")
    extra = list(overrides or [])
    if exp_dir:
        extra.append(f"paths.exp_dir={resolve_path(exp_dir)}")
    if opset:
        extra.append(f"export.opset={int(opset)}")
    if compare_mode:
        extra.append(f"compare.mode={compare_mode}")
    cfg = load_config(resolve_path(config_path) if config_path else None, extra)
    apply_image_limits(cfg)
    tag = check_tag(version_tag or prepare_version_tag(), "the version_tag parameter")
    if out_dir:
        folder = resolve_path(out_dir)
        record = record_of(folder)
        if record is not None:
            raise UserInputError(
                f"out_dir {folder} is inside the release record {record}, which its manifest "
                "seals; run the notebook into a new folder (or leave out_dir empty: runs/scratch/)"
            )
        folder.mkdir(parents=True, exist_ok=True)
    else:
        scratch = resolve_path(SCRATCH_DIR)
        scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-{tag}-", dir=scratch))
    log.info("stage %s: tag %s, writing into %s", name, tag, folder)
    return Stage(name, cfg, folder, tag, standalone=not out_dir)


def environment_table() -> pd.DataFrame:
    """Library versions, ONNX Runtime providers and the Torch device, one row each."""
    import pandas as pd

    from pillsnap.environment import available_providers, library_versions, resolve_torch_device

    rows = [{"item": name, "value": version} for name, version in library_versions().items()]
    rows.append(
        {"item": "onnxruntime providers", "value": ", ".join(available_providers()) or "none"}
    )
    rows.append(
        {"item": "torch device (runtime.torch_device=auto)", "value": resolve_torch_device("auto")}
    )
    return pd.DataFrame(rows)


def checkpoint_table(cfg: Config) -> pd.DataFrame:
    """The two checkpoints the config points at: path, size, sha256, configured model."""
    import pandas as pd

    from pillsnap.fileio import sha256_file

    rows = []
    for task, arch, classes in (
        ("detection", cfg.detection.architecture, cfg.detection.num_classes),
        ("classification", cfg.classification.backbone, cfg.classification.num_classes),
    ):
        path = cfg.checkpoint_path(task)  # type: ignore[arg-type]
        rows.append(
            {
                "task": task,
                "checkpoint": _short(path, cfg),
                "size_mb": round(path.stat().st_size / 1e6, 2),
                "sha256": sha256_file(path)[:16],
                "architecture": arch,
                "classes": classes,
            }
        )
    return pd.DataFrame(rows)


def onnx_table(exports: dict[str, ExportResult]) -> pd.DataFrame:
    """One row per exported model: file, opset, inputs/outputs with their dynamic axes, params."""
    import pandas as pd

    rows = []
    for task, res in exports.items():
        rows.append(
            {
                "task": task,
                "onnx": Path(res.onnx_path).name,
                "opset": res.opset,
                "inputs": ", ".join(res.input_names),
                "input_shape": "x".join(map(str, res.input_shape)),
                "outputs": ", ".join(res.output_names),
                "dynamic_axes": "; ".join(
                    f"{name}: {dict(axes)}" for name, axes in res.dynamic_axes.items()
                ),
                "params_million": round(res.params_million, 3),
                "classes": res.num_classes,
            }
        )
    return pd.DataFrame(rows)


def onnx_metadata_table(exports: dict[str, ExportResult]) -> pd.DataFrame:
    """The metadata each ONNX file carries, read back from the file (not from memory)."""
    import pandas as pd

    from pillsnap.models.common import read_onnx_metadata

    rows = [
        {"task": task, "key": key, "value": value}
        for task, res in exports.items()
        for key, value in sorted(read_onnx_metadata(res.onnx_path).items())
        if key != "names"
    ]
    return pd.DataFrame(rows)


def raise_if_failed(report: dict[str, Any]) -> None:
    """Raise ``EquivalenceError`` with the report's reason when a gate failed (the cell fails).

    Papermill then marks this cell, writes the notebook with the error shown and the
    release driver keeps the run as ``<tag>.failed``.
    """
    if report.get("failed"):
        causes = report.get("verdict", {}).get("likely_causes") or []
        hint = f" Likely cause: {causes[0]['title']}: {causes[0]['advice']}" if causes else ""
        raise EquivalenceError(
            f"Torch/ONNX equivalence failed: {report.get('failure_reason')}.{hint}"
        )


def _short(path: Path, cfg: Config) -> str:
    try:
        return str(path.relative_to(cfg.paths.exp_dir.parent))
    except ValueError:
        return str(path)
