"""Opening an ONNX file someone handed us: parse it safely, vet its external data.

An ONNX model can keep its weights in side files ("external data"), named by a
``location`` inside the model. onnx and ONNX Runtime refuse most escapes, but ORT
follows a hard link to any file of the same file system, and the two disagree on
which folder a symlinked model's data lives in. So before a user-given model reaches
``onnx.load`` or ORT, ``check_external_data`` requires every location to be a plain
relative file inside the model's own (real) folder, with one link and an in-range
offset/length; nothing of the external files is read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from pillsnap.exceptions import UserInputError

if TYPE_CHECKING:
    import onnx


class UnsafeOnnxError(UserInputError):
    """An ONNX file whose external data points outside its folder (or is otherwise unsafe)."""


def parse_onnx(path: str | Path, what: str = "ONNX model", key: str = "") -> onnx.ModelProto:
    """The model's graph and metadata (external weights not loaded), or a clear error.

    A truncated or random file makes protobuf raise ``DecodeError`` (or parse into an
    empty model); either becomes a ``UserInputError`` naming the file and the key.
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    src = f" (from {key})" if key else ""
    if not path.is_file():
        raise UserInputError(f"{what} not found: {path}{src}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise UserInputError(
            f"{path}{src} is not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}): "
            f"it is truncated, damaged or another kind of file. Pass the .onnx written by "
            f"`pillsnap release` / `pillsnap compare`, or export it again."
        ) from None
    if model.ir_version <= 0 or not model.graph.output or not model.graph.input:
        raise UserInputError(
            f"{path}{src} is not a readable ONNX model: it parses to a model without a graph "
            f"(ir_version {model.ir_version}, {len(model.graph.node)} nodes); it is empty, "
            f"truncated or another kind of file. Export it again."
        )
    check_external_data(path, model)
    return model


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto: initializers, sparse ones, attribute tensors, subgraphs, functions."""
    from onnx import AttributeProto

    def from_graph(g: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield from (sp.values, sp.indices)
        yield from from_nodes(g.node)

    def from_nodes(nodes: object) -> Iterator[onnx.TensorProto]:
        for n in nodes:  # type: ignore[attr-defined]
            for a in n.attribute:
                if a.type == AttributeProto.TENSOR:
                    yield a.t
                elif a.type == AttributeProto.TENSORS:
                    yield from a.tensors
                elif a.type == AttributeProto.SPARSE_TENSOR:
                    yield from (a.sparse_tensor.values, a.sparse_tensor.indices)
                elif a.type == AttributeProto.SPARSE_TENSORS:
                    for sp in a.sparse_tensors:
                        yield from (sp.values, sp.indices)
                elif a.type == AttributeProto.GRAPH:
                    yield from from_graph(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    for g in a.graphs:
                        yield from from_graph(g)

    yield from from_graph(model.graph)
    for f in model.functions:
        yield from from_nodes(f.node)


def _location_problem(base: Path, info: dict[str, str]) -> str | None:
    loc = info.get("location", "")
    if not loc or "\x00" in loc:
        return "empty location"
    posix, windows = PurePosixPath(loc), PureWindowsPath(loc)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or loc[0] in "/\\":
        return "an absolute path"
    if ".." in posix.parts or ".." in windows.parts:
        return "a path with '..'"
    if ":" in loc:
        return "a URL, drive or stream name (':')"
    target = Path(os.path.realpath(base / loc))
    if os.path.commonpath([base, target]) != str(base):
        return f"a path that resolves outside the model's folder ({target})"
    try:
        st = os.stat(target)
    except OSError as exc:
        return f"a missing file ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink > 1:
        return "a file with several hard links (it may alias a file outside the folder)"
    offset, length = int(info.get("offset") or 0), info.get("length")
    if offset < 0 or offset > st.st_size or (length and offset + int(length) > st.st_size):
        return f"an offset/length outside the {st.st_size}-byte file"
    return None


def check_external_data(path: str | Path, model: onnx.ModelProto | None = None) -> list[str]:
    """The distinct external-data locations of ``path`` (``[]``: self-contained), all vetted.

    Raises ``UnsafeOnnxError`` naming the tensor and the location when one is not a
    plain file inside the model's own folder. The model path itself must not be a
    symlink, because onnx and ONNX Runtime would look for its data in different folders.
    """
    import onnx

    path = Path(path)
    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    refs = [
        (t.name, {e.key: e.value for e in t.external_data})
        for t in _tensors(model)
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if refs and path.is_symlink():
        raise UnsafeOnnxError(
            f"{path} is a symlink to a model with external data; onnx and onnxruntime would "
            f"read that data from different folders. Pass the real file ({os.path.realpath(path)})."
        )
    base = Path(os.path.realpath(path.parent))
    locations: list[str] = []
    for name, info in refs:
        why = _location_problem(base, info)
        if why:
            raise UnsafeOnnxError(
                f"refusing {path}: tensor {name!r} keeps its data in {info.get('location', '')!r}, "
                f"{why}. External data must be a plain file inside the model's folder "
                f"({base}); nothing was read from it. Re-export the model, or save it with "
                f"`onnx.save(model, path, save_as_external_data=True)` next to its data."
            )
        if info["location"] not in locations:
            locations.append(info["location"])
    return locations
