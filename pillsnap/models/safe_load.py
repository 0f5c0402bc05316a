"""Checkpoint loading that never executes code from the file.

Why not plain ``torch.load``: a checkpoint is a pickle, and unpickling can call any
function the file names (``os.system`` included). Why not plain
``torch.load(weights_only=True)`` with the model classes allow-listed: torch's
restricted unpickler still lets the file *call* any allow-listed global with
arguments of its choosing (REDUCE), and e.g. ``DetectionModel(cfg)`` ``eval``s the
yaml's ``activation`` string. So, for every file:

1. the pickle's globals are listed statically (``pickletools``, nothing runs) and
   compared with an explicit allow-list; anything else is refused, naming the
   globals and saying how to re-save the weights;
2. the only unpickler used is torch's ``weights_only=True`` one, with a registry that
   holds exactly our entries during the load (other libraries' registrations are
   set aside, so they can neither widen nor race the gate);
3. data types a training script leaves (``argparse.Namespace``, numpy scalars,
   paths, dates) are registered as themselves: calling them only builds values;
4. ``nn.Module`` classes (detector only) are registered as ``_NewOnly`` proxies:
   rebuilding an instance from its state (NEWOBJ + BUILD, what ``torch.save``
   writes) works, a constructor call (REDUCE) is refused;
5. the loaded module tree is checked for what a genuine training run never leaves
   (hooks, methods overridden in instance state, foreign module types).

Pillsnap never imports a module a file names, so an unknown global cannot run
import-time code either.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import pathlib
import pickle
import pickletools
import threading
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import CheckpointError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RESAVE_HINT = (
    "Re-save only the weights where the file was made: "
    "`torch.save({'model': model.state_dict()}, 'classification_best.pt')` for the classifier; "
    "an Ultralytics detector checkpoint written by its trainer (weights/best.pt) loads as it is."
)
_MODULE_PREFIXES = (
    "torch.nn.modules.",
    "timm.",
    "ultralytics.nn.",
    "torchvision.models.",
    "__main__.",
)
# Opcodes torch's weights_only unpickler implements; anything else it refuses anyway.
# fmt: off
_WO_OPS = frozenset((
    "APPEND", "APPENDS", "BINFLOAT", "BINGET", "BININT", "BININT1", "BININT2", "BINPERSID",
    "BINPUT", "BINUNICODE", "BUILD", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET", "EMPTY_TUPLE",
    "GLOBAL", "LONG1", "LONG_BINGET", "LONG_BINPUT", "MARK", "NEWFALSE", "NEWOBJ", "NEWTRUE",
    "NONE", "PROTO", "REDUCE", "SETITEM", "SETITEMS", "SHORT_BINSTRING", "STOP", "TUPLE",
    "TUPLE1", "TUPLE2", "TUPLE3",
))
# fmt: on
_LOCK = threading.Lock()


class CheckpointRefused(CheckpointError):
    """The file needs something outside the allow-list; nothing from it was executed."""


# ------------------------------------------------------------------ what the file is, statically
def sniff(path: Path) -> str:
    """A short description of what a file that is not a torch.save archive looks like."""
    head = path.read_bytes()[:64] if path.is_file() else b""
    if not head:
        return "it is empty (0 bytes)"
    if head[:1] == b"\x80":
        return "it is a raw pickle or the legacy (PyTorch < 1.6) format"
    if head.startswith(b"PK"):
        return "it is a damaged or truncated zip archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it does not start like any checkpoint format (first bytes {head[:8].hex()})"
    if text.isprintable() or all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is a text file (starts with {text[:40]!r})"
    return f"it does not start like any checkpoint format (first bytes {head[:8].hex()})"


def _data_pkl(path: Path, what: str) -> bytes:
    """The bytes torch will unpickle; only the zip format (``torch.save`` since 1.6) is read."""
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not is_zip:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {sniff(path)}, not a PyTorch checkpoint. Expected the "
            f"{what} as the zip archive `torch.save` writes (PyTorch >= 1.6). {RESAVE_HINT}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith(("/constants.pkl", "/code/")) or "/code/" in n for n in names):
                raise CheckpointRefused(
                    f"{path} is a TorchScript archive (torch.jit.save), not a weights checkpoint. "
                    f"{RESAVE_HINT}"
                )
            pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1 or len(set(names)) != len(names):
                raise CheckpointError(
                    f"cannot read checkpoint {path}: expected exactly one <archive>/data.pkl in "
                    f"the zip, found {pkls or names[:5]}; it was not written by torch.save"
                )
            return archive.read(pkls[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {exc}; the file is truncated or damaged "
            f"(expected the {what} as a complete file written by torch.save)"
        ) from None


def checkpoint_globals(path: str | Path, what: str = "checkpoint") -> set[str]:
    """Every ``module.name`` the pickle references, listed without executing anything.

    Python-2 names are mapped the way torch maps them (``__builtin__.set`` ->
    ``builtins.set``); opcodes the weights_only unpickler does not implement are
    reported as ``<opcode NAME>`` so the caller refuses them with a clear message.
    """
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    data = _data_pkl(Path(path), what)
    found: set[str] = set()
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, name = str(arg).split(" ", 1)
                if (module, name) in NAME_MAPPING:
                    module, name = NAME_MAPPING[(module, name)]
                elif module in IMPORT_MAPPING:
                    module = IMPORT_MAPPING[module]
                found.add(f"{module}.{name}")
            elif op.name not in _WO_OPS:
                found.add(f"<opcode {op.name}>")
    except (ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: its pickle is damaged ({exc}); "
            f"expected the {what} as a complete file written by torch.save"
        ) from None
    return found


def torch_default_globals() -> set[str]:
    """What torch's weights_only unpickler allows unregistered: tensors, storages, dtypes, ..."""
    from torch import _weights_only_unpickler as wo

    return set(wo._get_allowed_globals())


