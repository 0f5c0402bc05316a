"""The model manager without a server: start-up resolution, reload path checks, the atomic
swap (409 while loading, failures keep the old model), and the INT8 precision choice.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from _serving import copy_release, rewrite_manifest, tamper

from pillsnap.config import apply_overrides
from pillsnap.models.common import META_INT8_CPU_CLASS
from pillsnap.serve.manager import (
    ModelManager,
    ModelSource,
    ReloadInProgress,
    check_reload_path,
    resolve_source,
)
from pillsnap.serve.model import ModelRejected, load_release
from pillsnap.serve.settings import ServeSettings, allowed_roots


def settings(**kw) -> ServeSettings:
    return ServeSettings(_env_file=None, **kw)


@pytest.fixture(scope="module")
def three(releases, tmp_path_factory):
    """A, B and C (newest by time, tampered) in an out_dir of their own."""
    runs = tmp_path_factory.mktemp("three") / "runs"
    runs.mkdir()
    a = copy_release(releases.a, runs / releases.a.name)
    b = copy_release(releases.b, runs / releases.b.name)
    c = copy_release(releases.b, runs / "20250103-000000-test002")
    rewrite_manifest(c, "20250103-000000-test002", "2025-01-03T00:00:00Z")
    tamper(c)
    return apply_overrides(releases.cfg, {"paths.out_dir": str(runs)}), a, b, c


def test_model_path_release_folder_or_file_inside_it(three):
    cfg, a, _, _ = three
    assert resolve_source(settings(model_path=a), cfg) == ModelSource("MODEL_PATH", a)
    for inside in (a / "detection.onnx", a / "export_report.json"):
        assert resolve_source(settings(model_path=inside), cfg).release_dir == a


def test_tampered_model_path_refuses_to_start_or_falls_through(three):
    cfg, _, b, c = three
    with pytest.raises(ModelRejected) as exc:
        resolve_source(settings(model_path=c), cfg)
    assert "changed: classification-" in str(exc.value) and "serve.strict=false" in str(exc.value)
    with pytest.raises(ModelRejected, match="does not exist"):
        resolve_source(settings(model_path=c / "nothing-here"), cfg)
    source = resolve_source(settings(model_path=c, strict=False), cfg)
    assert source.kind == "newest_release" and source.release_dir == b  # C is newer but tampered
    assert "MODEL_PATH" in source.refused[0]


def test_newest_verified_release_then_torch_then_nothing(three, tmp_path):
    cfg, _, b, _ = three
    assert resolve_source(settings(), cfg) == ModelSource("newest_release", b)
    empty = apply_overrides(cfg, {"paths.out_dir": str(tmp_path / "none")})
    assert resolve_source(settings(), empty).kind == "torch_fallback"
    no_ckpt = apply_overrides(empty, {"paths.exp_dir": str(tmp_path)})
    with pytest.raises(ModelRejected, match="nothing to serve.*Torch checkpoints missing"):
        resolve_source(settings(), no_ckpt)


def test_reload_paths_are_checked_before_anything_is_opened(three, tmp_path):
    cfg, a, _, _ = three
    root = a.parent.resolve()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    try:
        assert check_reload_path(a.name, [root]) == a
        assert check_reload_path(str(a / "detection.onnx"), [root]) == a
        attacks = {
            f"../{outside.name}": "forbidden",
            f"{a.name}/../../{outside.parent.name}": "forbidden",
            str(outside): "forbidden",
            "/etc/passwd": "forbidden",
            "evil": "forbidden",
            "evil/anything": "forbidden",
            "http://example.com/model.onnx": "path",
            "file:///etc/passwd": "path",
            "missing-release": "path",
            "": "path",
            "a\x00b": "path",
        }
        for raw, step in attacks.items():
            with pytest.raises(ModelRejected) as exc:
                check_reload_path(raw, [root])
            assert exc.value.step == step, (raw, exc.value)
        for raw in (7, None, ["x"]):
            with pytest.raises(ModelRejected, match="non-empty string"):
                check_reload_path(raw, [root])
    finally:
        (root / "evil").unlink()
    assert allowed_roots(settings(), cfg) == [root]


@pytest.mark.slow
def test_reload_swaps_atomically_refuses_a_second_and_keeps_the_old_on_failure(three):
    cfg, a, b, c = three
    manager = ModelManager(cfg, settings(), allowed_roots(settings(), cfg))

    async def scenario():
        first = await manager.start(ModelSource("MODEL_PATH", a))
        pinned = manager.current
        reload_b = asyncio.create_task(manager.reload(b.name, "test"))
        await asyncio.sleep(0.05)
        assert manager.reloading and manager.current is first  # the old one serves meanwhile
        with pytest.raises(ReloadInProgress):
            await manager.reload(a.name, "second")
        new, old = await reload_b
        assert (new.version, old) == (b.name, a.name) and manager.current is new
        assert pinned.version == a.name  # a request holding the old object keeps it
        with pytest.raises(ModelRejected) as exc:
            await manager.reload(c.name, "test")
        assert exc.value.step == "verify" and manager.current is new
        return first, new

    first, new = asyncio.run(scenario())
    assert f"detection-{a.name}.onnx" in first.files and f"detection-{b.name}.onnx" in new.files


def _quantize_classifier(src: Path, dst: Path, cfg) -> None:
    """Static QDQ INT8 of the demo classifier, calibrated on a few demo crops."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from pillsnap.models.common import read_onnx_metadata, write_onnx_metadata
    from pillsnap.preprocess import PreprocessSpec, preprocess

    crops = sorted(Path(cfg.paths.classification_data, "val").glob("*/*.jpg"))[:8]
    batch = preprocess(crops, PreprocessSpec.from_config(cfg.classification))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": batch[i : i + 1]} for i in range(len(batch))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
    )
    write_onnx_metadata(dst, {**read_onnx_metadata(src), META_INT8_CPU_CLASS: "not-this-cpu"})


@pytest.mark.slow
def test_int8_precision_uses_int8_models_and_falls_back_to_fp32_with_a_warning(three, tmp_path):
    cfg, a, _, _ = three
    plain = load_release(a, cfg, "MODEL_PATH", precision="int8")
    assert dict(plain.precision) == {"detection": "fp32", "classification": "fp32"}
    assert sum("no INT8" in w and "serving it in fp32" in w for w in plain.warnings) == 2

    q = copy_release(a, tmp_path / a.name)
    int8 = q / f"classification-{a.name}.int8.onnx"
    _quantize_classifier(q / f"classification-{a.name}.onnx", int8, cfg)
    os.symlink(int8.name, q / "classification.int8.onnx")
    rewrite_manifest(q, a.name)
    served = load_release(q, cfg, "MODEL_PATH", precision="int8")
    assert dict(served.precision) == {"detection": "fp32", "classification": "int8"}
    assert served.models["classification"] == int8.name
    assert any("no INT8 detection" in w for w in served.warnings)
    assert any("'not-this-cpu' CPU" in w for w in served.warnings)
    photos = sorted(Path(cfg.paths.detection_data).parent.glob("images/val/*.jpg"))[:4]
    fp32 = [[p.edi_code for p in ps] for ps in plain.pipeline.predict(photos)]
    q8 = [[p.edi_code for p in ps] for ps in served.pipeline.predict(photos)]
    agree = np.mean([x == y for a_, b_ in zip(fp32, q8) for x, y in zip(a_, b_)])
    assert sum(map(len, fp32)) >= 8 and agree >= 0.75, (fp32, q8)
    shutil.rmtree(q)
