"""Tables of a benchmark record, for ``benchmark.ipynb`` and ``pillsnap bench`` (figures: ``plots.py``).

Every function reads the ``benchmark.json`` dict only. Intervals read ``median [low, high]``
(bootstrap 95 % over rounds; no brackets below three rounds). ``status_text`` is the
deterministic text nbval checks: which configurations ran and why the others did not,
never a timing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pillsnap.report.tables import number

if TYPE_CHECKING:
    import pandas as pd


def interval_text(iv: dict[str, Any] | None, unit: str = "", digits: int = 4) -> str:
    if not iv or iv.get("median") is None:
        return ""
    mid = f"{number(iv['median'], digits)}{unit}"
    if iv.get("low") is None or iv.get("high") is None:
        return mid
    return f"{mid} [{number(iv['low'], digits)}, {number(iv['high'], digits)}]"


def status_text(record: dict[str, Any]) -> str:
    """One line per configuration and model: ran, or why not (deterministic: no figure)."""
    lines = []
    for c in record["configurations"]:
        for task, run in c["models"].items():
            # the reason's head only ("onnxruntime-gpu not installed"), not the details after it
            # (the provider list of this build), so the line is the same on every CPU machine
            why = str(run["reason"]).split(": ")[0]
            state = "ran" if run["status"] == "ran" else f"{run['status']}: {why}"
            flag = " (required)" if c["required"] else ""
            lines.append(f"{c['name']:<18} {task:<15} {state}{flag}")
    verdict = "FAILED: " + record["failure_reason"] if record["failed"] else "passed"
    return "\n".join([f"benchmark {verdict}", *lines])


def environment_table(record: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    env = record["environment"]
    cpu, s = env["cpu"], record["settings"]
    flags = ", ".join(k for k, v in cpu.get("flags", {}).items() if v) or "none"
    gpu = env.get("gpu") or {}
    rows = [
        ("CPU", f"{cpu.get('model')} ({cpu.get('cores')} usable cores)"),
        ("CPU flags", flags),
        ("INT8 class", cpu.get("int8_class")),
        (
            "GPU",
            f"{gpu['name']} (driver {gpu.get('driver')}, CUDA {gpu.get('cuda')})"
            if gpu
            else "none",
        ),
        (
            "threads (every CPU configuration)",
            f"{s['threads']} (benchmark.threads={s['threads_requested']})",
        ),
        (
            "OMP_WAIT_POLICY",
            f"{env['threading'].get('OMP_WAIT_POLICY')} (in effect: {env['threading'].get('omp_policy_in_effect')})",
        ),
        ("ONNX Runtime spinning", str(env["threading"].get("ort_intra_op_spinning"))),
        ("onnxruntime providers", ", ".join(env["onnxruntime_providers"])),
        ("openvino", env.get("openvino") or "not installed"),
        ("load average at start / end", f"{env['load_average_start']} / {env['load_average_end']}"),
        ("process peak RSS (upper bound of any row)", f"{env['process_peak_rss_mb']:.0f} MB"),
        *(
            (name, env["libraries"][name])
            for name in ("torch", "onnxruntime", "onnxruntime-gpu", "openvino")
            if name in env["libraries"]
        ),
        (
            "rounds x (min calls, min seconds)",
            f"{s['rounds']} x ({s['min_calls']}, {s['min_seconds']:g} s), seed {s['seed']}",
        ),
        (
            "budget",
            f"{record['budget']['used_s']:.0f} s used of {record['budget']['max_seconds']:g} s",
        ),
    ]
    return pd.DataFrame(rows, columns=["item", "value"])


def _runs(record: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["name"], t): run for c in record["configurations"] for t, run in c["models"].items()}


def results_table(record: dict[str, Any]) -> pd.DataFrame:
    """One row per model x configuration x batch: latency figures, throughput, accuracy, or why not."""
    import pandas as pd

    runs = _runs(record)
    rows = []
    for r in record["rows"]:
        lat, tput = r["latency"] or {}, r["throughput"] or {}
        acc = runs[(r["configuration"], r["model"])].get("accuracy") or {}
        rows.append(
            {
                "model": r["model"],
                "configuration": r["configuration"],
                "batch": r["batch"],
                "ms/batch (median [95% CI])": interval_text(lat.get("median_ms")),
                "p50": number(lat.get("p50_ms")),
                "p90": number(lat.get("p90_ms")),
                "p99": number(lat.get("p99_ms")),
                "max": number(lat.get("max_ms")),
                "calls": number(lat.get("calls")),
                "seconds": number(lat.get("duration_s"), 3),
                "img/s": interval_text(tput.get("images_per_s"), digits=4),
                "noisy": "yes" if lat.get("noisy") else ("" if not lat else "no"),
                "accuracy": f"{acc['metric']} {number(acc['value'])}" if acc else "",
                "agreement": number(acc.get("agreement")) if acc else "",
                "reason": r["reason"] or "",
            }
        )
    return pd.DataFrame(rows)


def cold_start_table(record: dict[str, Any]) -> pd.DataFrame:
    """Start-up, memory, file size and what really ran, per configuration and model."""
    import pandas as pd

    rows = []
    for (name, task), run in _runs(record).items():
        if run["status"] != "ran":
            continue
        cold, mem = run["cold_start"] or {}, run["memory"] or {}
        rows.append(
            {
                "model": task,
                "configuration": name,
                "load/session s": number(cold.get("session_s"), 3),
                "first call s": number(cold.get("first_inference_s"), 3),
                "TRT build cold s": number(cold.get("engine_build_cold_s"), 3),
                "TRT build warm s": number(cold.get("engine_build_warm_s"), 3),
                "peak RSS +MB": number(mem.get("rss_peak_above_baseline_mb"), 4),
                "GPU +MB": number(mem.get("gpu_peak_above_baseline_mb"), 4),
                "file": run["model_file"] or "",
                "file MB": number(run["model_size_mb"], 4),
                "providers": ", ".join(run["providers"]),
                "precision": run["execution_precision"] or "",
            }
        )
    return pd.DataFrame(rows)


def ratio_table(record: dict[str, Any], versus: str) -> pd.DataFrame:
    """Speed-up over ``versus`` (per-round ratios, median [95% CI]), model x batch by configuration."""
    import pandas as pd

    picked = [r for r in record["ratios"] if r["versus"] == versus]
    rows = [
        {
            "model": r["model"],
            "batch": r["batch"],
            "configuration": r["configuration"],
            f"x vs {versus}": interval_text(r["speedup"], digits=3),
            "rounds": r["rounds"],
        }
        for r in picked
    ]
    return pd.DataFrame(
        rows, columns=["model", "batch", "configuration", f"x vs {versus}", "rounds"]
    )


def pipeline_table(record: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    from pillsnap.bench.phases import PHASES

    rows = []
    for p in record["pipeline"]:
        row = {
            "configuration": p["configuration"],
            "ms/photo (median [95% CI])": interval_text(p["per_photo_ms"], digits=4),
            "photos": p["photos"],
            "pills": number(p["pills"]),
            "rounds": p["rounds"],
        }
        row.update({phase: number(p["phases_ms_per_photo"].get(phase)) for phase in PHASES})
        row["reason"] = p["reason"] or ""
        rows.append(row)
    return pd.DataFrame(rows)


def goal_text(record: dict[str, Any]) -> str:
    goal = record.get("goal")
    if not goal:
        return "goal: no CPU classifier candidate was measured"
    t = goal["targets"]
    head = (
        f"goal: best CPU classifier >= x{t['vs_openvino']:g} OpenVINO default, >= x{t['vs_torch']:g} "
        f"Torch eager, top-1 agreement >= {t['agreement']:g}: {'MET' if goal['met'] else 'not met'}"
    )
    lines = [head]
    for e in goal["candidates"]:
        lines.append(
            f"  batch {e['batch']} {e['configuration']:<18} vs OpenVINO {interval_text(e['vs_openvino'], 'x', 3) or '-':<22} "
            f"vs Torch {interval_text(e['vs_torch'], 'x', 3) or '-':<22} agreement {number(e['agreement'])}"
            + ("" if e["meets"] else f"  ({e['shortfall']})")
        )
    return "\n".join(lines)


def text_table(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A DataFrame as fixed-width text (the CLI's output)."""
    frame = frame[columns] if columns else frame
    return frame.to_string(index=False) if len(frame) else "(none)"
