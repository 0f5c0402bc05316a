import logging
from pathlib import Path

import nbformat
import numpy as np
import pytest
from _tiny import python3_notebook

from pillsnap.report.record import RECORD_MIME, read_records, record, to_jsonable


def test_to_jsonable_converts_numpy_paths_and_nan():
    value = {
        "a": np.float32(0.5),
        "b": np.arange(3),
        "p": Path("x/y"),
        "nan": float("nan"),
        "t": (1, 2),
    }
    assert to_jsonable(value) == {"a": 0.5, "b": [0, 1, 2], "p": "x/y", "nan": None, "t": [1, 2]}
    with pytest.raises(TypeError, match="cannot record a object"):
        to_jsonable(object())


def test_record_outside_a_kernel_only_logs(caplog):
    with caplog.at_level(logging.INFO, logger="pillsnap.report.record"):
        record("verdict", "passed")
    assert "record verdict = 'passed'" in caplog.text


def test_read_records_later_wins_and_ignores_other_outputs(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "x",
            outputs=[
                nbformat.v4.new_output(
                    "display_data", data={RECORD_MIME: {"name": "m", "value": 1}}
                ),
                nbformat.v4.new_output("stream", name="stdout", text="noise"),
            ],
        ),
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell(
            "y",
            outputs=[
                nbformat.v4.new_output(
                    "display_data",
                    data={
                        RECORD_MIME: {"name": "m", "value": {"k": [2]}},
                        "text/plain": "[recorded] m",
                    },
                ),
            ],
        ),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert read_records(path) == {"m": {"k": [2]}}


def test_record_round_trips_through_papermill(tmp_path):
    import papermill

    nb = python3_notebook(
        "import numpy as np\nfrom pillsnap.report.record import record\n"
        "record('scores', np.linspace(0, 1, n))\nrecord('verdict', {'passed': True})",
        parameters="n: int = 2  # how many",
    )
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    papermill.execute_notebook(
        str(src), str(out), parameters={"n": 3}, kernel_name="python3", progress_bar=False
    )
    assert read_records(out) == {"scores": [0.0, 0.5, 1.0], "verdict": {"passed": True}}