# ------------------------------------------------------------------ allow-lists
def data_globals(ultralytics: bool = False) -> dict[str, Any]:
    """Inert value types training scripts leave in checkpoints (calling them builds a value)."""
    import numpy as np

    scalar = np.float64(0).__reduce__()[0]  # numpy._core.multiarray.scalar (numpy 2)
    allow: dict[str, Any] = {
        "argparse.Namespace": argparse.Namespace,
        "types.SimpleNamespace": types.SimpleNamespace,
        "numpy.core.multiarray.scalar": scalar,  # spelling of files written with numpy 1.x
        "numpy._core.multiarray.scalar": scalar,
        "numpy.dtype": np.dtype,
        "datetime.datetime": datetime.datetime,
        "datetime.date": datetime.date,
        "datetime.timedelta": datetime.timedelta,
        "datetime.timezone": datetime.timezone,
    }
    for module in ("pathlib", "pathlib._local"):  # paths become *pure* paths: no file access
        allow[f"{module}.PosixPath"] = pathlib.PurePosixPath
        allow[f"{module}.WindowsPath"] = pathlib.PureWindowsPath
    if ultralytics:  # model.args of un-stripped (epoch / last) Ultralytics checkpoints
        from ultralytics.utils import IterableSimpleNamespace

        allow["ultralytics.utils.IterableSimpleNamespace"] = IterableSimpleNamespace
        allow["ultralytics.yolo.utils.IterableSimpleNamespace"] = IterableSimpleNamespace
    return allow


def _numpy_dtype_classes() -> list[type]:
    """``np.dtype(...)`` returns e.g. ``Float64DType``, which BUILD then needs allowed.

    They never appear as GLOBALs. Numeric and bool only: an object dtype cannot be built.
    """
    import numpy as np

    return sorted({type(np.dtype(k)) for k in "?bBhHiIlLqQefdgFDG"}, key=lambda t: t.__name__)


_DETECTOR_MODULES: dict[str, type] | None = None


def detector_module_classes() -> dict[str, type]:
    """``pickle name -> class`` of the nn.Module classes an Ultralytics detector may hold.

    Classes *defined in* ``torch.nn.modules.*`` or ``ultralytics.nn.modules.*`` that subclass
    nn.Module, plus ``ultralytics.nn.tasks.DetectionModel``; never functions, never
    re-exports. Safe only together with the NEWOBJ-only proxies (constructors never run).
    """
    global _DETECTOR_MODULES
    if _DETECTOR_MODULES is None:
        import importlib
        import pkgutil

        import torch
        from ultralytics.nn.tasks import DetectionModel

        out: dict[str, type] = {}
        for pkg_name in ("torch.nn.modules", "ultralytics.nn.modules"):
            pkg = importlib.import_module(pkg_name)
            subs = [f"{pkg_name}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
            for mod in [pkg, *(importlib.import_module(s) for s in subs)]:
                for obj in vars(mod).values():
                    if (
                        isinstance(obj, type)
                        and issubclass(obj, torch.nn.Module)
                        and obj.__module__ == mod.__name__
                    ):
                        out[f"{mod.__name__}.{obj.__qualname__}"] = obj
        out["ultralytics.nn.tasks.DetectionModel"] = DetectionModel
        _DETECTOR_MODULES = out
    return _DETECTOR_MODULES


class _NewOnly:
    """Stands in for an nn.Module class while unpickling: ``__new__`` yes, constructor call no."""

    __slots__ = ("target",)

    def __new__(klass, *args: Any) -> Any:
        if isinstance(klass, _NewOnly):  # NEWOBJ: torch calls cls.__new__(cls, *args)
            return klass.target.__new__(klass.target)
        self = object.__new__(klass)
        (self.target,) = args
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # REDUCE: func(*args)
        raise CheckpointRefused(
            f"the checkpoint calls the constructor of {self.target.__module__}."
            f"{self.target.__qualname__} with arguments from the file; a saved model is only "
            "ever rebuilt from its state, so the file was crafted (refused, nothing executed)"
        )

    def __repr__(self) -> str:
        return f"<new-only {self.target.__qualname__}>"


@contextlib.contextmanager
def _isolated_registry(entries: list[Any]) -> Iterator[None]:
    """torch's process-wide safe-globals registry holds exactly ``entries`` during the load.

    Others register real classes there for the life of the process (Ultralytics' safe mode
    registers every class it loaded); a real ``DetectionModel`` under our proxy's name
    would re-open the constructor-call hole, so the gate must not depend on that state.
    """
    import torch

    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(entries)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)


