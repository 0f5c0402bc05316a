"""Class index -> edi_code (the Korean drug insurance code) and pill description.

File format (JSON)::

    {"header": {"synthetic": true, "edi_code_range": ["990000000", "990999999"], "note": "..."},
     "classes": [{"index": 0, "class_dir": "c0000", "edi_code": "990000017", "name": "...",
                  "shape": "round", "colors": ["white"], "imprint": "AB"}, ...]}

``class_dir`` is the folder name of the class in the classification dataset;
the classifier's output index ``i`` is ``classes[i]``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pillsnap.exceptions import DataError, MissingPathError

EDI_CODE = re.compile(r"[0-9]{9}")
"""An edi_code: exactly nine ASCII digits (``re.fullmatch``; ``\\d`` would accept other scripts)."""


@dataclass(frozen=True)
class PillClass:
    index: int
    class_dir: str
    edi_code: str
    name: str
    shape: str = ""
    colors: tuple[str, ...] = ()
    imprint: str = ""


@dataclass
class ClassMap:
    classes: list[PillClass]
    header: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> PillClass:
        return self.classes[index]

    def edi_code(self, index: int) -> str:
        return self.classes[index].edi_code

    def index_of_dir(self) -> dict[str, int]:
        return {c.class_dir: c.index for c in self.classes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "classes": [dict(asdict(c), colors=list(c.colors)) for c in self.classes],
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON; written into ONNX metadata to pin the mapping."""
        canon = json.dumps(self.to_dict()["classes"], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        from pillsnap.fileio import save_json

        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ClassMap:
        path = Path(path)
        if not path.exists():
            raise MissingPathError(
                f"class map not found: {path} (config key `paths.class_map`, default {{exp_dir}}/class_map.json)"
            )
        try:
            data = json.loads(path.read_text())
            classes = [
                PillClass(
                    int(c["index"]),
                    str(c["class_dir"]),
                    str(c["edi_code"]),
                    str(c["name"]),
                    str(c.get("shape", "")),
                    tuple(c.get("colors", ())),
                    str(c.get("imprint", "")),
                )
                for c in data["classes"]
            ]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"class map {path} is malformed: {exc!r}; expected the format in pillsnap/classmap.py"
            ) from exc
        problems = validate_classes(classes)
        if problems:
            shown = "; ".join(problems[:10]) + (
                f"; ... (+{len(problems) - 10} more)" if len(problems) > 10 else ""
            )
            raise DataError(
                f"class map {path} (config key `paths.class_map`) is invalid: {shown}. Fix the file: "
                "every edi_code is exactly 9 ASCII digits and names one class only."
            )
        return cls(classes, dict(data.get("header", {})))


def validate_classes(classes: list[PillClass]) -> list[str]:
    """Every problem of a class list ([] when valid).

    ``str.isdigit`` accepts other scripts' digits (Arabic-Indic, full-width, superscripts),
    so an edi_code must match ``[0-9]{9}`` exactly; two classes with one edi_code would make
    two different pills indistinguishable to the user of the result.
    """
    problems = [f"entry {i} has index {c.index}" for i, c in enumerate(classes) if c.index != i]
    problems += [
        f"class {c.index}: edi_code {c.edi_code!r} is not 9 digits (ASCII 0-9 only)"
        for c in classes
        if not EDI_CODE.fullmatch(c.edi_code)
    ]
    seen: dict[str, int] = {}
    for c in classes:
        if c.edi_code in seen:
            problems.append(
                f"classes {seen[c.edi_code]} and {c.index} share edi_code {c.edi_code!r}"
            )
        seen.setdefault(c.edi_code, c.index)
    dirs: dict[str, int] = {}
    for c in classes:
        if c.class_dir in dirs:
            problems.append(
                f"classes {dirs[c.class_dir]} and {c.index} share class_dir {c.class_dir!r}"
            )
        dirs.setdefault(c.class_dir, c.index)
    return problems
