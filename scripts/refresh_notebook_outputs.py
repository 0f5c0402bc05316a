"""Re-record the outputs that nbval checks in the committed notebooks.

    .venv/bin/python scripts/refresh_notebook_outputs.py [notebooks/export.ipynb ...]

Runs each notebook with its default parameters (as nbval does), then copies the
outputs of the cells marked ``# NBVAL_CHECK_OUTPUT`` into the committed notebook
and clears every other output, execution count and run metadata, so the committed
files carry only deterministic outputs. Run it when a parity figure changes on
purpose (e.g. the fixture models were retrained), and review the diff.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
import papermill

from pillsnap.environment import project_root
from pillsnap.release.stages import ensure_kernel

MARKER = "# NBVAL_CHECK_OUTPUT"


def refresh(path: Path, kernel: str) -> int:
    """Execute ``path`` and store its checked outputs; returns how many cells were refreshed."""
    source = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        executed = papermill.execute_notebook(
            str(path),
            str(Path(tmp) / path.name),
            kernel_name=kernel,
            progress_bar=False,
            cwd=str(path.parent),  # where nbval starts its kernel
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    ran = {cell.get("id"): cell for cell in executed.cells}
    refreshed = 0
    for cell in source.cells:
        if cell.cell_type != "code":
            continue
        checked = MARKER in cell.source
        # nbval skips ("unrun") a cell without an execution count, so checked cells keep theirs
        cell.execution_count = ran[cell.get("id")].execution_count if checked else None
        cell.outputs = ran[cell.get("id")].outputs if checked else []
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        refreshed += checked
    source.metadata.pop("papermill", None)
    nbformat.write(source, path)
    return refreshed


def main(argv: list[str]) -> int:
    root = project_root() or Path.cwd()
    paths = [Path(p) for p in argv] or sorted((root / "notebooks").glob("*.ipynb"))
    kernel = ensure_kernel()
    for path in paths:
        print(f"{path}: {refresh(path.resolve(), kernel)} checked cell(s) refreshed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
