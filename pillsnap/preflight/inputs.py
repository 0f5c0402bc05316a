"""What a run reads: the two checkpoints, the class map, the validation data.

Each check returns one line saying what it verified, or raises ``UserInputError``
whose message names the file, what was found, what was expected and the config key
to fix. None of them runs code from a file (checkpoints are read weights-only).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import CheckpointError, DataError, MissingPathError

if TYPE_CHECKING:
    from pillsnap.classmap import ClassMap
    from pillsnap.config import Config

PROBED_IMAGES = 8
"""Images opened (header only) per dataset to prove it holds readable images."""


def check_detection_checkpoint(cfg: Config, path: Path | None = None) -> str:
    """Weights-only load, a detection model with ``detection.num_classes`` classes, built
    from ``detection.architecture``."""
    from pillsnap.models.detector import detector_architecture, load_detection_model

    model = load_detection_model(cfg, path, fuse=False)
    path = path or cfg.checkpoint_path("detection")
    arch = detector_architecture(model)
    want = cfg.detection.architecture
    if arch and want and arch != Path(want).stem:
        raise CheckpointError(
            f"{path}: the detector was built from {arch}.yaml, the config says "
            f"`detection.architecture={want}`; set `detection.architecture={arch}` or pick the "
            f"{want} checkpoint (config key `detection.checkpoint`)"
        )
    return f"detection checkpoint {path}: {arch or want}, {cfg.detection.num_classes} class(es), weights-only"


def check_classification_checkpoint(
    cfg: Config, path: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """Weights-only load that fits ``classification.backbone`` / ``num_classes`` strictly."""
    from pillsnap.models.classifier import check_classification_checkpoint as check

    path, meta = check(cfg, path)
    c = cfg.classification
    return (
        f"classification checkpoint {path}: {c.backbone}, {c.num_classes} classes, weights-only",
        meta,
    )


def check_class_map(cfg: Config) -> ClassMap:
    """The configured class map: valid, and one class per classifier output."""
    from pillsnap.classmap import ClassMap

    class_map = ClassMap.load(cfg.paths.class_map_path)
    n = cfg.classification.num_classes
    if len(class_map) != n:
        raise DataError(
            f"class map {cfg.paths.class_map_path} has {len(class_map)} classes, the classifier "
            f"has {n} outputs (`classification.num_classes`); point `paths.class_map` at the class "
            f"map the model was trained with."
        )
    return class_map


def check_trained_digest(
    cfg: Config, class_map: ClassMap, meta: dict[str, Any], path: Path
) -> None:
    """The class map must be the one the classifier was trained with (digest in the checkpoint)."""
    trained = meta.get("class_map_digest")
    if isinstance(trained, str) and trained and trained != class_map.digest():
        raise DataError(
            f"class map {cfg.paths.class_map_path} is not the one {path} was trained with "
            f"(digest {class_map.digest()[:12]}..., the checkpoint records {trained[:12]}...): "
            f"every pill would get another pill's edi_code. Point `paths.class_map` at the "
            f"training run's class map."
        )


def _probe(images: list[Path], what: str, key: str) -> str:
    from pillsnap.sampling.sample import probe_image

    problems = []
    for path in images[:PROBED_IMAGES]:
        reason = probe_image(path)
        if reason is None:
            return ""
        problems.append(f"{path.name}: {reason}")
    raise DataError(
        f"the {what} images (from `{key}`) are not readable: the first {len(problems)} tried "
        f"failed ({'; '.join(problems[:3])}). Regenerate the data or fix `{key}`."
    )


def check_classification_data(cfg: Config, class_map: ClassMap | None) -> str:
    """``val/<class_dir>/`` folders with readable images (only the folder without a class map)."""
    from pillsnap.config import require_path
    from pillsnap.sampling.classification import index_classification

    root = require_path(
        cfg.paths.classification_data, "paths.classification_data", "the classification data"
    )
    if class_map is None:  # the class map check failed already: say what else is wrong
        if not (root / "val").is_dir():
            raise MissingPathError(
                f"classification validation folder not found: {root / 'val'} (config key "
                f"`paths.classification_data` must hold val/<class_dir>/)"
            )
        return ""
    index = index_classification(root, class_map)
    groups = [paths for _, paths in sorted(index.groups.items())]
    _probe([g[0] for g in groups], "classification validation", "paths.classification_data")
    return (
        f"classification data {index.root}: {index.image_count} images in {len(groups)} classes"
        + (f", {len(index.empty_classes)} empty" if index.empty_classes else "")
    )


def check_detection_data(cfg: Config) -> str:
    from pillsnap.config import require_path
    from pillsnap.sampling.detection import index_detection

    data = require_path(cfg.paths.detection_data, "paths.detection_data", "the detection data YAML")
    if data.is_dir():
        raise MissingPathError(
            f"`paths.detection_data` is the folder {data}; it must name the Ultralytics data "
            f"YAML (e.g. {data / 'data.yaml'})"
        )
    index = index_detection(data)
    photos = [p for _, paths in sorted(index.groups.items()) for p in paths[:2]]
    _probe(photos, "detection validation", "paths.detection_data")
    return f"detection data {data}: {index.image_count} photos"
