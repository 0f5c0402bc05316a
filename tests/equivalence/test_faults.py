"""The gate must stop real faults and name their cause, and never cry wolf on a correct export.

Faults are planted by editing the exported demo ONNX graphs here in the test
(onnx.helper / numpy_helper), never by special cases in the library:

* weights of a middle convolution x 1.5, of the last convolution x 1.04;
* RGB/BGR swap at the input (a Gather on the channel axis);
* shifted normalisation at the input (Mul + Add after the input);
* an ONNX whose pre-processing metadata disagrees with the config (refused).

Each faulty model is compared alone (no end-to-end pass) in smoke mode on a small
sample; the CLI must exit 1 and the top-ranked cause must be the right one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _demo_release import demo_release
from _tiny import SMALL_COMPARE_ARGS

from pillsnap.exceptions import MetadataMismatchError

pytestmark = pytest.mark.slow
FAST = [*SMALL_COMPARE_ARGS, "--quiet"]


# -- planting -------------------------------------------------------------------------------------


def _convs(model):
    return [n for n in model.graph.node if n.op_type == "Conv"]


def scale_conv(model, which: str, factor: float) -> None:
    from onnx import numpy_helper

    convs = _convs(model)
    node = convs[len(convs) // 2] if which == "middle" else convs[-1]
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    init.CopyFrom(
        numpy_helper.from_array(
            (numpy_helper.to_array(init) * factor).astype(np.float32), init.name
        )
    )


def _after_input(model, build: Callable) -> None:
    """Insert nodes between the graph input and everything that consumed it."""
    source = model.graph.input[0].name
    target = source + "_planted"
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == source:
                node.input[k] = target
    nodes, inits = build(source, target)
    for i, node in enumerate(nodes):
        model.graph.node.insert(i, node)
    model.graph.initializer.extend(inits)


def swap_channels(model) -> None:
    from onnx import helper, numpy_helper

    def build(src, dst):
        idx = numpy_helper.from_array(np.array([2, 1, 0], np.int64), "planted_bgr")
        return [helper.make_node("Gather", [src, "planted_bgr"], [dst], axis=1)], [idx]

    _after_input(model, build)


def shift_normalisation(model, mul: float, add: float) -> None:
    from onnx import helper, numpy_helper

    def build(src, dst):
        inits = [
            numpy_helper.from_array(np.array(mul, np.float32), "planted_mul"),
            numpy_helper.from_array(np.array(add, np.float32), "planted_add"),
        ]
        return [
            helper.make_node("Mul", [src, "planted_mul"], [src + "_scaled"]),
            helper.make_node("Add", [src + "_scaled", "planted_add"], [dst]),
        ], inits

    _after_input(model, build)


FAULTS = {
    "middle_conv_x1.5": (lambda m: scale_conv(m, "middle", 1.5), "conversion"),
    "last_conv_x1.04": (lambda m: scale_conv(m, "last", 1.04), "conversion"),
    "bgr_swap": (swap_channels, "channel_order"),
    "normalisation_shift": (lambda m: shift_normalisation(m, 1.1, 0.15), "normalisation"),
}


def planted(src: str, folder: Path, edit: Callable) -> Path:
    import onnx

    model = onnx.load(src)
    edit(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(src).name
    onnx.save(model, str(path))
    return path


def compare_cli(cfg_path: Path, task: str, onnx_path: Path, out_dir: Path, cfg, *extra: str) -> int:
    from pillsnap.equivalence.cli import main

    data = [
        f"--set=paths.detection_data={cfg.paths.detection_data}",
        f"--set=paths.classification_data={cfg.paths.classification_data}",
    ]
    return main(
        [
            "--config",
            str(cfg_path),
            f"--{task}-onnx",
            str(onnx_path),
            "--out-dir",
            str(out_dir),
            *data,
            *FAST,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return demo_release(tmp_path_factory)


# -- the faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "detection"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_planted_fault_fails_with_the_right_cause(release, tmp_path, task, fault):
    cfg, exports = release
    edit, cause = FAULTS[fault]
    onnx_path = planted(exports[task].onnx_path, tmp_path / "bad", edit)
    code = compare_cli(cfg.source, task, onnx_path, tmp_path / "out", cfg)
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    compare = report["models"][task]["compare"]
    assert code == 1, f"{fault} on the {task} model was not caught: {compare['metrics']}"
    assert report["failed"] and compare["failed"] and compare["failure_reason"]
    assert compare["likely_causes"][0]["cause"] == cause, compare["likely_causes"]
    failed = [g for g in compare["gates"] if not g["passed"]]
    assert failed and all(
        g["name"] in compare["failure_reason"]
        or g["name"].split(".")[1] in compare["failure_reason"]
        for g in failed
    )
    assert all(g["would_pass_at"] is not None for g in failed)


@pytest.mark.parametrize(
    "task, key, value",
    [
        ("classification", "preprocess.mean", "0.5,0.5,0.5"),
        ("detection", "letterbox.imgsz", "640"),
    ],
)
def test_metadata_mismatch_is_refused_before_comparing(release, tmp_path, task, key, value):
    from pillsnap.models.common import read_onnx_metadata, write_onnx_metadata

    cfg, exports = release
    path = tmp_path / Path(exports[task].onnx_path).name
    shutil.copyfile(exports[task].onnx_path, path)
    before = read_onnx_metadata(path)[key]
    write_onnx_metadata(path, {key: value})
    with pytest.raises(MetadataMismatchError) as err:
        compare_cli(cfg.source, task, path, tmp_path / "out", cfg)
    assert value in str(err.value) and before in str(err.value) and key in str(err.value)
    assert not (tmp_path / "out" / "export_report.json").exists()
    from pillsnap.cli import main as pillsnap_main

    assert (
        pillsnap_main(
            ["compare", "--config", str(cfg.source), f"--{task}-onnx", str(path), "--quiet"]
        )
        == 2
    )


# -- no false alarm -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_correct_export_passes_on_any_seed(release, tmp_path, seed):
    from pillsnap.config import apply_overrides
    from pillsnap.equivalence.run import run_equivalence

    cfg, exports = release
    cfg = apply_overrides(
        cfg,
        {"compare.seed": seed, "compare.sample_count": 24, "compare.detection_sample_count": 12},
    )
    result = run_equivalence(cfg, exports, out_dir=tmp_path, progress=False)
    assert not result.failed, result.failure_reason
    assert (
        result.report["end_to_end"]["compared"]
        and result.report["end_to_end"]["pill_agreement"] >= 0.99
    )
