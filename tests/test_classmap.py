import json

import pytest

from pillsnap.classmap import ClassMap, PillClass
from pillsnap.exceptions import DataError, MissingPathError


def _map(n=3):
    return ClassMap(
        [
            PillClass(i, f"c{i:04d}", f"99000{i:04d}", f"pill {i}", "round", ("white",), "AB")
            for i in range(n)
        ],
        {"synthetic": True},
    )


def test_roundtrip_and_digest(tmp_path):
    cm = _map()
    cm.save(tmp_path / "m.json")
    back = ClassMap.load(tmp_path / "m.json")
    assert back == cm and back.digest() == cm.digest() and back.edi_code(2) == "990000002"
    assert back.index_of_dir() == {"c0000": 0, "c0001": 1, "c0002": 2}
    other = _map(4)
    assert other.digest() != cm.digest()


def test_invalid_maps_are_refused(tmp_path):
    data = _map().to_dict()
    data["classes"][1]["edi_code"] = "12ab"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="not 9 digits"):
        ClassMap.load(tmp_path / "bad.json")
    with pytest.raises(MissingPathError, match="paths.class_map"):
        ClassMap.load(tmp_path / "none.json")
