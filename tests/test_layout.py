"""The package layout does not rot: each folder imports only the floors below it.

Every ``import`` in ``pillsnap/`` is read from the source (module level and inside
functions alike, since heavy and circular-prone imports are lazy here), mapped to
its area, and checked against ``ALLOWED`` -- the table ``docs/design.md`` shows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pillsnap"

GROUND = {"exceptions", "config", "fileio", "versioning", "environment", "classmap", "names"}
DATA = {"preprocess", "postprocess", "sampling"}
AREA_OF_TOP = {
    **dict.fromkeys(GROUND, "ground"),
    **dict.fromkeys(DATA, "data"),
    "models": "models",
    "engines": "engines",
    "preflight": "preflight",
    "pipeline": "pipeline",
    "report": "report",
    "equivalence": "equivalence",
    "quantize": "quantize",
    "bench": "bench",
    "release": "release",
    "serve": "serve",
    "synth": "synth",
    "infer": "apps",
    "cli": "apps",
    "__init__": "ground",
}
_BELOW_PIPELINE = {"ground", "data", "models", "engines"}
ALLOWED: dict[str, set[str]] = {
    "ground": {"ground"},
    "data": {"ground", "data"},
    "models": {"ground", "data", "models"},
    "engines": {"ground", "data", "models", "engines"},
    "pipeline": _BELOW_PIPELINE | {"pipeline"},
    # One check of every input before any work; the release (which runs no model) calls it.
    "preflight": _BELOW_PIPELINE | {"preflight"},
    # The record shows what others measured; it never builds a runner or runs a model.
    "report": {"ground", "data", "models", "report"},
    "equivalence": _BELOW_PIPELINE | {"pipeline", "preflight", "report", "equivalence"},
    "quantize": _BELOW_PIPELINE | {"pipeline", "preflight", "report", "equivalence", "quantize"},
    "bench": _BELOW_PIPELINE
    | {"pipeline", "preflight", "report", "equivalence", "quantize", "bench"},
    # The release orchestrates notebooks and checks their records; it runs no model itself
    # (its preflight reads the checkpoints weights-only before any stage starts).
    "release": {"ground", "report", "preflight", "release"},
    "serve": _BELOW_PIPELINE | {"pipeline", "preflight", "report", "release", "quantize", "serve"},
    "synth": {"ground", "data", "models", "synth"},
    "apps": set(AREA_OF_TOP.values()),
}


def area(module: str) -> str:
    """``pillsnap.engines.runners`` -> ``engines``; ``pillsnap.config.loading`` -> ``ground``."""
    parts = module.split(".")
    if parts[-1] == "__main__":  # `python -m pillsnap.x` entry points are applications
        return "apps"
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in AREA_OF_TOP:
        raise KeyError(f"{module}: folder or module {top!r} has no area in tests/test_layout.py")
    return AREA_OF_TOP[top]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every pillsnap module ``path`` imports, with the line (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("pillsnap")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name == "pillsnap":  # `from pillsnap import x`: x is a module or a name of __init__
                found += [(node.lineno, f"pillsnap.{a.name}") for a in node.names]
            elif name.startswith("pillsnap."):
                found.append((node.lineno, name))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_an_area():
    for path in SOURCES:
        area(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path):
    mine = area(module_name(path))
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({area(target)})"
        for line, target in imported_modules(path)
        if target != "pillsnap.__version__" and area(target) not in ALLOWED[mine]
    ]
    assert not bad, f"{mine}/ may import only {sorted(ALLOWED[mine])}:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # The rule must not be blind to imports inside functions (the usual way here).
    probe = PACKAGE / "engines" / "runners.py"
    targets = {t for _, t in imported_modules(probe)}
    assert "pillsnap.models.classifier" in targets  # imported inside create_runner
    assert area("pillsnap.release.manifest") not in ALLOWED["engines"]
    assert area("pillsnap.engines.runners") not in ALLOWED["report"]


def test_no_module_is_long_without_a_reason():
    # style: a module past ~400 lines is asking to be split; a longer one says why at its top.
    long = [
        f"{p.relative_to(PACKAGE.parent)} ({n} lines)"
        for p in SOURCES
        if (n := len(p.read_text().splitlines())) > 400
        and "Longer than" not in "".join(p.read_text().splitlines()[:30])
    ]
    assert not long, "split these, or say at the top why not ('Longer than ...'):\n" + "\n".join(
        long
    )


def test_every_module_imports():
    """A moved name fails here, not at the first run that happens to import it."""
    import importlib

    names = sorted(
        ".".join(("pillsnap", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for p in PACKAGE.rglob("*.py")
        if p.name != "__main__.py"
    )
    failed = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - collect every broken module at once
            failed[name] = f"{type(exc).__name__}: {exc}"
    assert len(names) > 100 and not failed, failed
