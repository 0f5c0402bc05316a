"""Reading a per-layer table (``equivalence/divergence.py``) and what the cause ranking makes of it.

The tables here are built by hand so that each pattern is exact; the same code runs
on the fixture models' planted faults in ``test_faults.py``.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pillsnap.equivalence import diagnose
from pillsnap.equivalence.divergence import Divergence, wanted
from pillsnap.equivalence.layers import LayerDiff, LayerTable
from pillsnap.report.schema import LayerDivergence

TOL = 1e-3


def _table(errors: list[float], first_reads_input: bool = True) -> LayerTable:
    rows = []
    for i, err in enumerate(errors):
        before = errors[i - 1] if i else 0.0
        upstream = () if i == 0 and first_reads_input else (f"t{i - 1}",)
        rows.append(
            LayerDiff(
                i,
                f"t{i}",
                f"/layer{i}/Conv",
                "Conv",
                (2, 8, 4, 4),
                err,
                40.0,
                err,
                f"layer{i}",
                before,
                upstream,
            )
        )
    return LayerTable(rows, Counter({"inside a module": 3}))


@pytest.mark.parametrize(
    "errors, pattern, first",
    [
        ([1e-7, 2e-7, 3e-7, 2e-7], "none", None),
        ([0.4, 0.5, 0.6, 0.6], "input", 0),
        ([1e-7, 2e-7, 0.3, 0.5], "interior", 2),
        ([1e-4, 3e-4, 8e-4, 1.5e-3, 3e-3], "accumulating", 3),
        # accumulated precision noise first, then one layer that really jumps: the jump is named
        ([1e-4, 5e-4, 1.2e-3, 0.2, 0.3], "interior", 3),
    ],
)
def test_patterns(errors, pattern, first):
    div = Divergence("classification", TOL, _table(errors), samples=4)
    assert div.pattern == pattern
    assert (div.first.position if div.first else None) == first
    section = div.to_section()
    LayerDivergence.model_validate(section)  # the report schema's block
    assert len(section["layers"]) == len(errors) and section["tapped"] == len(errors) + 3
    if first is None:
        assert "every layer within relative error" in div.headline()
    else:
        assert (
            f"first divergent layer layer{first} (ONNX /layer{first}/Conv, Conv)" in div.headline()
        )
        assert section["first_divergent"]["before"] == (errors[first - 1] if first else 0.0)


def test_worst_layer_with_its_error_before_and_after():
    div = Divergence("detection", TOL, _table([1e-7, 0.05, 0.02, 0.3, 0.1]), samples=2)
    assert div.first.position == 1 and div.worst.position == 3
    assert "worst layer3 (ONNX /layer3/Conv, Conv): 0.02 before -> 0.3 after" in div.headline()


def _evidence(stage_kind: str, errors: list[float], **kw) -> diagnose.Evidence:
    metrics = {
        "rel_logit_diff_p99": 0.2,
        "top1_mismatch_count": 0,
        "mismatch_margin_median": float("nan"),
    }
    stage = {"kind": stage_kind, "permutation": [2, 1, 0], "scale": [1.0] * 3, "shift": [0.0] * 3}
    div = Divergence("classification", TOL, _table(errors), samples=4)
    return diagnose.Evidence("classification", metrics, input_stage=stage, divergence=div, **kw)


def test_interior_jump_ranks_that_layers_conversion_first():
    causes = diagnose.rank_causes(_evidence("identity", [1e-7, 2e-7, 0.3, 0.5]))
    assert causes[0]["cause"] == "conversion" and causes[0]["score"] >= 0.9
    assert "layer2 (Conv) introduces the difference" in causes[0]["evidence"]


def test_jump_at_the_first_convolution_means_preprocessing():
    # The input-stage probe found the channel swap: it stays first, now with the layer named.
    causes = diagnose.rank_causes(_evidence("channel_permutation", [0.9, 0.9, 0.8]))
    assert causes[0]["cause"] == "channel_order"
    assert "first convolution layer0" in causes[0]["evidence"]
    # The same tensor reaches the first convolution, yet it diverges there: folded pre-processing.
    causes = diagnose.rank_causes(_evidence("identity", [0.3, 0.3, 0.4]))
    assert [c["cause"] for c in causes[:2]] == ["first_layer_preprocessing", "conversion"]
    assert causes[0]["title"] == diagnose.TITLES["first_layer_preprocessing"]


def test_error_that_only_accumulates_means_numeric_precision():
    causes = diagnose.rank_causes(_evidence("identity", [1e-4, 3e-4, 8e-4, 1.5e-3, 3e-3]))
    assert causes[0]["cause"] == "numeric_precision"
    assert "no single layer introduces the difference" in causes[0]["evidence"]
    conversion = next(c for c in causes if c["cause"] == "conversion")
    assert conversion["score"] <= 0.5


def test_without_localisation_the_ranking_is_unchanged():
    ev = _evidence("identity", [1e-7, 0.3])
    ev.divergence = None
    assert diagnose.rank_causes(ev)[0]["cause"] == "conversion"
    assert "introduces" not in diagnose.rank_causes(ev)[0]["evidence"]


def test_which_models_are_localised():
    from pillsnap.config import Config

    failed = {"classification": True, "detection": False}
    assert wanted(Config(), failed) == ["classification"]  # default: on_failure
    always = Config.model_validate({"compare": {"localise": "always"}})
    assert wanted(always, failed) == ["classification", "detection"]
    never = Config.model_validate({"compare": {"localise": "never"}})
    assert wanted(never, failed) == []
    assert Config().compare.layer_tolerance == 1e-3


def test_an_output_without_matched_layers_before_it_is_not_localised():
    only_output = LayerTable(
        [LayerDiff(9, "out", "/Concat", "Concat", (2, 8), 0.3, 10.0, 0.3, "", 0.0, ())],
        Counter({"no module scope": 40}),
    )
    div = Divergence("detection", TOL, only_output, samples=2)
    assert div.pattern == "unlocalised" and "not localised" in div.headline()
    ev = _evidence("identity", [1e-7, 0.3])
    ev.divergence = div
    assert "introduces" not in diagnose.rank_causes(ev)[0]["evidence"]  # names no layer


def test_a_localisation_that_cannot_run_is_reported_not_raised(tmp_path):
    """The diagnosis explains a verdict; its own failure (here: an unreadable ONNX) never replaces it."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from pillsnap.config import Config
    from pillsnap.equivalence.divergence import localise_models

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    runners = {
        "detection": {
            "torch": SimpleNamespace(module=torch.nn.Conv2d(3, 4, 3).eval()),
            "onnx": SimpleNamespace(describe=lambda: {"providers": ["CPUExecutionProvider"]}),
        }
    }
    parity = SimpleNamespace(probe_inputs=np.zeros((1, 3, 8, 8), np.float32))
    done, problems = localise_models(
        Config(),
        {"detection": SimpleNamespace(onnx_path=broken)},
        runners,
        {"detection": parity},
        {"detection": True},
    )
    assert done == {} and problems["detection"].startswith("detection: not localised (")
