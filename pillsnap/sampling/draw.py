"""Drawing the base sample of a mode (smoke, coverage, full): stratified, seeded, reproducible."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.exceptions import DataError
from pillsnap.sampling.sample import DatasetIndex, Sample, SampleItem, SkippedFile, probe_image

if TYPE_CHECKING:
    from pillsnap.config import CompareConfig


def take_readable(paths: list[Path], k: int, skipped: list[SkippedFile]) -> list[Path]:
    """The first ``k`` readable paths, recording the unreadable ones met on the way."""
    chosen: list[Path] = []
    for p in paths:
        if len(chosen) == k:
            break
        reason = probe_image(p)
        if reason:
            skipped.append(SkippedFile(str(p), reason))
        else:
            chosen.append(p)
    return chosen


def sample_dataset(
    index: DatasetIndex, cfg: CompareConfig, task: str, mode: str | None = None
) -> Sample:
    """Draw the base sample of ``index`` for ``mode`` (default ``cfg.mode``); see the module doc."""
    mode = mode or cfg.mode
    rng = random.Random(f"{cfg.seed}:{task}:{mode}")
    groups = {k: rng.sample(v, len(v)) for k, v in sorted(index.groups.items())}
    skipped = list(index.skipped)
    notes = list(index.notes)
    n_avail = index.image_count
    unit = "classes" if task == "classification" else "pill-count strata"
    if mode == "full":
        items = [SampleItem(p, k) for k in sorted(index.groups) for p in index.groups[k]]
        policy = "full: every validation image, decoded batch by batch"
        return Sample(
            task,
            mode,
            policy,
            items,
            n_avail,
            n_avail,
            len(groups),
            notes,
            skipped,
            list(index.empty_classes),
        )
    if mode == "smoke" or (mode == "coverage" and task == "detection"):
        if mode == "smoke":
            requested = cfg.sample_count if task == "classification" else cfg.detection_sample_count
            policy = f"smoke: {requested} random images, stratified round-robin over {unit} (seed {cfg.seed})"
        else:
            requested = min(cfg.max_total, n_avail)
            policy = f"coverage: every val photo up to max_total={cfg.max_total}, stratified by pill count (seed {cfg.seed})"
        chosen = _round_robin(groups, requested, rng, skipped)
    elif mode == "coverage":
        chosen, requested, policy = _coverage(groups, cfg, rng, skipped, notes)
    else:
        raise DataError(f"unknown compare mode {mode!r}; expected smoke, coverage or full")
    items = [SampleItem(p, k) for k in sorted(chosen) for p in chosen[k]]
    if not items:
        raise DataError(
            f"none of the {n_avail} {task} validation images under {index.root} is readable "
            f"(first problems: {'; '.join(f'{s.path}: {s.reason}' for s in skipped[:3])})"
        )
    if len(items) < requested:
        notes.append(
            f"sampled {len(items)} of {requested} requested images: dataset has only {n_avail} images in "
            f"{len(groups)} {unit}" + (f", {len(skipped)} unreadable" if skipped else "")
        )
    return Sample(
        task,
        mode,
        policy,
        items,
        requested,
        n_avail,
        len(groups),
        notes,
        skipped,
        list(index.empty_classes),
    )


def _round_robin(
    groups: dict[int, list[Path]], requested: int, rng: random.Random, skipped: list[SkippedFile]
) -> dict[int, list[Path]]:
    """One readable image per stratum per round, strata in a shuffled order, until ``requested``."""
    order = rng.sample(sorted(groups), len(groups))
    chosen: dict[int, list[Path]] = defaultdict(list)
    cursor = dict.fromkeys(order, 0)
    total = 0
    while total < requested and any(cursor[k] < len(groups[k]) for k in order):
        for k in order:
            if total >= requested:
                break
            while cursor[k] < len(groups[k]):
                cursor[k] += 1
                if take_readable([groups[k][cursor[k] - 1]], 1, skipped):
                    chosen[k].append(groups[k][cursor[k] - 1])
                    total += 1
                    break
    return chosen


def _coverage(
    groups: dict[int, list[Path]],
    cfg: CompareConfig,
    rng: random.Random,
    skipped: list[SkippedFile],
    notes: list[str],
) -> tuple[dict[int, list[Path]], int, str]:
    n_avail = len(groups)
    n_classes = min(n_avail, max(cfg.min_classes, cfg.max_total // cfg.per_class_k))
    if n_classes > cfg.max_total:
        notes.append(
            f"max_total={cfg.max_total} caps the sample below min_classes={cfg.min_classes}"
        )
        n_classes = cfg.max_total
    k = max(1, min(cfg.per_class_k, cfg.max_total // n_classes))
    if k < cfg.per_class_k:
        notes.append(
            f"per_class_k lowered from {cfg.per_class_k} to {k} to reach {n_classes} classes within max_total={cfg.max_total}"
        )
    if n_avail < cfg.min_classes:
        notes.append(
            f"dataset has only {n_avail} classes with val images (min_classes={cfg.min_classes})"
        )
    classes = sorted(rng.sample(sorted(groups), n_classes))
    chosen = {c: take_readable(groups[c], k, skipped) for c in classes}
    short = [c for c in classes if len(chosen[c]) < k]
    if short:
        notes.append(f"{len(short)} class(es) had fewer than {k} readable val images")
    policy = (
        f"coverage: {k} per class over {n_classes} classes (min_classes={cfg.min_classes}, "
        f"max_total={cfg.max_total}), seed {cfg.seed}"
    )
    return {c: v for c, v in chosen.items() if v}, n_classes * k, policy
