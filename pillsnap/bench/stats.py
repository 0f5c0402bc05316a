"""From raw call times to the record's figures: latency rows, throughput, ratios, the goal.

Every figure that compares configurations is taken inside a round first (both sides
ran within seconds of each other, under the same load) and only then summarised over
rounds: the median with a bootstrap 95 % interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.bench.catalogue import CATALOGUE
from pillsnap.engines.timing import Rounds, bootstrap_median, cov

if TYPE_CHECKING:
    from pillsnap.config.bench import BenchmarkConfig

RATIO_BASES = (
    "torch-cpu-fp32",
    "ort-cpu-fp32",
    "openvino-cpu",
    "openvino-cpu-fp32",
    "torch-cuda-fp32",
)
"""Configurations every other one is compared with, when they were measured."""
YARDSTICKS = ("torch-cpu-fp32", "openvino-cpu")
"""What the goal measures the project's best CPU configuration against (never a candidate)."""


def interval(
    values: np.ndarray | list[float], b: BenchmarkConfig, digits: int = 4
) -> dict[str, Any]:
    med, lo, hi = bootstrap_median(values, b.bootstrap_resamples, b.seed)
    r = lambda v: None if v is None else round(v, digits)
    return {"median": r(med), "low": r(lo), "high": r(hi)}


def latency_figures(rounds: Rounds, name: str, batch: int, b: BenchmarkConfig) -> dict[str, Any]:
    """The ``latency`` and ``throughput`` blocks of one row."""
    runs = rounds.calls[name]
    every = np.concatenate(runs) / 1e6
    medians = rounds.round_medians_ns(name) / 1e6
    calls, seconds = rounds.round_totals(name)
    c = cov(medians)
    p50, p90, p99 = np.quantile(every, [0.5, 0.9, 0.99])
    latency = {
        "p50_ms": round(float(p50), 4),
        "p90_ms": round(float(p90), 4),
        "p99_ms": round(float(p99), 4),
        "max_ms": round(float(every.max()), 4),
        "mean_ms": round(float(every.mean()), 4),
        "calls": len(every),
        "duration_s": round(float(seconds.sum()), 4),
        "rounds": len(runs),
        "round_median_ms": [round(float(v), 4) for v in medians],
        "median_ms": interval(medians, b),
        "cov": None if c is None else round(c, 4),
        "noisy": c is None or c > b.max_cov,
    }
    per_round = batch * calls / np.maximum(seconds, 1e-12)
    throughput = {
        "images_per_s": interval(per_round, b, 3),
        "round_images_per_s": [round(float(v), 3) for v in per_round],
    }
    return {"latency": latency, "throughput": throughput}


def ratios(rounds: Rounds, task: str, batch: int, b: BenchmarkConfig) -> list[dict[str, Any]]:
    """Speed-up of every measured configuration over each base of ``RATIO_BASES``, per round."""
    out = []
    names = list(rounds.calls)
    for base in RATIO_BASES:
        if base not in rounds.calls:
            continue
        ref = rounds.round_medians_ns(base)
        for name in names:
            if name == base:
                continue
            per_round = ref / rounds.round_medians_ns(name)
            out.append(
                {
                    "model": task,
                    "batch": batch,
                    "configuration": name,
                    "versus": base,
                    "speedup": interval(per_round, b, 3),
                    "rounds": len(per_round),
                }
            )
    return out


def find_ratio(
    ratio_rows: list[dict[str, Any]], task: str, batch: int, name: str, versus: str
) -> dict[str, Any] | None:
    for r in ratio_rows:
        if (r["model"], r["batch"], r["configuration"], r["versus"]) == (task, batch, name, versus):
            return r["speedup"]
    return None


def goal(
    ratio_rows: list[dict[str, Any]],
    agreements: dict[str, float | None],
    batches: list[int],
    b: BenchmarkConfig,
) -> dict[str, Any] | None:
    """The project's aim for its best CPU classifier configuration, checked per batch size.

    Candidates: every CPU configuration measured on the classifier except the two
    yardsticks (Torch eager and OpenVINO's default). A candidate meets the aim when its
    median speed-ups reach ``goal_vs_openvino`` and ``goal_vs_torch`` and its top-1
    agreement with Torch float32 reaches ``goal_agreement``.
    """
    measured = {
        r["configuration"]
        for r in ratio_rows
        if r["model"] == "classification" and r["versus"] == "torch-cpu-fp32"
    }
    candidates = sorted(n for n in measured if CATALOGUE[n].device == "cpu" and n not in YARDSTICKS)
    if not candidates:
        return None
    entries, best = [], {}
    for batch in batches:
        fastest: tuple[float, str] | None = None
        for name in candidates:
            vs_ov = find_ratio(ratio_rows, "classification", batch, name, "openvino-cpu")
            vs_torch = find_ratio(ratio_rows, "classification", batch, name, "torch-cpu-fp32")
            agree = agreements.get(name)
            short = []
            if vs_ov is None:
                short.append("not measured against openvino-cpu")
            elif (vs_ov["median"] or 0) < b.goal_vs_openvino:
                short.append(f"x{vs_ov['median']:.2f} of OpenVINO (aim x{b.goal_vs_openvino:g})")
            if vs_torch is None or (vs_torch["median"] or 0) < b.goal_vs_torch:
                got = "not measured" if vs_torch is None else f"x{vs_torch['median']:.2f}"
                short.append(f"{got} of Torch (aim x{b.goal_vs_torch:g})")
            if agree is None or agree < b.goal_agreement:
                got = "unmeasured" if agree is None else f"{agree:.4f}"
                short.append(f"agreement {got} (aim {b.goal_agreement:g})")
            entries.append(
                {
                    "configuration": name,
                    "batch": batch,
                    "vs_openvino": vs_ov,
                    "vs_torch": vs_torch,
                    "agreement": agree,
                    "meets": not short,
                    "shortfall": "; ".join(short) or None,
                }
            )
            speed = (vs_torch or {}).get("median") or 0.0
            if fastest is None or speed > fastest[0]:
                fastest = (speed, name)
        best[str(batch)] = fastest[1] if fastest else None
    met = [e for e in entries if e["meets"]]
    summary = (
        "aim met by " + ", ".join(f"{e['configuration']} (batch {e['batch']})" for e in met)
        if met
        else "aim not met; "
        + "; ".join(
            f"batch {e['batch']} best {e['configuration']}: {e['shortfall']}"
            for e in entries
            if best.get(str(e["batch"])) == e["configuration"]
        )
    )
    return {
        "model": "classification",
        "targets": {
            "vs_openvino": b.goal_vs_openvino,
            "vs_torch": b.goal_vs_torch,
            "agreement": b.goal_agreement,
        },
        "candidates": entries,
        "best": best,
        "met": bool(met),
        "summary": summary,
    }
