"""Classification parity: the same preprocessed batches through Torch and ONNX Runtime.

``compare_classification`` returns data only (``ClassificationParity``: one row
per sample plus aggregate metrics); ``gates.py`` decides pass/fail and
``diagnose.py`` explains a failure. Memory is bounded in every mode: per batch
only a few numbers per sample are kept, never the ``[N, C]`` logits.

Definitions (probabilities are softmax of the logits, computed in float64):

* ``mse``: mean over classes of (p_torch - p_onnx)^2, per sample;
* ``kl``: KL(p_torch || p_onnx), per sample;
* ``margin``: Torch top-1 minus top-2 probability;
* ``at_risk``: the largest per-class probability difference is at least half
  the margin, i.e. a difference of that size could reorder the top two classes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.equivalence.batches import iter_batches, prefetch
from pillsnap.equivalence.lanes import Lanes
from pillsnap.preprocess import load_image, preprocess_one

if TYPE_CHECKING:
    import pandas as pd

    from pillsnap.engines.runners import Runner
    from pillsnap.preprocess import PreprocessSpec
    from pillsnap.sampling.sample import SampleItem, SkippedFile

log = logging.getLogger(__name__)
PROBE_SAMPLES = 4
"""Inputs kept for the diagnosis probes (input stage, batch consistency)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def per_sample_metrics(torch_logits: np.ndarray, onnx_logits: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample parity metrics for one batch of logits ``[N, C]`` from each engine."""
    if torch_logits.shape != onnx_logits.shape:
        raise ValueError(
            f"Torch logits {torch_logits.shape} and ONNX logits {onnx_logits.shape} differ in shape"
        )
    lt, lo = log_softmax(torch_logits), log_softmax(onnx_logits)
    pt, po = np.exp(lt), np.exp(lo)
    k = min(5, pt.shape[1])
    order_t = np.argsort(-pt, axis=1, kind="stable")
    order_o = np.argsort(-po, axis=1, kind="stable")
    rows = np.arange(len(pt))
    top5_overlap = np.array([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(order_t, order_o)])
    second_t = order_t[:, 1] if pt.shape[1] > 1 else order_t[:, 0]
    second_o = order_o[:, 1] if po.shape[1] > 1 else order_o[:, 0]
    diff = np.abs(pt - po)
    margin = pt[rows, order_t[:, 0]] - pt[rows, second_t]
    logit_diff = np.abs(
        np.asarray(torch_logits, np.float64) - np.asarray(onnx_logits, np.float64)
    ).max(axis=1)
    logit_scale = np.abs(np.asarray(torch_logits, np.float64)).max(axis=1)
    return {
        "mse": (diff**2).mean(axis=1),
        "kl": np.maximum((pt * (lt - lo)).sum(axis=1), 0.0),
        "max_abs_prob_diff": diff.max(axis=1),
        "max_abs_logit_diff": logit_diff,
        "rel_logit_diff": logit_diff / np.maximum(logit_scale, 1e-6),
        "torch_top1": order_t[:, 0],
        "torch_top1_prob": pt[rows, order_t[:, 0]],
        "torch_top2": second_t,
        "torch_top2_prob": pt[rows, second_t],
        "onnx_top1": order_o[:, 0],
        "onnx_top1_prob": po[rows, order_o[:, 0]],
        "onnx_top2": second_o,
        "onnx_top2_prob": po[rows, second_o],
        "margin": margin,
        "top1_match": order_t[:, 0] == order_o[:, 0],
        "top5_overlap": top5_overlap,
        "at_risk": diff.max(axis=1) >= margin / 2,
    }


@dataclass
class LogitFit:
    """Running least-squares fit ``onnx = slope * torch + intercept`` over every logit seen.

    A slope away from 1 with a small residual means the ONNX output is a scaled
    copy of Torch's: a changed last layer, not noise.
    """

    n: float = 0.0
    st: float = 0.0
    so: float = 0.0
    stt: float = 0.0
    sto: float = 0.0
    soo: float = 0.0

    def update(self, t: np.ndarray, o: np.ndarray) -> None:
        t, o = np.asarray(t, np.float64).ravel(), np.asarray(o, np.float64).ravel()
        self.n += t.size
        self.st += t.sum()
        self.so += o.sum()
        self.stt += (t * t).sum()
        self.sto += (t * o).sum()
        self.soo += (o * o).sum()

    def result(self) -> dict[str, float]:
        if self.n < 2:
            return {
                "slope": float("nan"),
                "intercept": float("nan"),
                "residual_rms": float("nan"),
                "torch_std": 0.0,
            }
        var_t = self.stt / self.n - (self.st / self.n) ** 2
        cov = self.sto / self.n - self.st * self.so / self.n**2
        var_o = self.soo / self.n - (self.so / self.n) ** 2
        slope = cov / var_t if var_t > 0 else float("nan")
        intercept = (self.so - slope * self.st) / self.n if var_t > 0 else float("nan")
        resid = max(var_o - slope * cov, 0.0) if var_t > 0 else var_o
        return {
            "slope": float(slope),
            "intercept": float(intercept),
            "residual_rms": float(np.sqrt(resid)),
            "torch_std": float(np.sqrt(max(var_t, 0.0))),
        }


@dataclass
class ClassificationParity:
    rows: pd.DataFrame
    metrics: dict[str, float]
    per_class_mismatch: list[dict[str, Any]]
    borderline: list[dict[str, Any]]
    logit_fit: dict[str, float]
    probe_inputs: np.ndarray
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        m = self.metrics
        return (
            f"classification parity on {int(m['n'])} samples: MSE mean {m['mse_mean']:.2e} p99 {m['mse_p99']:.2e} "
            f"max {m['mse_max']:.2e}; top-1 match {m['top1_match_rate']:.2%} ({int(m['top1_mismatch_count'])} "
            f"mismatches); KL mean {m['kl_mean']:.2e}; max |dlogit| {m['max_abs_logit_diff']:.2e}; "
            f"at risk {int(m['at_risk_count'])}"
        )


def compare_classification(
    items: list[SampleItem],
    spec: PreprocessSpec,
    torch_runner: Runner,
    onnx_runner: Runner,
    *,
    batch_size: int,
    skipped: list[SkippedFile],
    torch_cache: dict[Path, np.ndarray] | None = None,
    class_names: dict[int, str] | None = None,
    borderline_count: int = 10,
    progress: bool = True,
    lanes: Lanes | None = None,
) -> ClassificationParity:
    """Run both engines on ``items`` (decoded on a background thread) and measure parity.

    ``torch_cache`` holds Torch logits already computed for some paths (the
    hardness scoring); those images are not run through Torch a second time.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    lanes = lanes or Lanes.in_turn()
    torch_cache = torch_cache or {}
    class_names = class_names or {}
    fit = LogitFit()
    frames: list[pd.DataFrame] = []
    probe: list[np.ndarray] = []

    def load(item: SampleItem) -> np.ndarray:
        return preprocess_one(load_image(item.path), spec)

    batches = prefetch(iter_batches(items, batch_size, load, skipped))
    with tqdm(
        total=len(items), desc="classification parity", unit="img", disable=not progress
    ) as bar:
        for batch in batches:
            x = np.stack(batch.data)
            t_logits, o_logits = lanes.both(
                partial(_torch_logits, torch_runner, x, batch.items, torch_cache),
                partial(onnx_runner.infer, x),
            )
            fit.update(t_logits, o_logits)
            m = per_sample_metrics(t_logits, o_logits)
            frames.append(
                pd.DataFrame(
                    {
                        "path": [str(it.path) for it in batch.items],
                        "true_class": [it.label for it in batch.items],
                        "source": [it.source for it in batch.items],
                        **m,
                    }
                )
            )
            if len(probe) < PROBE_SAMPLES:
                probe.extend(x[: PROBE_SAMPLES - len(probe)])
            bar.update(len(batch.items))
    if not frames:
        from pillsnap.exceptions import DataError

        raise DataError(
            f"no readable classification image among the {len(items)} sampled "
            f"(first problems: {'; '.join(f'{s.path}: {s.reason}' for s in skipped[:3])})"
        )
    rows = pd.concat(frames, ignore_index=True)
    rows["true_name"] = rows["true_class"].map(lambda c: class_names.get(int(c), str(c)))
    result = ClassificationParity(
        rows,
        aggregate(rows),
        per_class_mismatches(rows),
        borderline_cases(rows, borderline_count),
        fit.result(),
        np.stack(probe),
    )
    for case in result.borderline:
        log.info(
            "borderline: %s true=%s torch top-2=%s onnx top-2=%s margin=%.4f%s",
            case["path"],
            case["true_class"],
            case["torch_top2"],
            case["onnx_top2"],
            case["margin"],
            "" if case["top1_match"] else "  <- top-1 differs",
        )
    log.info(result.summary_line())
    return result


def _torch_logits(
    runner: Runner, x: np.ndarray, items: list[SampleItem], cache: dict[Path, np.ndarray]
) -> np.ndarray:
    """Torch logits of a batch, taken from ``cache`` where Torch already ran on that image."""
    todo = [i for i, it in enumerate(items) if it.path not in cache]
    if len(todo) == len(items):
        return np.asarray(runner.infer(x), np.float32)
    fresh = dict(zip(todo, np.asarray(runner.infer(x[todo]), np.float32))) if todo else {}
    return np.stack(
        [fresh[i] if i in fresh else cache.pop(it.path) for i, it in enumerate(items)]
    ).astype(np.float32)


def aggregate(rows: pd.DataFrame) -> dict[str, float]:
    mse = rows["mse"].to_numpy()
    mismatches = int((~rows["top1_match"]).sum())
    return {
        "n": float(len(rows)),
        "mse_mean": float(mse.mean()),
        "mse_p99": float(np.quantile(mse, 0.99)),
        "mse_max": float(mse.max()),
        "top1_match_rate": float(rows["top1_match"].mean()),
        "top1_mismatch_count": float(mismatches),
        "top1_mismatch_rate": float(mismatches / len(rows)),
        "top5_overlap_mean": float(rows["top5_overlap"].mean()),
        "kl_mean": float(rows["kl"].mean()),
        "kl_max": float(rows["kl"].max()),
        "max_abs_logit_diff": float(rows["max_abs_logit_diff"].max()),
        "rel_logit_diff_p99": float(np.quantile(rows["rel_logit_diff"], 0.99)),
        "max_abs_prob_diff": float(rows["max_abs_prob_diff"].max()),
        "at_risk_count": float(rows["at_risk"].sum()),
        "mismatch_margin_median": float(rows.loc[~rows["top1_match"], "margin"].median())
        if mismatches
        else float("nan"),
        "classes": float(rows["true_class"].nunique()),
        "classes_with_mismatch": float(rows.loc[~rows["top1_match"], "true_class"].nunique()),
        **label_metrics(rows),
    }


CLASS_RECALL_MIN_SAMPLES = 3
"""A class enters the worst-class recall drop only with this many samples (one flip of two is noise)."""


def label_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """Accuracy of each engine against the labels and the worst class's recall drop.

    What the INT8 gate needs beyond agreement: a mean over thousands of classes hides one
    collapsed class, so ``class_recall_drop_max`` is the largest per-class drop (reference
    minus candidate) among classes with ``CLASS_RECALL_MIN_SAMPLES`` samples or more
    (NaN when none has: not measurable, never zero by default).
    """
    truth = rows["true_class"].to_numpy()
    ok_t = rows["torch_top1"].to_numpy() == truth
    ok_o = rows["onnx_top1"].to_numpy() == truth
    per = (
        rows.assign(ok_t=ok_t, ok_o=ok_o)
        .groupby("true_class")
        .agg(n=("ok_t", "size"), t=("ok_t", "mean"), o=("ok_o", "mean"))
    )
    per = per[per["n"] >= CLASS_RECALL_MIN_SAMPLES]
    drop = per["t"] - per["o"]
    worst = drop.idxmax() if len(drop) else None
    return {
        "accuracy_torch": float(ok_t.mean()),
        "accuracy_onnx": float(ok_o.mean()),
        "accuracy_drop": float(ok_t.mean() - ok_o.mean()),
        "at_risk_rate": float(rows["at_risk"].mean()),
        "class_recall_drop_max": float(drop.max()) if worst is not None else float("nan"),
        "class_recall_drop_class": float(worst) if worst is not None else float("nan"),
        "class_recall_classes": float(len(per)),
    }


def per_class_mismatches(rows: pd.DataFrame, top: int = 10) -> list[dict[str, Any]]:
    """Classes with the most top-1 mismatches (count, rate, mean Torch margin)."""
    g = rows.assign(mismatch=~rows["top1_match"]).groupby("true_class")
    table = g.agg(
        name=("true_name", "first"),
        n=("mismatch", "size"),
        mismatches=("mismatch", "sum"),
        mse_mean=("mse", "mean"),
        margin_mean=("margin", "mean"),
    )
    table = table[table["mismatches"] > 0]
    table["rate"] = table["mismatches"] / table["n"]
    table = table.sort_values(["mismatches", "rate"], ascending=False).head(top)
    return [
        {
            "class_index": int(c),
            "name": str(r["name"]),
            "n": int(r["n"]),
            "mismatches": int(r["mismatches"]),
            "rate": float(r["rate"]),
            "mse_mean": float(r["mse_mean"]),
            "margin_mean": float(r["margin_mean"]),
        }
        for c, r in table.iterrows()
    ]


def borderline_cases(rows: pd.DataFrame, count: int) -> list[dict[str, Any]]:
    """Mismatches first, then the smallest Torch margins: where a tiny difference flips a decision."""
    if count == 0:
        return []
    ordered = rows.assign(_ok=rows["top1_match"]).sort_values(["_ok", "margin"]).head(count)
    return [
        {
            "path": r.path,
            "true_class": int(r.true_class),
            "source": r.source,
            "torch_top2": [
                [int(r.torch_top1), round(float(r.torch_top1_prob), 6)],
                [int(r.torch_top2), round(float(r.torch_top2_prob), 6)],
            ],
            "onnx_top2": [
                [int(r.onnx_top1), round(float(r.onnx_top1_prob), 6)],
                [int(r.onnx_top2), round(float(r.onnx_top2_prob), 6)],
            ],
            "margin": float(r.margin),
            "top1_match": bool(r.top1_match),
            "mse": float(r.mse),
        }
        for r in ordered.itertuples()
    ]
