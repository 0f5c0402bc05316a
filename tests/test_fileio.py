import hashlib
import json
import os

import pytest

from pillsnap.exceptions import MissingPathError
from pillsnap.fileio import (
    atomic_write_bytes,
    find_best_checkpoint,
    list_checkpoints,
    save_json,
    sha256_file,
)


def test_save_json_roundtrip(tmp_path):
    p = save_json(tmp_path / "a" / "r.json", {"x": 1, "p": tmp_path})
    assert json.loads(p.read_text()) == {"x": 1, "p": str(tmp_path)}


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    save_json(target, {"version": 1})

    def boom(*_args):
        raise KeyboardInterrupt  # the process dies mid-write, after data hit the temp file

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_json(target, {"version": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_unserialisable_value_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_json(tmp_path / "r.json", {"x": object()})
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(ValueError):
        save_json(tmp_path / "r.json", {"x": float("nan")})


def test_sha256_streams(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)
    p = atomic_write_bytes(tmp_path / "b.bin", data)
    assert sha256_file(p, chunk_size=4096) == hashlib.sha256(data).hexdigest()


def test_find_best_checkpoint_rule(tmp_path):
    for name in [
        "classification_epoch3.pt",
        "classification_best.pt",
        "detection_last.pt",
        "notes.txt",
    ]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "classification_best.pt",
        "classification_epoch3.pt",
        "detection_last.pt",
    ]
    assert find_best_checkpoint(tmp_path, "classification").name == "classification_best.pt"
    assert find_best_checkpoint(tmp_path, "detection").name == "detection_last.pt"
    with pytest.raises(MissingPathError, match="no segmentation checkpoint"):
        find_best_checkpoint(tmp_path, "segmentation")
    (tmp_path / "best.pt").write_bytes(b"x")
    assert find_best_checkpoint(tmp_path, "detection").name == "best.pt"
    with pytest.raises(MissingPathError, match="paths.exp_dir"):
        list_checkpoints(tmp_path / "missing")


def test_atomic_write_uses_normal_file_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "m.bin", b"x")
    finally:
        os.umask(umask)
    assert (p.stat().st_mode & 0o777) == 0o644
