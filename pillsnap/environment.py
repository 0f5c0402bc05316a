"""What this machine is: library versions, CPU and its instruction sets, providers, devices.

One place read by every record that describes where it was made (the release
manifest, ``export_report.json``, the notebooks' environment tables, the INT8
gate and the benchmark fingerprint), so the manifest and the report schema no
longer import each other for it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from functools import cache
from pathlib import Path
from typing import Any

from pillsnap.exceptions import UserInputError

VERSION_PACKAGES = (
    "pillsnap",
    "torch",
    "torchvision",
    "timm",
    "ultralytics",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxslim",
    "openvino",
    "numpy",
    "pillow",
    "pydantic",
    "pandas",
    "papermill",
    "nbconvert",
    "ipykernel",
)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c")
"""The x86 instruction sets that change which ONNX Runtime / OpenVINO kernels run."""


def library_versions() -> dict[str, str]:
    """Installed versions of the packages a release depends on (absent ones left out)."""
    found = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def report_environment() -> dict[str, Any]:
    """The ``environment`` block of ``export_report.json``."""
    libs = library_versions()
    libs.pop("python", None)
    return {"python": sys.version.split()[0], "platform": platform.platform(), "libraries": libs}


def machine_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python_executable": sys.executable,
    }


@cache
def cpu_info() -> dict[str, Any]:
    """CPU model, usable cores and the instruction sets of ``CPU_FLAGS`` it has.

    ``int8_class`` is ``vnni`` when the CPU has AVX-512 VNNI or AVX-VNNI (ONNX
    Runtime's U8S8 kernels do not saturate), else ``avx512`` / ``avx2`` / ``other``:
    an INT8 model gated on one class may lose accuracy on another.
    """
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    have = {f: f in flags for f in CPU_FLAGS}
    if have["avx512_vnni"] or have["avx_vnni"]:
        int8_class = "vnni"
    elif have["avx512f"]:
        int8_class = "avx512"
    elif have["avx2"]:
        int8_class = "avx2"
    else:
        int8_class = "other"
    return {
        "model": model,
        "machine": platform.machine(),
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "flags": have,
        "int8_class": int8_class,
    }


def available_providers() -> list[str]:
    """ONNX Runtime execution providers installed here ([] without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def resolve_torch_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an unavailable ``cuda`` is an input error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(
            f"runtime.torch_device={device!r} but torch sees no CUDA device; use 'auto' or 'cpu'"
        )
    return device


def project_root() -> Path | None:
    """The source checkout holding this package (editable install), else None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None
