"""Training the fixture classifier: a small timm EfficientNetV2 from scratch on the crops.

Validation uses exactly the release's transform (``pillsnap.preprocess.preprocess`` with
``PreprocessSpec.from_config(cfg.classification)``), so the accuracy recorded here is
the accuracy the Torch and ONNX paths will reproduce. Training augmentation only
moves the box edges and turns the crop by quarter turns: colour is a class feature,
so hue is never jittered.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance

from pillsnap.classmap import ClassMap
from pillsnap.exceptions import DataError
from pillsnap.preprocess import PreprocessSpec, load_image, preprocess, preprocess_one

if TYPE_CHECKING:
    from pillsnap.config import Config

log = logging.getLogger(__name__)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ClassifierTrainSpec:
    """Every knob of the classifier run; recorded in fixture_quality.json."""

    epochs: int = 10
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 0.5
    box_jitter: float = 0.08
    """Each crop edge moves by up to this share of the crop size (imprecise detector boxes)."""
    seed: int = 0
    threads: int = 2


def list_split(root: Path, split: str, class_map: ClassMap) -> list[tuple[Path, int]]:
    """``(image path, class index)`` for ``root/split/<class_dir>/*``, sorted for determinism."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"classification split not found: {split_dir}; run `pillsnap synth` first")
    index = class_map.index_of_dir()
    unknown = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name not in index)
    if unknown:
        raise DataError(f"{split_dir} has class folders not in the class map: {unknown[:5]}")
    items = [
        (p, index[d.name])
        for d in sorted(split_dir.iterdir())
        if d.is_dir()
        for p in sorted(d.iterdir())
        if p.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not items:
        raise DataError(f"no images under {split_dir}/<class_dir>/")
    return items


def _augment(img: Image.Image, rng: np.random.Generator, jitter: float) -> Image.Image:
    w, h = img.size
    dx1, dy1, dx2, dy2 = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
    box = (round(max(0, dx1)), round(max(0, dy1)), round(min(w, w - dx2)), round(min(h, h - dy2)))
    if box[2] - box[0] >= 8 and box[3] - box[1] >= 8:
        img = img.crop(box)
    k = int(rng.integers(4))
    if k:
        img = img.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[k - 1])
    return ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))


def evaluate_classifier(
    model, items: list[tuple[Path, int]], spec: PreprocessSpec, batch: int = 64
) -> dict:
    """Top-1 / top-5 with the release preprocessing (``preprocess`` on the file paths)."""
    import torch

    model.eval()
    correct1 = correct5 = 0
    with torch.inference_mode():
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            logits = model(torch.from_numpy(preprocess([p for p, _ in chunk], spec)))
            labels = torch.tensor([y for _, y in chunk])
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(dim=1).sum())
    n = max(len(items), 1)
    return {
        "top1": round(correct1 / n, 4),
        "top5": round(correct5 / n, 4),
        "val_images": len(items),
    }


def train_classifier(
    cfg: Config, class_map: ClassMap, out_ckpt: str | Path, spec: ClassifierTrainSpec
) -> dict:
    """Train from scratch, keep the best epoch on val, save it fp16 with the release meta."""
    import torch

    from pillsnap.models.classifier import (
        build_classification_model,
        save_classification_checkpoint,
    )

    torch.manual_seed(spec.seed)
    torch.set_num_threads(spec.threads)
    root = Path(cfg.paths.classification_data)
    pre = PreprocessSpec.from_config(cfg.classification)
    train_items, val_items = (
        list_split(root, "train", class_map),
        list_split(root, "val", class_map),
    )
    if cfg.classification.num_classes != len(class_map):
        raise DataError(
            f"classification.num_classes is {cfg.classification.num_classes} but the class map "
            f"has {len(class_map)} classes; make them agree in the config"
        )
    images = [load_image(p) for p, _ in train_items]
    labels = np.asarray([y for _, y in train_items])
    model = build_classification_model(cfg.classification.backbone, len(class_map))
    steps_per_epoch = int(np.ceil(len(images) / spec.batch))
    total, warmup = spec.epochs * steps_per_epoch, int(spec.warmup_epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / max(warmup, 1)
            if s < warmup
            else 0.5 * (1 + np.cos(np.pi * (s - warmup) / max(total - warmup, 1)))
        ),
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing)
    rng = np.random.default_rng(spec.seed)
    start, best, history = time.perf_counter(), None, []
    for epoch in range(spec.epochs):
        model.train()
        order, losses = rng.permutation(len(images)), []
        for b in range(steps_per_epoch):
            idx = order[b * spec.batch : (b + 1) * spec.batch]
            x = torch.from_numpy(
                np.stack(
                    [preprocess_one(_augment(images[i], rng, spec.box_jitter), pre) for i in idx]
                )
            )
            loss = loss_fn(model(x), torch.from_numpy(labels[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        metrics = evaluate_classifier(model, val_items, pre)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": round(float(np.mean(losses)), 4),
                **metrics,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        log.info("classifier epoch %d/%d: %s", epoch + 1, spec.epochs, history[-1])
        if best is None or metrics["top1"] > best[0]["top1"]:
            best = (metrics, epoch + 1, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    meta = {
        "backbone": cfg.classification.backbone,
        "num_classes": len(class_map),
        "img_size": cfg.classification.img_size,
        "preprocessing": cfg.classification.preprocessing.model_dump(mode="json"),
        "class_map_digest": class_map.digest(),
        "best_epoch": best[1],
    }
    save_classification_checkpoint(out_ckpt, model, meta, half=True)
    return {
        "train_seconds": round(time.perf_counter() - start, 1),
        "best_epoch": best[1],
        "train_images": len(images),
        "history": history,
        "checkpoint": str(out_ckpt),
    }
