"""benchmark.json: the committed JSON Schema is the pydantic model's, and invalid records are refused."""

from __future__ import annotations

import pytest

from pillsnap.bench.schema import SCHEMA_PATH, schema_text, validate_record, write_record


def test_committed_schema_is_fresh():
    assert SCHEMA_PATH.read_text() == schema_text(), "run `python -m pillsnap.bench --write-schema`"


def test_invalid_record_is_refused_with_every_problem(tmp_path):
    problems = validate_record({"schema_version": 1, "rows": [{"model": "x"}]})
    assert any(p.startswith("version_tag") for p in problems)
    assert any("rows.0" in p for p in problems)
    with pytest.raises(ValueError, match="refusing to write an invalid benchmark.json"):
        write_record(tmp_path / "benchmark.json", {"schema_version": 1})
    assert not (tmp_path / "benchmark.json").exists()
