"""Where the figures were measured: CPU and its instruction sets, GPU, libraries, load.

A speed figure without this is meaningless: ONNX Runtime's INT8 kernels and OpenVINO's
default precision (bf16 on AMX / AVX512-BF16 CPUs, else f32) depend on the CPU flags,
and a load average well above zero at the start says other work competed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def gpu_info() -> dict[str, Any] | None:
    """GPU name, CUDA version (Torch's build) and driver, when Torch sees a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    info: dict[str, Any] = {
        "name": torch.cuda.get_device_name(0),
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "driver": None,
    }
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            driver, _, memory = out.splitlines()[0].partition(",") if out else ("", "", "")
            info["driver"], info["memory"] = driver.strip() or None, memory.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def environment(
    openvino: str | None, providers: list[str], load_start: list[float], ort_spinning: bool
) -> dict[str, Any]:
    import torch

    from pillsnap.environment import cpu_info, library_versions

    libs = library_versions()
    for extra in ("nncf", "tensorrt"):
        with contextlib.suppress(PackageNotFoundError):  # absent extras are simply not listed
            libs[extra] = version(extra)
    from pillsnap.bench import TORCH_LOADED_BEFORE
    from pillsnap.bench.memory import peak_rss_mb

    cpu = dict(cpu_info())
    cpu["logical_cpus"] = os.cpu_count()
    policy = os.environ.get("OMP_WAIT_POLICY")
    return {
        "cpu": cpu,
        "gpu": gpu_info(),
        "libraries": libs,
        "onnxruntime_providers": list(providers),
        "openvino": openvino,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "process_peak_rss_mb": round(peak_rss_mb(), 1),
        "threading": {
            "OMP_WAIT_POLICY": policy,
            "omp_policy_in_effect": bool(policy) and not TORCH_LOADED_BEFORE,
            **{k: os.environ[k] for k in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT") if k in os.environ},
            "ort_intra_op_spinning": ort_spinning,
        },
    }
