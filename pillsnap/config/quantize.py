"""``quantize``: the static INT8 stage (calibration, recipes, the exclusion search).

A recipe is a typed preset (``Recipe.minmax_per_channel()`` style, Optimum's way) or a
dict with the same fields; ``recipes`` lists the ones the stage tries, in order. The
names accepted as strings are the keys of ``RECIPE_PRESETS``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pillsnap.config.base import Section

DetectorExclusion = Literal["dfl", "box_decode", "sigmoid", "output_concat"]


class Recipe(Section):
    """One way to quantize: calibration method, weight granularity, activation type, reduce_range."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    """Weights quantized per output channel (else one scale per tensor)."""
    activations: Literal["u8_asym", "s8_sym"] = "u8_asym"
    """``u8_asym``: QUInt8 with a zero point (ONNX Runtime's CPU guidance); ``s8_sym``: QInt8 symmetric."""
    reduce_range: bool | None = None
    """7-bit weights. None: decided by the CPU (on for AVX2 / AVX-512 without VNNI, off with VNNI)."""
    percentile: float = Field(99.99, gt=90.0, lt=100.0)
    """Only for ``calibration: percentile``: the kept share of each activation's histogram (two-sided)."""
    moving_average: bool = False
    """Only for ``calibration: minmax``: a moving average of the per-batch ranges instead of min/max."""

    @classmethod
    def minmax_per_channel(cls) -> Recipe:
        return cls(name="minmax_pc_u8")

    @classmethod
    def minmax_per_tensor(cls) -> Recipe:
        return cls(name="minmax_pt_u8", per_channel=False)

    @classmethod
    def minmax_per_channel_averaged(cls) -> Recipe:
        return cls(name="minmax_pc_u8_avg", moving_average=True)

    @classmethod
    def percentile_per_channel(cls) -> Recipe:
        return cls(name="percentile_pc_u8", calibration="percentile")

    @classmethod
    def entropy_per_channel(cls) -> Recipe:
        return cls(name="entropy_pc_u8", calibration="entropy")

    @classmethod
    def minmax_per_channel_s8_symmetric(cls) -> Recipe:
        return cls(name="minmax_pc_s8sym", activations="s8_sym")


RECIPE_PRESETS = {
    r.name: r
    for r in (
        Recipe.minmax_per_channel(),
        Recipe.minmax_per_tensor(),
        Recipe.minmax_per_channel_averaged(),
        Recipe.percentile_per_channel(),
        Recipe.entropy_per_channel(),
        Recipe.minmax_per_channel_s8_symmetric(),
    )
}
"""``minmax_pc_s8sym`` (S8 activations) is for ARM: measured on x86 it runs at ~2.2x the
float32 time (its Convs do not fuse), so it is not among the defaults."""


class SearchConfig(Section):
    """The exclusion loop run when the best recipe fails the int8 gates."""

    enabled: bool = True
    candidates: int = Field(3, gt=0)
    """Layer groups measured on the real CPU kernels per step (the worst by per-layer SQNR)."""
    max_steps: int = Field(10, gt=0)
    """Steps (each reverts one group or finds none that helps) before giving up."""
    sensitivity_images: int = Field(8, gt=0)
    """Calibration images the per-layer SQNR (``qdq_loss_debug`` style) is measured on."""


class QuantizeConfig(Section):
    method: Literal["static_qdq"] = "static_qdq"
    """Static quantization in QDQ format (dynamic quantization ignores calibration data)."""
    models: list[Literal["detection", "classification"]] = ["detection", "classification"]
    calibration_split: str = Field("train", pattern=r"^[A-Za-z0-9_-]+$")
    """Split the calibration images come from; absent: a seeded half of val, excluded from the gate."""
    calibration_count: int = Field(300, gt=0)
    """Calibration images per model (classes / pill counts stratified, seeded)."""
    calibration_batch_size: int = Field(8, gt=0)
    seed: int = 0
    recipes: list[Recipe] = [
        Recipe.minmax_per_channel(),
        Recipe.minmax_per_tensor(),
        Recipe.minmax_per_channel_averaged(),
        Recipe.percentile_per_channel(),
        Recipe.entropy_per_channel(),
    ]
    """Tried in order; a string names a preset (``RECIPE_PRESETS``)."""
    exclude_shape_arithmetic: bool = True
    """Keep float the nodes that only compute shapes (TF 'SAME' padding amounts, anchor grids)."""
    detector_exclusions: list[DetectorExclusion] = ["dfl", "box_decode", "sigmoid", "output_concat"]
    """What the field knows hurts YOLO INT8; each kept float with its reason in the record."""
    nodes_to_exclude: list[str] = []
    """More ONNX node names to keep float (recorded with reason 'configured')."""
    gate_mode: Literal["smoke", "coverage", "full"] | None = None
    """Sampling of the INT8 gate (None: ``compare.mode``); the gate never sees calibration images."""
    gate_per_class_k: int | None = Field(None, gt=0)
    """Coverage mode: images per class for the INT8 gate (None: ``compare.per_class_k``)."""
    max_excluded: int = Field(8, ge=0)
    """Layer groups the search may revert to float (the known exclusions above do not count)."""
    min_speedup: float = Field(1.2, gt=0)
    """INT8 must be at least this much faster than float32 (ORT CPU, ``speed_batch``)."""
    speed_batch: int = Field(8, gt=0)
    """Batch of the speed measurement (the benchmark batch)."""
    speed_rounds: int = Field(7, gt=0)
    """Interleaved rounds of the speed measurement (median of the per-round ratios)."""
    required: bool = True
    """False: a release whose INT8 models fail ships without them, and its record says so."""
    search: SearchConfig = SearchConfig()

    @field_validator("recipes", mode="before")
    @classmethod
    def _presets(cls, value: object) -> object:
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, str):
                if item not in RECIPE_PRESETS:
                    raise ValueError(
                        f"unknown recipe preset {item!r}; presets: {', '.join(RECIPE_PRESETS)} "
                        "(or give a mapping with name, calibration, per_channel, activations, reduce_range)"
                    )
                out.append(RECIPE_PRESETS[item])
            else:
                out.append(item)
        return out

    @field_validator("recipes")
    @classmethod
    def _unique(cls, value: list[Recipe]) -> list[Recipe]:
        names = [r.name for r in value]
        if not value or len(set(names)) != len(names):
            raise ValueError(f"expected at least one recipe with unique names, got {names}")
        return value
