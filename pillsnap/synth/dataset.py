"""Writing the synthetic data set: YOLO detection photos, classifier crops, class map.

Layout under ``out_dir``::

    detection/data.yaml                 one class "pill"; paths relative to the YAML's folder
    detection/images/{train,val}/*.jpg
    detection/labels/{train,val}/*.txt  "0 cx cy w h", normalised
    classification/{train,val}/<class_dir>/*.jpg   crops cut by the ground-truth boxes
    class_map.json                      pillsnap.classmap.ClassMap
    synth.json                          the parameters and the summary of this run

Every photo is seeded from ``(seed, split, index)`` alone, so the val split is the
same whether or not train is generated with it.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pillsnap.exceptions import UserInputError
from pillsnap.fileio import ensure_dir, save_json
from pillsnap.preprocess import crop_box
from pillsnap.synth.classes import PillSpec, build_class_map, make_class_specs
from pillsnap.synth.scene import PHOTO_SIZES, PlacedPill, compose_photo

log = logging.getLogger(__name__)
SPLITS = ("train", "val")
_SPLIT_IDS = {"train": 1, "val": 2}
_PX_PER_MM = (5.5, 8.0)
CROP_QUALITY = 95


@dataclass
class SynthSummary:
    out_dir: str
    num_classes: int
    seed: int
    photos: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    crops: dict[str, int] = field(default_factory=dict)
    bytes_on_disk: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        rows = [
            f"synthetic data set in {self.out_dir} (seed {self.seed}, {self.num_classes} classes)"
        ]
        for split in sorted(set(self.photos) | set(self.crops), key=SPLITS.index):
            rows.append(
                f"  {split:<5}: {self.photos.get(split, 0):6d} photos, {self.boxes.get(split, 0):6d} boxes, "
                f"{self.crops.get(split, 0):6d} crops"
            )
        rows.append(f"  {self.bytes_on_disk / 1e6:.1f} MB on disk, {self.seconds:.1f} s")
        return "\n".join(rows)


def photo_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_IDS[split], 0, index])


def render_photo(
    specs: list[PillSpec], seed: int, split: str, index: int
) -> tuple[bytes, list[PlacedPill]]:
    """JPEG bytes of photo ``index`` of ``split`` and its pills; a pure function of its arguments."""
    rng = photo_rng(seed, split, index)
    size = PHOTO_SIZES[int(rng.integers(len(PHOTO_SIZES)))]
    class_ids = [int(c) for c in rng.integers(len(specs), size=int(rng.integers(1, 7)))]
    pixels, placed = compose_photo(rng, specs, class_ids, size, float(rng.uniform(*_PX_PER_MM)))
    return _jpeg(pixels, int(rng.integers(55, 96))), placed


def render_single_crop(
    specs: list[PillSpec], seed: int, split: str, class_id: int, k: int, padding: float = 0.0
) -> Image.Image:
    """A one-pill close-up, cropped by its box: fast crops for the many-class mode."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], 1, class_id, k])
    px_per_mm = float(rng.uniform(*_PX_PER_MM))
    side = int(specs[class_id].length_mm * px_per_mm * 1.45) + 24  # fits any pill turned 45 deg
    pixels, placed = compose_photo(rng, specs, [class_id], (side, side), px_per_mm)
    if not placed:  # the canvas is sized to fit any pose, so this is our bug
        raise RuntimeError(f"class {class_id}: pill did not fit its {side}x{side} canvas")
    photo = Image.open(io.BytesIO(_jpeg(pixels, int(rng.integers(55, 96)))))
    return crop_box(photo, placed[0].box, padding)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def yolo_label_lines(placed: list[PlacedPill], width: int, height: int) -> list[str]:
    """Ultralytics label rows: class 0 ("pill"), centre/size normalised to [0, 1]."""
    rows = []
    for p in placed:
        x1, y1, x2, y2 = p.box
        rows.append(
            f"0 {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
            f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
        )
    return rows


