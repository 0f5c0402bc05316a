"""The gate must stop real faults and name their cause, and never cry wolf on a correct export.

Faults are planted by editing the exported demo ONNX graphs here in the test
(onnx.helper / numpy_helper), never by special cases in the library:

* weights of a middle convolution x 1.5, of the last convolution x 1.04;
* the bias of a convolution in a middle block + 0.5;
* a swapped activation: one interior SiLU's Sigmoid becomes a HardSigmoid;
* RGB/BGR swap at the input (a Gather on the channel axis);
* shifted normalisation at the input (Mul + Add after the input);
* an ONNX whose pre-processing metadata disagrees with the config (refused).

Each faulty model is compared alone (no end-to-end pass) in smoke mode on a small
sample; the CLI must exit 1, the top-ranked cause must be the right one, and the
report's ``divergence`` must name the planted layer as the first divergent one (or
the first compared layer right after it, when the planted node is inside a module).
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


def scale_conv(model, which: str, factor: float) -> list[str]:
    """Scale one convolution's weights; returns the planted node's name."""
    convs = _convs(model)
    node = convs[len(convs) // 2] if which == "middle" else convs[-1]
    _edit_initializer(model, node.input[1], lambda w: w * factor)
    return [node.name]


def shift_bias(model, delta: float) -> list[str]:
    """Add ``delta`` to the bias of the convolution a third of the way in (a middle block)."""
    convs = [n for n in _convs(model) if len(n.input) > 2]
    node = convs[len(convs) // 3]
    _edit_initializer(model, node.input[2], lambda b: b + delta)
    return [node.name]


def swap_activation(model) -> list[str]:
    """The Sigmoid of the middle SiLU (Sigmoid -> Mul) becomes a HardSigmoid."""
    readers = {i for n in model.graph.node if n.op_type == "Mul" for i in n.input}
    sigmoids = [n for n in model.graph.node if n.op_type == "Sigmoid" and n.output[0] in readers]
    node = sigmoids[len(sigmoids) // 2]
    node.op_type = "HardSigmoid"
    return [node.name]


def _edit_initializer(model, name: str, change: Callable) -> None:
    from onnx import numpy_helper

    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(
        numpy_helper.from_array(change(numpy_helper.to_array(init)).astype(np.float32), name)
    )


def _after_input(model, build: Callable) -> list[str]:
    """Insert nodes between the graph input and everything that consumed it; returns their names."""
    source = model.graph.input[0].name
    target = source + "_planted"
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == source:
                node.input[k] = target
    nodes, inits = build(source, target)
    for i, node in enumerate(nodes):
        node.name = node.name or f"planted_{i}"
        model.graph.node.insert(i, node)
    model.graph.initializer.extend(inits)
    return [n.name for n in nodes]


def swap_channels(model) -> list[str]:
    from onnx import helper, numpy_helper

    def build(src, dst):
        idx = numpy_helper.from_array(np.array([2, 1, 0], np.int64), "planted_bgr")
        return [helper.make_node("Gather", [src, "planted_bgr"], [dst], axis=1)], [idx]

    return _after_input(model, build)


def shift_normalisation(model, mul: float, add: float) -> list[str]:
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

    return _after_input(model, build)


FAULTS = {
    "middle_conv_x1.5": (lambda m: scale_conv(m, "middle", 1.5), "conversion"),
    "last_conv_x1.04": (lambda m: scale_conv(m, "last", 1.04), "conversion"),
    "middle_bias_+0.5": (lambda m: shift_bias(m, 0.5), "conversion"),
    "swapped_activation": (swap_activation, "conversion"),
    "bgr_swap": (swap_channels, "channel_order"),
    "normalisation_shift": (lambda m: shift_normalisation(m, 1.1, 0.15), "normalisation"),
}


def planted(src: str, folder: Path, edit: Callable) -> Path:
    return planted_with_nodes(src, folder, edit)[0]


def planted_with_nodes(src: str, folder: Path, edit: Callable) -> tuple[Path, list[str]]:
    """The edited copy of ``src`` and the names of the nodes the edit planted."""
    import onnx

    model = onnx.load(src)
    nodes = edit(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(src).name
    onnx.save(model, str(path))
    return path, nodes


def acceptable_layers(onnx_path: Path, nodes: list[str], compared: set[str]) -> set[str]:
    """The planted nodes' tensors and the first compared tensors downstream of them.

    "The layer that was changed, or the one right after it": walking the graph forward
    from the planted nodes' outputs, stopping at every compared tensor.
    """
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    planted_out = [o for n in graph.node if n.name in nodes for o in n.output]
    readers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    found, stack, seen = set(), list(planted_out), set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in compared:
            found.add(tensor)
            continue
        stack.extend(o for n in readers.get(tensor, []) for o in n.output)
    return found


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
    onnx_path, nodes = planted_with_nodes(exports[task].onnx_path, tmp_path / "bad", edit)
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
    # Localised: the first divergent layer is the planted one (or the first compared right after it).
    from pillsnap.equivalence.layers import onnx_taps

    div = report["divergence"][task]
    taps = onnx_taps(onnx_path)
    compared = {taps[p["position"]].name for p in div["layers"]}
    first = div["first_divergent"]
    assert first is not None, div["summary"]
    assert first["tensor"] in acceptable_layers(onnx_path, nodes, compared), (nodes, first)
    assert div["pattern"] == (
        "input" if fault in ("bgr_swap", "normalisation_shift") else "interior"
    )
    assert first["before"] < cfg.compare.layer_tolerance < first["rel_error"]
    assert div["worst"]["rel_error"] >= first["rel_error"]
    assert f"first divergent layer {first['module'] or first['layer']}" in report["failure_reason"]
    if div["worst"]["position"] != first["position"]:
        assert (
            f"worst {div['worst']['module'] or div['worst']['layer']}" in compare["failure_reason"]
        )


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
    """No false alarm, and, localised on request, no divergent layer in either model."""
    from pillsnap.config import apply_overrides
    from pillsnap.equivalence.run import run_equivalence

    cfg, exports = release
    cfg = apply_overrides(
        cfg,
        {
            "compare.seed": seed,
            "compare.sample_count": 24,
            "compare.detection_sample_count": 12,
            "compare.localise": "always",
        },
    )
    result = run_equivalence(cfg, exports, out_dir=tmp_path, progress=False)
    assert not result.failed, result.failure_reason
    assert (
        result.report["end_to_end"]["compared"]
        and result.report["end_to_end"]["pill_agreement"] >= 0.99
    )
    for task in ("classification", "detection"):
        div = result.report["divergence"][task]
        assert div["pattern"] == "none" and div["first_divergent"] is None, div["summary"]
        assert div["matched"] >= 150 and div["samples"] >= 2
        assert div["worst"]["rel_error"] < cfg.compare.layer_tolerance / 20  # fp32: <= ~4e-6


def test_equivalence_notebook_plots_the_planted_layer(release, tmp_path):
    """A failed comparison's record, opened in equivalence.ipynb: the table names the planted layer
    and the per-layer plot is drawn (the notebook raises at its end, as a failed record must)."""
    import nbformat
    import papermill

    from pillsnap.equivalence.run import run_equivalence
    from pillsnap.equivalence.store import save_details
    from pillsnap.release.stages import ensure_kernel

    cfg, exports = release
    folder = tmp_path / "record"
    bad, nodes = planted_with_nodes(
        exports["detection"].onnx_path, folder, lambda m: scale_conv(m, "middle", 1.5)
    )
    from pillsnap.config import apply_overrides

    small = apply_overrides(
        cfg,
        {"compare.sample_count": 8, "compare.detection_sample_count": 6, "compare.hard_per_bin": 0},
    )
    result = run_equivalence(
        small,
        classification_onnx=exports["classification"].onnx_path,
        detection_onnx=bad,
        out_dir=folder,
        progress=False,
    )
    assert result.failed and set(result.divergence) == {"detection"}
    save_details(result, folder)
    repo = Path(__file__).resolve().parents[2]
    overrides = [
        f"paths.detection_data={cfg.paths.detection_data}",
        f"paths.classification_data={cfg.paths.classification_data}",
    ]
    with pytest.raises(papermill.PapermillExecutionError, match="EquivalenceError"):
        papermill.execute_notebook(
            str(repo / "notebooks" / "equivalence.ipynb"),
            str(tmp_path / "executed.ipynb"),
            parameters={
                "config_path": str(cfg.source),
                "out_dir": str(folder),
                "overrides": overrides,
            },
            kernel_name=ensure_kernel(),
            progress_bar=False,
            cwd=str(repo),
        )
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    table = next(c for c in executed.cells if "divergence_table" in c.source)
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in table.outputs)
    named = result.divergence["detection"].first.label
    assert named and named in shown and "interior" in shown
    assert nodes[0] == result.divergence["detection"].first.node  # the planted conv itself
    plot = next(c for c in executed.cells if "plot_layer_errors" in c.source)
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
