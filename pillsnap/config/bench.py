"""``benchmark``: the provider benchmark stage (configurations, batch sizes, budgets).

Defaults describe a production run (a few minutes per model on a CPU); the demo config
(``examples/synthetic/config.yaml``) shrinks the budgets so the stage stays under ~90 s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pillsnap.config.base import Section

CONFIGURATIONS = (
    "torch-cpu-fp32",
    "torch-cuda-fp32",
    "torch-cuda-fp16",
    "ort-cpu-fp32",
    "ort-cpu-int8",
    "ort-cuda-fp32",
    "ort-cuda-fp16",
    "tensorrt-fp16",
    "tensorrt-int8",
    "openvino-cpu",
    "openvino-cpu-fp32",
    "openvino-cpu-int8",
)
"""Every configuration ``pillsnap.bench`` knows (engine-device-precision); see ``bench/catalogue.py``."""


class BenchmarkConfig(Section):
    configurations: list[str] = list(CONFIGURATIONS)
    """Configurations to measure; those this machine cannot run get a row saying why."""
    require: list[str] = []
    """Configurations that must run (e.g. ``tensorrt-fp16`` for a GPU release); a missing one fails."""
    models: list[Literal["detection", "classification"]] = ["detection", "classification"]
    batch_sizes: list[int] = [1, 8]
    threads: int = Field(0, ge=0)
    """CPU threads of every CPU configuration (Torch, ONNX Runtime, OpenVINO); 0 = all usable cores."""
    warmup_calls: int = Field(3, ge=0)
    warmup_seconds: float = Field(1.0, ge=0)
    """Warm-up runs until both the count and the duration are reached."""
    min_calls: int = Field(10, gt=0)
    min_seconds: float = Field(2.0, ge=0)
    """Per configuration and round, timed calls run until both are reached."""
    rounds: int = Field(7, ge=1)
    """Rounds of interleaved configurations (seeded random order in each); figures are medians over rounds."""
    seed: int = 0
    max_cov: float = Field(0.10, gt=0)
    """Coefficient of variation of the per-round medians above which a row is flagged noisy."""
    bootstrap_resamples: int = Field(2000, ge=100)
    max_seconds: float = Field(1800.0, gt=0)
    """Wall-clock budget of the whole benchmark; rounds are cut (and the record says so) to keep it."""
    accuracy_images: int = Field(500, ge=0)
    """Classification images of the fixed accuracy subset (stratified, seeded); 0 = no accuracy."""
    accuracy_photos: int = Field(64, ge=0)
    """Detection photos of the fixed accuracy subset; 0 = no detector accuracy."""
    pipeline_photos: int = Field(32, ge=0)
    """Val photos for the end-to-end pipeline rows; 0 = no pipeline rows."""
    pipeline_batch_size: int = Field(8, gt=0)
    ort_spinning: bool = True
    """ONNX Runtime's intra-op thread spinning (its default, what serving runs); false frees the
    cores between calls, which is faster on a shared, loaded machine."""
    memory_interval_ms: float = Field(5.0, gt=0)
    """Sampling interval of the resident-memory sampler."""
    tensorrt_cache_dir: Path | None = None
    """TensorRT engine/timing cache of the cold/warm build measurement; None = a new temporary folder."""
    goal_vs_openvino: float = Field(1.5, gt=0)
    goal_vs_torch: float = Field(3.5, gt=0)
    goal_agreement: float = Field(0.99, ge=0, le=1)
    """The project's aim for its best CPU classifier configuration (informational, not a gate)."""

    @field_validator("configurations", "require")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [name for name in v if name not in CONFIGURATIONS]
        if unknown:
            raise ValueError(
                f"unknown configuration(s) {unknown}; expected some of {', '.join(CONFIGURATIONS)}"
            )
        return list(dict.fromkeys(v))

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if not v or min(v) <= 0:
            raise ValueError(f"expected at least one batch size > 0, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _required_are_measured(self) -> BenchmarkConfig:
        missing = [name for name in self.require if name not in self.configurations]
        if missing:
            raise ValueError(
                f"benchmark.require names {missing}, which benchmark.configurations leaves out"
            )
        return self
