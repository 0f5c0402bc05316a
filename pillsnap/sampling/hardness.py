"""Hardness bins: extra images picked by Torch confidence, so boundary cases are always compared."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pillsnap.sampling.sample import DatasetIndex, Sample, SampleItem

if TYPE_CHECKING:
    from pillsnap.config import CompareConfig

HARD_POOL_FACTOR = 8
"""Candidates scored per hardness bin and per requested hard case (pool = factor x bins x per_bin)."""


def bin_label(lo: float, hi: float, last: bool) -> str:
    return f"hard[{lo:.2f},{hi:.2f}{']' if last else ')'}"


def hardness_candidates(
    index: DatasetIndex, sample: Sample, cfg: CompareConfig
) -> list[SampleItem]:
    """A stratified random pool of not-yet-sampled images for the Torch model to score.

    Empty in full mode (everything is compared anyway) or when ``hard_per_bin`` is 0.
    """
    n_bins = len(cfg.hardness_bins) - 1
    if sample.mode == "full" or cfg.hard_per_bin == 0:
        return []
    pool_size = HARD_POOL_FACTOR * n_bins * cfg.hard_per_bin
    taken = {it.path for it in sample.items} | {Path(s.path) for s in sample.skipped}
    rng = random.Random(f"{cfg.seed}:hard:{sample.task}")
    rest = {
        k: rng.sample([p for p in v if p not in taken], len([p for p in v if p not in taken]))
        for k, v in sorted(index.groups.items())
    }
    order = rng.sample(sorted(rest), len(rest))
    pool: list[SampleItem] = []
    for round_ in range(max((len(v) for v in rest.values()), default=0)):
        for k in order:
            if len(pool) >= pool_size:
                return pool
            if round_ < len(rest[k]):
                pool.append(SampleItem(rest[k][round_], k))
    return pool


def add_hard_cases(
    sample: Sample, candidates: list[SampleItem], top1_prob: np.ndarray, cfg: CompareConfig
) -> list[SampleItem]:
    """Add up to ``hard_per_bin`` candidates per Torch top-1 probability bin to ``sample``.

    Returns the added items (in sample order); ``sample.hardness`` records, per bin,
    how many candidates fell in it and how many were added.
    """
    edges = cfg.hardness_bins
    probs = np.asarray(top1_prob, np.float64)
    if len(probs) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(probs)} probabilities")
    rng = random.Random(f"{cfg.seed}:hardpick:{sample.task}")
    added: list[SampleItem] = []
    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = b == len(edges) - 2
        inside = [i for i, p in enumerate(probs) if lo <= p < hi or (last and p == hi)]
        pick = sorted(rng.sample(inside, min(cfg.hard_per_bin, len(inside))))
        label = bin_label(lo, hi, last)
        sample.hardness[label] = {"candidates": len(inside), "added": len(pick)}
        added += [SampleItem(candidates[i].path, candidates[i].label, label) for i in pick]
        if len(pick) < cfg.hard_per_bin:
            sample.notes.append(
                f"{label}: {len(inside)} of {len(candidates)} scored candidates fell in this bin "
                f"({len(pick)} added of {cfg.hard_per_bin} asked)"
            )
    sample.items.extend(added)
    return added