def _looks_like_module(name: str) -> bool:
    """By name only: importing a module that a file names could run code."""
    return name.startswith(_MODULE_PREFIXES)


def safe_load(
    path: str | Path,
    *,
    modules: dict[str, type] | None = None,
    ultralytics_data: bool = False,
    what: str = "checkpoint",
) -> Any:
    """``torch.load(weights_only=True)`` with an explicit allow-list; see the module doc.

    ``modules``: nn.Module classes allowed as NEWOBJ-only proxies (none for the
    classifier: a whole pickled model is refused). Raises ``CheckpointRefused``
    naming the offending globals, ``CheckpointError`` for a damaged file.
    """
    import torch

    path = Path(path)
    data = data_globals(ultralytics=ultralytics_data)
    modules = modules or {}
    found = checkpoint_globals(path, what)
    defaults = torch_default_globals()
    unknown = sorted(found - defaults - set(data) - set(modules))
    if unknown:
        unknown.sort(key=lambda g: (_looks_like_module(g), g))
        pickled = [g for g in unknown if _looks_like_module(g)]
        whole = (
            f" It holds a pickled model object ({', '.join(pickled[:3])}), not just its weights."
            if pickled and not modules
            else ""
        )
        raise CheckpointRefused(
            f"refusing to load {what} {path}: it references {len(unknown)} Python global(s) "
            f"outside the allow-list of weights and plain training data: "
            f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}.{whole} Loading it "
            f"could run code from the file, so nothing from it was executed. {RESAVE_HINT}"
        )
    used = found - defaults
    entries: list[Any] = [(obj, name) for name, obj in data.items() if name in used]
    entries += _numpy_dtype_classes()
    for name, cls in modules.items():
        if name in used:
            entries.append((_NewOnly(cls), name))  # what GLOBAL <name> resolves to
            # A name no GLOBAL can spell (readline stops at \n): lets BUILD accept the instance.
            entries.append((cls, f"\n<build-only>\n{name}"))
    with _LOCK, _isolated_registry(entries):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except CheckpointRefused as exc:
            raise CheckpointRefused(f"refusing to load {what} {path}: {exc}") from None
        except pickle.UnpicklingError as exc:
            raise CheckpointRefused(
                f"refusing to load {what} {path}: torch's weights-only loader refused it "
                f"({_wo_reason(exc)}); nothing from it was executed. {RESAVE_HINT}"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:300]}; the file "
                f"is truncated or damaged (expected the {what} as written by torch.save)"
            ) from None


def _wo_reason(exc: BaseException) -> str:
    text = str(exc)
    if "WeightsUnpickler error: " in text:
        text = text.split("WeightsUnpickler error: ", 1)[1]
    return text.split("\n\nCheck the documentation")[0].split(". Please use")[0].strip()


# ------------------------------------------------------------------ after loading
# fmt: off
_HOOK_ATTRS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks", "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
)
_METHODS = (
    "forward", "forward_fuse", "_call_impl", "_compiled_call_impl", "__call__", "_predict_once",
    "fuse", "_apply", "state_dict", "load_state_dict",
)
# fmt: on


def check_module_tree(model: torch.nn.Module, allowed: dict[str, type], path: Path) -> None:
    """Refuse module graphs a genuine training run never produces.

    Run it before ``fuse()``, which legitimately sets ``forward = forward_fuse``.
    """
    import torch

    allowed_types = set(allowed.values())
    for name, m in model.named_modules():
        where = (
            f"refusing to load {path}: a training run never saves this, so the file was crafted "
            f"(nothing from it was executed): module {name or '<root>'}"
        )
        if type(m) not in allowed_types:
            raise CheckpointRefused(f"{where} has type {type(m).__name__} outside the allow-list")
        state = vars(m)
        for hook in _HOOK_ATTRS:
            if state.get(hook):
                raise CheckpointRefused(f"{where} carries pickled {hook}; refused")
        for meth in _METHODS:
            if state.get(meth) is not None:
                raise CheckpointRefused(f"{where} overrides method {meth!r} in its saved state")
        for key, p in state.get("_parameters", {}).items():
            if p is not None and not isinstance(p, torch.nn.Parameter):
                raise CheckpointRefused(f"{where}: parameter {key} is a {type(p).__name__}")
        for key, b in state.get("_buffers", {}).items():
            if b is not None and not isinstance(b, torch.Tensor):
                raise CheckpointRefused(f"{where}: buffer {key} is a {type(b).__name__}")
