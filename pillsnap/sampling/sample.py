"""What a sample is: the items drawn, what was skipped and why, and the index it is drawn from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class SampleItem:
    path: Path
    label: int
    """Classification: class index. Detection: pill-count stratum (capped at ``MAX_PILL_STRATUM``)."""
    source: str = "base"
    """``base`` or the hardness bin it was added for, e.g. ``hard[0.30,0.60)``."""


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class Sample:
    """A reproducible sample plus everything the report says about it."""

    task: str
    mode: str
    policy: str
    items: list[SampleItem]
    requested: int
    available_images: int
    available_classes: int
    notes: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    hardness: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def sampled_images(self) -> int:
        return len(self.items)

    @property
    def sampled_classes(self) -> int:
        return len({it.label for it in self.items})

    def summary(self) -> str:
        unit = "classes" if self.task == "classification" else "pill-count strata"
        return (
            f"{self.task} sample ({self.mode}): {self.sampled_images} images from {self.sampled_classes} {unit} "
            f"(asked {self.requested}); {len(self.skipped)} skipped"
        )


@dataclass
class DatasetIndex:
    """The validation images of one dataset grouped by stratum (class index or pill count)."""

    root: Path
    groups: dict[int, list[Path]]
    empty_classes: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def image_count(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def without(self, paths: set[Path] | frozenset[Path], why: str) -> DatasetIndex:
        """A copy without ``paths`` (e.g. the INT8 calibration images a gate must not see)."""
        if not paths:
            return self
        gone = {Path(p).resolve() for p in paths}  # the same file by any spelling or link
        groups = {k: [p for p in v if p.resolve() not in gone] for k, v in self.groups.items()}
        removed = self.image_count - sum(len(v) for v in groups.values())
        notes = (
            [*self.notes, f"{removed} image(s) left out: {why}"] if removed else list(self.notes)
        )
        return DatasetIndex(
            self.root,
            {k: v for k, v in groups.items() if v},
            list(self.empty_classes),
            list(self.skipped),
            notes,
        )


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def probe_image(path: Path) -> str | None:
    """Why ``path`` cannot be an image (header check, no full decode), or None when it looks fine.

    Uses the one opener of ``pillsnap.preprocess`` and so the one pixel limit
    (``images.max_pixels``): a sample never holds a file that full decoding would skip.
    """
    from pillsnap.exceptions import DataError
    from pillsnap.preprocess import open_image

    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with open_image(path) as img:
            if img.width <= 0 or img.height <= 0:
                return f"image has size {img.size}"
    except DataError as exc:
        return str(getattr(exc, "reason", exc))
    except OSError as exc:
        return f"not a readable file: {exc.strerror or exc}"
    return None