def generate_dataset(
    out_dir: str | Path = "data/synthetic",
    num_classes: int = 40,
    seed: int = 0,
    splits: Iterable[str] = SPLITS,
    train_photos: int = 1000,
    val_photos: int = 200,
    force: bool = False,
    detection: bool = True,
    crops_per_class: int = 1,
    crop_padding: float = 0.0,
    progress: bool = False,
) -> SynthSummary:
    """Generate the data set; returns what was written.

    ``detection=False`` skips the photos and writes ``crops_per_class`` one-pill crops
    per class and split (the many-class scale test: ``num_classes=5000``).
    """
    splits = tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise UserInputError(f"unknown split(s) {bad or splits}; expected some of {list(SPLITS)}")
    if num_classes < 2:
        raise UserInputError(f"--classes must be at least 2, got {num_classes}")
    out = Path(out_dir)
    _prepare_out_dir(out, splits, force)
    start = time.perf_counter()
    specs = make_class_specs(num_classes, seed)
    class_map = build_class_map(specs, seed)
    class_map.save(out / "class_map.json")
    dirs = [c.class_dir for c in class_map.classes]
    summary = SynthSummary(str(out.resolve()), num_classes, seed)
    counts = {"train": train_photos, "val": val_photos}
    for split in splits:
        for d in dirs:
            ensure_dir(out / "classification" / split / d)
        if detection:
            _write_detection_split(
                out, specs, dirs, seed, split, counts[split], crop_padding, summary, progress
            )
        else:
            _write_crop_split(
                out, specs, dirs, seed, split, crops_per_class, crop_padding, summary, progress
            )
    if detection:
        _write_data_yaml(out / "detection" / "data.yaml")
    summary.seconds = round(time.perf_counter() - start, 2)
    summary.bytes_on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    save_json(
        out / "synth.json",
        {
            "parameters": {
                "num_classes": num_classes,
                "seed": seed,
                "splits": list(splits),
                "train_photos": train_photos,
                "val_photos": val_photos,
                "detection": detection,
                "crops_per_class": crops_per_class,
                "crop_padding": crop_padding,
            },
            "summary": summary.to_dict(),
        },
    )
    log.debug("%s", summary.format())
    return summary


def _prepare_out_dir(out: Path, splits: tuple[str, ...], force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; expected a folder (new or empty)")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserInputError(
                f"refusing to write into non-empty folder {out}; pass --force (force=True) "
                "to replace the generated splits there, or choose another --out"
            )
        for split in splits:  # only what this run rewrites; other files stay
            for sub in (
                out / "detection" / "images" / split,
                out / "detection" / "labels" / split,
                out / "classification" / split,
            ):
                shutil.rmtree(sub, ignore_errors=True)
            (out / "detection" / "labels" / f"{split}.cache").unlink(
                missing_ok=True
            )  # Ultralytics label cache
    ensure_dir(out)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


def _write_detection_split(
    out: Path,
    specs: list[PillSpec],
    dirs: list[str],
    seed: int,
    split: str,
    count: int,
    padding: float,
    summary: SynthSummary,
    progress: bool,
) -> None:
    img_dir = ensure_dir(out / "detection" / "images" / split)
    lbl_dir = ensure_dir(out / "detection" / "labels" / split)
    boxes = crops = 0
    with _progress(count, f"synth {split}", progress) as bar:
        for i in range(count):
            data, placed = render_photo(specs, seed, split, i)
            stem = f"{split}_{i:06d}"
            (img_dir / f"{stem}.jpg").write_bytes(data)
            photo = Image.open(io.BytesIO(data))
            photo.load()
            lines = yolo_label_lines(placed, *photo.size)
            (lbl_dir / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
            for k, p in enumerate(placed):
                crop = crop_box(photo, p.box, padding)
                crop.save(
                    out / "classification" / split / dirs[p.class_id] / f"{stem}_{k}.jpg",
                    quality=CROP_QUALITY,
                )
            boxes += len(placed)
            crops += len(placed)
            bar.update(1)
    summary.photos[split], summary.boxes[split], summary.crops[split] = count, boxes, crops


def _write_crop_split(
    out: Path,
    specs: list[PillSpec],
    dirs: list[str],
    seed: int,
    split: str,
    per_class: int,
    padding: float,
    summary: SynthSummary,
    progress: bool,
) -> None:
    total = len(specs) * per_class
    with _progress(total, f"synth {split} crops", progress) as bar:
        for cid, d in enumerate(dirs):
            for k in range(per_class):
                crop = render_single_crop(specs, seed, split, cid, k, padding)
                crop.save(
                    out / "classification" / split / d / f"{split}_{cid:05d}_{k}.jpg",
                    quality=CROP_QUALITY,
                )
                bar.update(1)
    summary.crops[split] = total


def _write_data_yaml(path: Path) -> None:
    # No `path:` key: Ultralytics then resolves train/val against this file's folder,
    # so the data set can be moved or regenerated elsewhere without editing it.
    text = (
        "# generated by `pillsnap synth`\n"
        "train: images/train\n"
        "val: images/val\n"
        "nc: 1\n"
        "names:\n  0: pill\n"
    )
    path.write_text(text)
