import json
import sys

import nbformat
import pytest
from _tiny import python3_notebook

from pillsnap.exceptions import MissingPathError
from pillsnap.release import stages


@pytest.fixture
def isolated_kernels(tmp_path, monkeypatch):
    """Kernelspecs looked up and installed only under tmp_path (the venv is not touched)."""
    prefix = tmp_path / "prefix"
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "user"))
    import jupyter_core.paths

    monkeypatch.setattr(jupyter_core.paths, "ENV_JUPYTER_PATH", [str(prefix / "share" / "jupyter")])
    monkeypatch.setattr(jupyter_core.paths, "SYSTEM_JUPYTER_PATH", [])
    return prefix / "share" / "jupyter" / "kernels"


def test_ensure_kernel_installs_a_missing_spec_for_this_python(isolated_kernels):
    assert stages.ensure_kernel("pillsnap-test") == "pillsnap-test"
    spec = json.loads((isolated_kernels / "pillsnap-test" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable


def test_ensure_kernel_replaces_a_spec_of_another_venv(isolated_kernels):
    stale = isolated_kernels / "pillsnap-test"
    stale.mkdir(parents=True)
    (stale / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [
                    "/old/venv/bin/python",
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                ],
                "display_name": "old",
                "language": "python",
            }
        )
    )
    assert stages.ensure_kernel("pillsnap-test") == "pillsnap-test"
    assert json.loads((stale / "kernel.json").read_text())["argv"][0] == sys.executable


def test_stage_notebook_lists_what_exists(tmp_path):
    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "export.ipynb")
    assert stages.stage_notebook(tmp_path, "export") == tmp_path / "export.ipynb"
    with pytest.raises(MissingPathError, match="quantize.*notebooks there: export"):
        stages.stage_notebook(tmp_path, "quantize")


def test_failed_stage_records_cell_and_error(tmp_path):
    nb = python3_notebook(
        "print('before')",
        "raise ValueError(f'bad x {x}')",
        parameters="x: int = 1  # a parameter",
    )
    nbformat.write(nb, tmp_path / "stage.ipynb")
    out = tmp_path / "out"
    out.mkdir()
    result = stages.run_stage("stage", tmp_path / "stage.ipynb", out, {"x": 7}, "python3")
    assert not result.passed and result.error == "ValueError: bad x 7"
    assert result.html == out / "stage.html" and "bad x 7" in result.html.read_text()
    record = result.to_record(out)
    assert (
        record["executed"] == "stage.ipynb"
        and record["status"] == "failed"
        and record["failed_cell"] >= 2
    )
