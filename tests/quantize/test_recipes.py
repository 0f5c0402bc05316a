"""Recipes: typed presets in the config, ONNX Runtime's arguments, reduce_range from the CPU flags."""

from __future__ import annotations

import pytest

from pillsnap.config import load_config
from pillsnap.config.quantize import RECIPE_PRESETS, Recipe
from pillsnap.exceptions import ConfigError
from pillsnap.quantize import recipes

VNNI = {"int8_class": "vnni", "flags": {"avx2": True, "avx512_vnni": True}}
AVX2 = {"int8_class": "avx2", "flags": {"avx2": True, "avx512_vnni": False}}


def test_presets_by_name_and_mappings_in_the_config():
    cfg = load_config(
        None,
        {
            "quantize.recipes": [
                "minmax_pt_u8",
                {"name": "mine", "calibration": "percentile", "percentile": 99.99},
            ]
        },
    )
    first, second = cfg.quantize.recipes
    assert first == Recipe.minmax_per_tensor() and not first.per_channel
    assert (second.name, second.calibration, second.percentile) == ("mine", "percentile", 99.99)
    assert set(RECIPE_PRESETS) >= {
        "minmax_pc_u8",
        "minmax_pc_u8_avg",
        "percentile_pc_u8",
        "entropy_pc_u8",
    }


def test_bad_recipes_name_the_problem():
    with pytest.raises(ConfigError, match="unknown recipe preset 'fast'.*minmax_pc_u8"):
        load_config(None, {"quantize.recipes": ["fast"]})
    with pytest.raises(ConfigError, match="unique names"):
        load_config(None, {"quantize.recipes": ["minmax_pc_u8", "minmax_pc_u8"]})
    with pytest.raises(ConfigError, match="quantize.recipes"):
        load_config(None, {"quantize.recipes": [{"name": "x", "calibration": "kl"}]})


def test_reduce_range_follows_the_cpu_unless_the_recipe_says():
    auto = Recipe.minmax_per_channel()
    assert recipes.reduce_range_for(auto, VNNI) is False
    assert recipes.reduce_range_for(auto, AVX2) is True  # U8S8 saturates without VNNI
    assert recipes.reduce_range_for(auto, {"int8_class": "avx512"}) is True
    assert recipes.reduce_range_for(auto, {"int8_class": "other"}) is False  # ARM: no such issue
    forced = Recipe(name="x", reduce_range=False)
    assert recipes.reduce_range_for(forced, AVX2) is False
    applied = recipes.applied(auto, AVX2)
    assert applied["reduce_range"] is True and applied["reduce_range_source"] == "cpu flags"
    assert "percentile" not in applied


def test_ort_arguments_are_static_qdq():
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    args = recipes.ort_arguments(Recipe.minmax_per_channel(), VNNI)
    assert args["quant_format"] == QuantFormat.QDQ
    assert args["activation_type"] == QuantType.QUInt8 and args["weight_type"] == QuantType.QInt8
    assert args["per_channel"] and not args["reduce_range"]
    sym = recipes.ort_arguments(Recipe.minmax_per_channel_s8_symmetric(), VNNI)
    assert sym["activation_type"] == QuantType.QInt8 and sym["extra_options"]["ActivationSymmetric"]
    pct = recipes.ort_arguments(Recipe.percentile_per_channel(), VNNI)
    assert pct["calibrate_method"] == CalibrationMethod.Percentile
    assert pct["extra_options"]["CalibPercentile"] == 99.99
    assert pct["extra_options"]["CalibTensorRangeSymmetric"] is False  # two-sided for U8
    # one calibration serves every recipe with the same method
    assert recipes.calibration_key(Recipe.minmax_per_tensor()) == recipes.calibration_key(
        Recipe.minmax_per_channel()
    )


def test_cpu_record_has_flags_and_class():
    cpu = recipes.cpu_record()
    assert cpu["int8_class"] in ("vnni", "avx512", "avx2", "other")
    assert "avx2" in cpu["flags"] and isinstance(cpu["flags"]["avx2"], bool)
    assert recipes.flags_text({"flags": {"avx2": True, "fma": False}}) == "avx2"
