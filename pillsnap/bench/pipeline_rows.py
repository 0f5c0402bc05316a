"""End-to-end rows: photo bytes -> pills with edi_codes, per configuration, per photo, by phase.

Each configuration that runs on both models drives ``pillsnap.pipeline.Pipeline`` over
the same val photos; configurations take turns in seeded rounds (one pass each per
round) like the model-only rows, within what is left of the budget.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.bench.phases import PHASES, timed_predict
from pillsnap.bench.stats import interval
from pillsnap.engines.timing import cov, run_rounds

if TYPE_CHECKING:
    from pillsnap.bench.inputs import Inputs
    from pillsnap.bench.run import Slot
    from pillsnap.config import Config
    from pillsnap.engines.timing import Deadline

log = logging.getLogger(__name__)


def pipeline_rows(
    cfg: Config,
    slots: dict[str, list[Slot]],
    inputs: Inputs,
    deadline: Deadline,
    orders: dict[str, list[list[str]]],
    notes: list[str],
) -> list[dict[str, Any]]:
    from pillsnap.classmap import ClassMap
    from pillsnap.pipeline import Pipeline

    b = cfg.benchmark
    if set(slots) != {"detection", "classification"} or not inputs.photos:
        return []
    photos, batch = inputs.photos, b.pipeline_batch_size
    by_name = {s.conf.name: (s, c) for s, c in zip(slots["detection"], slots["classification"])}
    class_map = ClassMap.load(cfg.paths.class_map_path)
    rows: dict[str, dict[str, Any]] = {}
    fns, phases, pills = {}, {}, {}
    for name, (det, cls) in by_name.items():
        row = _row(name, len(photos), batch)
        rows[name] = row
        bad = next((s for s in (det, cls) if s.status != "ran"), None)
        if bad is not None:
            row["status"] = "unavailable" if bad.status == "unavailable" else "failed"
            row["reason"] = f"{bad.task}: {bad.reason}"
            continue
        try:
            pipe = Pipeline(det.runner, cls.runner, class_map, cfg, batch)  # type: ignore[arg-type]
            timed_predict(pipe, photos[:batch], batch)  # warm-up on one batch (decoders, shapes)
        except Exception as exc:  # noqa: BLE001 - the row says why; the other configurations still run
            row["status"], row["reason"] = "failed", f"{type(exc).__name__}: {exc}"[:400]
            continue
        phases[name], pills[name] = [], 0

        def one_pass(pipe: Pipeline = pipe, name: str = name) -> None:
            found, ns = timed_predict(pipe, photos, batch)
            phases[name].append(ns)
            pills[name] = sum(len(p) for p in found)

        fns[name] = one_pass
    if not fns:
        return list(rows.values())
    rounds = run_rounds(
        fns,
        rounds=b.rounds,
        min_calls=1,
        min_seconds=0.0,
        seed=b.seed,
        key="pipeline",
        budget_s=max(deadline.remaining(), 0.0),
    )
    orders["pipeline"] = rounds.order
    if rounds.truncated:
        notes.append(f"pipeline: {len(rounds.order)} of {b.rounds} rounds fit the budget")
    for name in fns:
        per_photo = np.asarray([t.sum() / 1e6 / len(photos) for t in rounds.calls[name]])
        split = {
            phase: round(float(np.median([p[phase] for p in phases[name]])) / 1e6 / len(photos), 4)
            for phase in PHASES
        }
        c = cov(per_photo)
        rows[name].update(
            {
                "pills": pills[name],
                "rounds": len(per_photo),
                "per_photo_ms": interval(per_photo, b),
                "round_per_photo_ms": [round(float(v), 4) for v in per_photo],
                "phases_ms_per_photo": split,
                "cov": None if c is None else round(c, 4),
                "noisy": c is None or c > b.max_cov,
            }
        )
        log.info(
            "pipeline %s: %.1f ms per photo (%s)",
            name,
            rows[name]["per_photo_ms"]["median"],
            ", ".join(f"{k} {v:.1f}" for k, v in split.items()),
        )
    return list(rows.values())


def _row(name: str, photos: int, batch: int) -> dict[str, Any]:
    return {
        "configuration": name,
        "status": "measured",
        "reason": None,
        "photos": photos,
        "pills": None,
        "batch": batch,
        "rounds": 0,
        "per_photo_ms": None,
        "round_per_photo_ms": [],
        "phases_ms_per_photo": {},
        "cov": None,
        "noisy": True,
    }
