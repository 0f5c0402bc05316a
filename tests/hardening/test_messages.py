"""Issue 10, class 3 (messages): bad input is one clear paragraph, never a traceback.

What was seen and what to do: the image pixel limit (one setting, ``images.max_pixels``,
applied wherever an image is opened, its skip reason printed), skip reasons that say what
a file is (not which optional decoder failed to import), skipped files and empty classes
summarised on the console, ``release diff`` on a folder that is not a release, and hints
that name the key that was wrong. Each case checks the exit code, the message and that
nothing outside the expected folder changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _hardening import project, tree
from PIL import Image

from pillsnap.cli import main as cli_main


@pytest.fixture
def proj(tmp_path, tmp_path_factory):
    return project(tmp_path / "proj", tmp_path_factory)


@pytest.fixture
def limit():
    """Restore the process-wide pixel limit after a test changes it."""
    from pillsnap.preprocess import DEFAULT_MAX_PIXELS, set_max_image_pixels

    yield set_max_image_pixels
    set_max_image_pixels(DEFAULT_MAX_PIXELS)


def test_pixel_limit_is_one_setting_for_sampling_decoding_and_infer(tmp_path, limit, capsys, proj):
    """smoke/coverage sampling (header probe), full mode (decoding) and infer give the same
    reason for an image above the limit, naming the key; nothing raises."""
    from pillsnap.equivalence.batches import iter_batches
    from pillsnap.preprocess import load_image
    from pillsnap.sampling.sample import SampleItem, probe_image

    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300), "white").save(big)
    limit(50_000)
    reason = probe_image(big)
    assert reason.startswith("too large (300x300 = 90,000 pixels); the limit is 50,000 pixels")
    assert "images.max_pixels" in reason
    skipped: list = []
    assert (
        list(iter_batches([SampleItem(big, 0)], 4, lambda it: load_image(it.path), skipped)) == []
    )
    assert skipped[0].reason == reason
    out = proj["root"] / "r.jsonl"
    folder = tmp_path / "photos"
    folder.mkdir()
    big.rename(folder / "big.png")
    Image.new("RGB", (64, 64), "gray").save(folder / "small.png")
    before = tree(proj["root"])
    rc = cli_main(
        ["infer", "--config", str(proj["config"]), "--task", "classify", "--inputs", str(folder)]
        + ["--out", str(out), "--set", "images.max_pixels=50000"]
    )
    err = capsys.readouterr().err
    assert (
        rc == 0 and f"skipped {folder / 'big.png'}: too large" in err and "images.max_pixels" in err
    )
    assert "1 image(s) processed, 1 skipped" in err
    assert set(tree(proj["root"])) - set(before) == {"r.jsonl"}


def test_a_file_that_is_not_an_image_is_called_that(tmp_path, capfd):
    """Ultralytics patches PIL.Image.open to try the optional pi_heif plugin on unknown files
    (and warns that it is missing); the reason must say the file is not an image, and the
    console must not blame a missing module."""
    import ultralytics  # noqa: F401 - installs the patch

    from pillsnap.exceptions import DataError
    from pillsnap.preprocess import load_image
    from pillsnap.sampling.sample import probe_image

    fake = tmp_path / "photo.jpg"
    fake.write_text("a shopping list, not a photo\n")
    reason = probe_image(fake)
    assert reason == "not an image (unknown or unsupported file format)"
    with pytest.raises(DataError) as err:
        load_image(fake)
    assert str(err.value) == f"cannot read image {fake}: {reason}"
    printed = "".join(capfd.readouterr()).lower()
    assert "heif" not in printed and "heif" not in str(err.value).lower()


@pytest.mark.slow
def test_compare_prints_skipped_files_and_empty_classes(tmp_path, tmp_path_factory, capsys, limit):
    """A real smoke comparison of the demo classifier on a val folder holding an oversized
    image, a text file named .jpg and an empty class folder: it passes, and the console says
    what was skipped and why (the report keeps the full list)."""
    from _demo_release import demo_release

    cfg, exports = demo_release(tmp_path_factory)
    src = Path(cfg.paths.classification_data) / "val"
    val = tmp_path / "cls" / "val"
    folders = sorted(p for p in src.iterdir() if p.is_dir())
    for folder in folders[:6]:
        (val / folder.name).mkdir(parents=True)
        for img in sorted(folder.iterdir())[:2]:
            (val / folder.name / img.name).symlink_to(img)
    Image.new("RGB", (400, 400), "white").save(val / folders[0].name / "huge.png")
    (val / folders[1].name / "notes.jpg").write_text("not an image")
    (val / folders[6].name).mkdir()  # a class folder without images
    before = tree(tmp_path / "cls")
    out = tmp_path / "out"
    rc = cli_main(
        ["compare", "--config", str(cfg.source), "--classification-onnx"]
        + [exports["classification"].onnx_path, "--out-dir", str(out), "--quiet"]
        + [
            "--set",
            f"paths.classification_data={tmp_path / 'cls'}",
            "--set",
            "images.max_pixels=100000",
        ]
        + ["--set", "compare.sample_count=20", "--set", "compare.hard_per_bin=0"]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("classification: ")]
    assert len(lines) == 2, captured.err
    assert "2 file(s) skipped" in lines[0] and "huge.png: too large (400x400" in lines[0]
    assert "images.max_pixels" in lines[0] and "notes.jpg: not an image" in lines[0]
    assert "pi_heif" not in captured.err and "pi-heif" not in captured.err
    assert lines[1] == f"classification: 1 empty class folder(s): {folders[6].name}"
    report = json.loads((out / "export_report.json").read_text())
    assert report["models"]["classification"]["compare"]["skipped_count"] == 2
    assert tree(tmp_path / "cls") == before


def test_release_diff_against_a_folder_that_is_not_a_release(proj, capsys):
    plain = proj["root"] / "notes"
    plain.mkdir()
    before = tree(proj["root"])
    rc = cli_main(["release", "diff", str(plain), str(proj["root"] / "missing")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{plain} is not a release folder: it has no manifest.json" in err
    assert "pillsnap release list" in err and "Traceback" not in err
    (plain / "manifest.json").write_text("{not json")
    assert cli_main(["release", "diff", str(plain), str(plain)]) == 2
    assert "cannot compare" in capsys.readouterr().err
    assert set(tree(proj["root"])) - set(before) == {"notes/manifest.json"}


def test_a_missing_checkpoint_names_the_key_that_was_wrong(tmp_path, tmp_path_factory, capsys):
    p = project(
        tmp_path / "proj",
        tmp_path_factory,
        classification={"checkpoint": "classifcation_best.pt"},  # a typo in the file name
    )
    before = tree(p["root"])
    assert cli_main(["release", "--config", str(p["config"])]) == 2
    err = capsys.readouterr().err
    assert "`classification.checkpoint` = 'classifcation_best.pt'" in err
    assert "--set classification.checkpoint=classification_best.pt" in err
    assert "paths.exp_dir=" not in err  # the folder is right: do not send the user there
    assert tree(p["root"]) == before
    p2 = project(tmp_path / "proj2", tmp_path_factory, paths={"exp_dir": "nowhere"})
    assert cli_main(["release", "--config", str(p2["config"])]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "fix `paths.exp_dir`" in err


def test_a_broken_config_is_a_message_not_a_traceback(proj, capsys):
    proj["config"].write_text("paths: [unclosed\n")
    before = tree(proj["root"])
    for command in ("compare", "release", "infer"):
        extra = ["--inputs", str(proj["root"])] if command == "infer" else []
        assert cli_main([command, "--config", str(proj["config"]), *extra]) == 2
        err = capsys.readouterr().err
        assert "not valid YAML" in err and "Traceback" not in err
    assert tree(proj["root"]) == before
