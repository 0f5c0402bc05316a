"""``pillsnap release diff A B``: what changed between two release records.

Compares the manifests and ``export_report.json`` of two release folders:
verdicts, git state, every scalar of the report (parity metrics, params, opset,
...), ONNX sizes, library versions, config values, stage results, the INT8 stage
(``quantization.json``: verdict, recipe, layers kept float, speedup, int8 gate values) and the
speed the benchmark stage measured: a latency is "slower" or "faster" only when the two
releases' 95 % intervals do not overlap (else "same"), so load noise never reads as a
change. Release tags inside values (file names, paths) are replaced by ``<tag>`` first, so only
real changes show.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pillsnap.release.manifest import REPORT_NAME, read_manifest

_SKIP_REPORT_KEYS = ("_at_utc", "sha256", "timing", "git_sha", "elapsed", "benchmark")
"""Keys that differ between any two runs (times, hashes of files that embed the tag): not changes."""
_MAX_VALUE_CHARS = 60


NOT_COMPARABLE = "not comparable"
"""Speed verdict prefix when the two benchmarks ran on another CPU or thread count."""
MACHINE_KEYS = ("cpu", "threads", "int8_class")


@dataclass(frozen=True)
class DiffRow:
    section: str
    key: str
    a: Any
    b: Any
    verdict: str | None = None
    """Speed rows only: slower / faster (intervals apart), same (they overlap), added, removed."""

    @property
    def changed(self) -> bool:
        if self.verdict is not None:
            return self.verdict not in ("same", "no interval") and not self.verdict.startswith(
                NOT_COMPARABLE
            )
        return self.a != self.b


def diff_releases(a: str | Path, b: str | Path) -> list[DiffRow]:
    """Every compared value of releases ``a`` and ``b`` (``row.changed`` marks differences)."""
    a, b = Path(a), Path(b)
    ma, mb = read_manifest(a), read_manifest(b)
    ta, tb = ma.get("tag", ""), mb.get("tag", "")
    sections: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("release", _release_facts(ma), _release_facts(mb)),
        ("report", _flatten(_read_report(a), ta), _flatten(_read_report(b), tb)),
        ("size", _onnx_sizes(ma, ta), _onnx_sizes(mb, tb)),
        ("version", ma.get("versions", {}), mb.get("versions", {})),
        ("config", _flatten(ma.get("config", {}), ta), _flatten(mb.get("config", {}), tb)),
        ("stage", _stage_status(ma), _stage_status(mb)),
        ("quantization", _quantization(a, ta), _quantization(b, tb)),
    ]
    rows = []
    for section, left, right in sections:
        for key in sorted(set(left) | set(right), key=_natural):
            rows.append(DiffRow(section, key, left.get(key), right.get(key)))
    return rows + speed_rows(_read_report(a), _read_report(b))


def format_diff(rows: list[DiffRow], a_name: str, b_name: str, only_changed: bool = True) -> str:
    """A plain-text table; ``only_changed=False`` lists unchanged values too."""
    shown = [r for r in rows if r.changed or not only_changed]
    if not shown:
        return f"no differences between {a_name} and {b_name} ({len(rows)} values compared)"
    table = [("section", "key", a_name, b_name)] + [
        (r.section, r.key, _fmt(r.a), _fmt(r.b) + (f"  {r.verdict}" if r.verdict else ""))
        for r in shown
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    changed = sum(r.changed for r in rows)
    lines.append(f"{changed} of {len(rows)} compared values differ")
    return "\n".join(lines)


def _release_facts(m: dict[str, Any]) -> dict[str, Any]:
    git = m.get("git", {})
    return {
        "verdict": m.get("verdict"),
        "failure_reason": m.get("failure_reason"),
        "git.sha": git.get("sha"),
        "git.dirty": git.get("dirty"),
        "kernel": m.get("kernel"),
        "providers": ",".join(m.get("providers", [])),
    }


def _read_report(folder: Path) -> dict[str, Any]:
    path = folder / REPORT_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def _onnx_sizes(m: dict[str, Any], tag: str) -> dict[str, Any]:
    return {
        _untag(name, tag): entry.get("size")
        for name, entry in m.get("artifacts", {}).items()
        if name.endswith(".onnx") and "size" in entry
    }


def _quantization(folder: Path, tag: str) -> dict[str, Any]:
    """The INT8 stage per model (``quantization.json``): verdict, recipe, float layers, speed, gates."""
    path = folder / "quantization.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    out: dict[str, Any] = {
        "verdict": record.get("verdict"),
        "cpu.int8_class": (record.get("cpu") or {}).get("int8_class"),
    }
    for task, m in (record.get("models") or {}).items():
        recipe = m.get("recipe") or {}
        cal = m.get("calibration") or {}
        out[f"{task}.shipped"] = _untag(str(m.get("int8_onnx")), tag) if m.get("shipped") else None
        out[f"{task}.recipe"] = recipe.get("name")
        out[f"{task}.reduce_range"] = recipe.get("reduce_range")
        out[f"{task}.calibration"] = (
            f"{cal.get('count')} from {cal.get('split')} #{str(cal.get('sha256'))[:8]}"
        )
        for kind, n in sorted((m.get("excluded_counts") or {}).items()):
            out[f"{task}.excluded.{kind}"] = n
        out[f"{task}.search_steps"] = sum(
            1 for s in m.get("search", []) if s.get("action") != "recipe"
        )
        out[f"{task}.speedup"] = m.get("speedup")
        for gate in m.get("gates", []):
            out[f"{task}.{gate['name'].split('.', 1)[-1]}"] = gate.get("value")
    return out


def _stage_status(m: dict[str, Any]) -> dict[str, Any]:
    return {s.get("name", "?"): s.get("status") for s in m.get("stages", [])}


def _flatten(node: Any, tag: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if any(skip in str(key) for skip in _SKIP_REPORT_KEYS):
                continue
            out.update(_flatten(value, tag, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        text = json.dumps(node, sort_keys=True)
        text = _untag(text, tag)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        out[prefix] = text if len(text) <= _MAX_VALUE_CHARS else f"<{len(node)} items #{digest}>"
    elif isinstance(node, list):
        out[prefix] = _untag(json.dumps(node), tag)
    elif isinstance(node, str):
        out[prefix] = _untag(node, tag)
    else:
        out[prefix] = node
    return out


def _untag(text: str, tag: str) -> str:
    return text.replace(tag, "<tag>") if tag else text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _natural(key: str) -> tuple[str, ...]:
    return tuple(key.split("."))


def speed_verdict(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    """``b``'s latency interval against ``a``'s: slower / faster only when they do not overlap."""
    if a is None or b is None:
        return "added" if a is None else "removed"
    if None in (a.get("low"), a.get("high"), b.get("low"), b.get("high")):
        return "no interval"
    if b["low"] > a["high"]:
        return f"slower (+{(b['median'] / a['median'] - 1) * 100:.0f}%)"
    if b["high"] < a["low"]:
        return f"faster ({(b['median'] / a['median'] - 1) * 100:.0f}%)"
    return "same"


def speed_rows(ra: dict[str, Any], rb: dict[str, Any]) -> list[DiffRow]:
    """Latency per model x configuration x batch, and the pipeline per photo, of two reports."""

    def figures(report: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
        bench = report.get("benchmark") or {}
        found = {
            f"{s['model']}.{s['configuration']}.batch{s['batch']}": (s["latency_ms"], "ms")
            for s in bench.get("speed", [])
        }
        for name, iv in bench.get("pipeline_ms_per_photo", {}).items():
            found[f"pipeline.{name}"] = (iv, "ms/photo")
        return found

    ba, bb = ra.get("benchmark") or {}, rb.get("benchmark") or {}
    out = [
        DiffRow("speed", f"benchmark.{k}", ba.get(k), bb.get(k))
        for k in (*MACHINE_KEYS, "failed")
        if ba or bb
    ]
    # figures from another CPU or thread count say nothing about the release: never "slower"
    other_machine = bool(ba and bb) and any(ba.get(k) != bb.get(k) for k in MACHINE_KEYS)
    left, right = figures(ra), figures(rb)
    for key in sorted(set(left) | set(right), key=_natural):
        (ia, unit), ib = left.get(key, (None, "")), right.get(key, (None, ""))[0]
        unit = unit or right[key][1]
        verdict = speed_verdict(ia, ib)
        if other_machine and ia is not None and ib is not None:
            verdict = f"{NOT_COMPARABLE}: other machine ({verdict})"
        out.append(DiffRow("speed", key, _interval(ia, unit), _interval(ib, unit), verdict))
    return out


def _interval(iv: dict[str, Any] | None, unit: str) -> str | None:
    if not iv or iv.get("median") is None:
        return None
    if iv.get("low") is None or iv.get("high") is None:
        return f"{iv['median']:.4g} {unit}"
    return f"{iv['median']:.4g} {unit} [{iv['low']:.4g}, {iv['high']:.4g}]"
