"""Record values from a running notebook into the executed notebook, and read them back.

scrapbook is unmaintained; this is the small piece of it we need. ``record(name,
value)`` displays a custom output with the MIME type ``RECORD_MIME`` (plus a
one-line text form for people reading the notebook). The value travels inside
the executed ``.ipynb`` that papermill writes, so tests and the release driver
read it with ``read_records(path)`` instead of re-parsing printed text.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbformat import NotebookNode

log = logging.getLogger(__name__)

RECORD_MIME = "application/vnd.pillsnap.report.record+json"


def to_jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, paths, dataclasses and pandas objects.

    NaN / inf become None: JSON has no spelling for them and a record must round-trip.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # pandas DataFrame
        return to_jsonable(value.to_dict(orient="records"))
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_jsonable(value.tolist())
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return to_jsonable(asdict(value))
    raise TypeError(
        f"cannot record a {type(value).__name__}; pass JSON-like data (dict, list, number, str)"
    )


def record(name: str, value: Any) -> None:
    """Attach ``value`` under ``name`` to the current notebook cell's outputs.

    Outside a Jupyter kernel (a plain script) the value is only logged.
    """
    payload = {"name": name, "value": to_jsonable(value)}
    json.dumps(payload, allow_nan=False)  # fail here, in the cell that recorded it
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - ipykernel is a dependency
        get_ipython = None  # type: ignore[assignment]
    if get_ipython is None or get_ipython() is None:
        log.info("record %s = %r (not in a notebook kernel)", name, payload["value"])
        return
    from IPython.display import display

    text = json.dumps(payload["value"])
    summary = text if len(text) <= 120 else text[:117] + "..."
    display({RECORD_MIME: payload, "text/plain": f"[recorded] {name} = {summary}"}, raw=True)


def read_records(notebook: str | Path | NotebookNode) -> dict[str, Any]:
    """Every value recorded in an executed notebook (a later record of a name wins)."""
    import nbformat

    nb = (
        nbformat.read(str(notebook), as_version=4)
        if isinstance(notebook, (str, Path))
        else notebook
    )
    found: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = (
                output.get("data", {})
                if output.get("output_type") in ("display_data", "execute_result")
                else {}
            )
            if RECORD_MIME in data:
                payload = data[RECORD_MIME]
                if isinstance(payload, str):  # some writers store JSON MIME bundles as text
                    payload = json.loads(payload)
                found[payload["name"]] = payload["value"]
    return found
