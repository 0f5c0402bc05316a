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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pillsnap.exceptions import DataError, MissingPathError


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
        problems = [f"entry {i} has index {c.index}" for i, c in enumerate(classes) if c.index != i]
        problems += [
            f"class {c.index}: edi_code {c.edi_code!r} is not 9 digits"
            for c in classes
            if not (len(c.edi_code) == 9 and c.edi_code.isdigit())
        ]
        if len({c.class_dir for c in classes}) != len(classes):
            problems.append("class_dir values are not unique")
        if problems:
            raise DataError(f"class map {path} is invalid: " + "; ".join(problems[:10]))
        return cls(classes, dict(data.get("header", {})))
