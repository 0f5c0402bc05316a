"""Run one release stage: a parameterized notebook, executed by papermill, rendered to HTML.

A stage is any notebook ``<notebooks_dir>/<name>.ipynb`` with a ``parameters`` cell;
the release driver knows nothing else about it, so quantization or benchmark
notebooks plug in through ``release.stages`` in the config, with no code change.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillsnap.environment import project_root
from pillsnap.exceptions import MissingPathError, ReleaseError, UserInputError

log = logging.getLogger(__name__)
# nbconvert warns about every plot without alt text; only its errors matter for a release record.
_NBCONVERT_LOG = logging.getLogger(f"{__name__}.nbconvert")
_NBCONVERT_LOG.setLevel(logging.ERROR)

KERNEL_NAME = "pillsnap"
KERNEL_DISPLAY_NAME = "Python (pillsnap)"
_PYTHON_ALIASES = {
    "python",
    f"python{sys.version_info[0]}",
    "python{}.{}".format(*sys.version_info[:2]),
}


def default_notebooks_dir() -> Path:
    root = project_root()
    if root is None or not (root / "notebooks").is_dir():
        raise MissingPathError(
            "no notebooks folder: pillsnap is not installed from a source checkout; "
            "set `release.notebooks_dir` in the config or pass --notebooks-dir"
        )
    return root / "notebooks"


def stage_notebook(notebooks_dir: Path, name: str) -> Path:
    """``<notebooks_dir>/<name>.ipynb``: a plain stem, and a file that really is in that folder."""
    from pillsnap.names import check_stage_name, inside

    check_stage_name(name)
    path = Path(notebooks_dir) / f"{name}.ipynb"
    if path.exists() and not inside(path, notebooks_dir):
        raise UserInputError(
            f"stage notebook {path} (from `release.stages` entry {name!r}) is a link to "
            f"{path.resolve()}, outside {notebooks_dir}; a stage runs only notebooks of that folder"
        )
    if not path.is_file():
        found = ", ".join(sorted(p.stem for p in Path(notebooks_dir).glob("*.ipynb"))) or "none"
        raise MissingPathError(
            f"stage notebook not found: {path} (from `release.stages` entry {name!r}); "
            f"notebooks there: {found}"
        )
    return path


def _runs_this_python(argv0: str) -> bool:
    # jupyter_client swaps a bare "python"/"python3" for sys.executable when it starts a kernel.
    if argv0 in _PYTHON_ALIASES:
        return True
    # Same bin/ folder, symlinks NOT resolved: every venv's python links to the same base binary.
    return Path(os.path.abspath(argv0)).parent == Path(os.path.abspath(sys.executable)).parent


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Make sure kernelspec ``name`` runs *this* interpreter (the one that has pillsnap).

    A fresh clone has no ``pillsnap`` kernelspec; a stale one may point at an old
    venv. Either way it is (re)installed into ``sys.prefix`` (what
    ``python -m ipykernel install --sys-prefix --name pillsnap`` does). Where that
    prefix is not writable, the ``python3`` kernel is used, which jupyter_client
    starts with ``sys.executable`` when its command is a bare ``python``.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def matching(kernel: str) -> bool:
        try:
            spec = KernelSpecManager().get_kernel_spec(kernel)
        except NoSuchKernel:
            return False
        return bool(spec.argv) and _runs_this_python(spec.argv[0])

    if matching(name):
        return name
    from ipykernel.kernelspec import install

    try:
        install(kernel_name=name, display_name=KERNEL_DISPLAY_NAME, prefix=sys.prefix)
        log.info("installed kernelspec %r for %s into %s", name, sys.executable, sys.prefix)
    except OSError as exc:
        log.warning("cannot install kernelspec %r into %s (%s)", name, sys.prefix, exc)
    if matching(name):
        return name
    if matching("python3"):
        log.warning(
            "using kernel 'python3' (runs %s); register %r with "
            "`python -m ipykernel install --sys-prefix --name %s`",
            sys.executable,
            name,
            name,
        )
        return "python3"
    raise ReleaseError(
        f"no Jupyter kernel runs {sys.executable}: kernelspec {name!r} points elsewhere and cannot be "
        f"reinstalled; run `{sys.executable} -m ipykernel install --sys-prefix --name {name}`"
    )


@dataclass
class StageResult:
    """What one executed stage left behind."""

    name: str
    notebook: Path
    executed: Path
    html: Path | None
    passed: bool
    elapsed_s: float
    error: str | None = None
    failed_cell: int | None = None

    def to_record(self, base: Path) -> dict[str, Any]:
        return {
            "name": self.name,
            "notebook": self.notebook.name,
            "executed": _rel(self.executed, base),
            "html": _rel(self.html, base) if self.html else None,
            "status": "passed" if self.passed else "failed",
            "elapsed_s": round(self.elapsed_s, 2),
            "error": self.error,
            "failed_cell": self.failed_cell,
        }


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def run_stage(
    name: str,
    notebook: Path,
    out_dir: Path,
    parameters: dict[str, Any],
    kernel_name: str,
    cell_timeout_s: int | None = None,
) -> StageResult:
    """Execute ``notebook`` into ``out_dir/<name>.ipynb`` and render ``<name>.html``.

    A cell that raises fails the stage; papermill has already written the executed
    notebook with the error visible, and it is rendered to HTML like a passing one.
    The kernel runs with ``out_dir`` as its working directory, so anything a stage
    writes by accident lands in the release record (and in its manifest).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed = out_dir / f"{name}.ipynb"
    start = time.monotonic()
    error, failed_cell = None, None
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters=parameters,
            kernel_name=kernel_name,
            progress_bar=False,
            log_output=False,
            cwd=str(out_dir),
            execution_timeout=cell_timeout_s,
            # no kernel start-up chatter on the console
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as exc:
        error, failed_cell = f"{exc.ename}: {exc.evalue}", exc.cell_index
    except Exception as exc:  # kernel died, timed out, could not start: the stage failed, say why
        log.exception("stage %s did not run to the end", name)
        error = f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - start
    html = render_html(executed) if executed.is_file() else None
    return StageResult(name, notebook, executed, html, error is None, elapsed, error, failed_cell)


def render_html(executed: Path) -> Path:
    """``<name>.ipynb`` -> ``<name>.html`` next to it (the human-readable release record)."""
    import nbformat
    from nbconvert import HTMLExporter

    from pillsnap.fileio import atomic_write_bytes

    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter(log=_NBCONVERT_LOG).from_notebook_node(nb)
    return atomic_write_bytes(executed.with_suffix(".html"), body.encode())
