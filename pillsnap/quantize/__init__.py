"""Static INT8 quantization: calibration, recipes, per-layer sensitivity, the exclusion loop, the gate.

``quantize_release(cfg, release_dir, tag)`` is the stage (``notebooks/quantization.ipynb``,
``pillsnap quantize``); the modules, in the order the stage uses them: ``calibrate``
(which images, the one pre-processing), ``recipes`` (quant_pre_process, quantize_static
QDQ, reduce_range from the CPU flags), ``exclusions`` (known ones with reasons, layer
groups), ``gate`` (the equivalence code with the int8 profile; the speed),
``sensitivity`` (per-layer SQNR through ``equivalence.layers``), ``search`` (one model's
path), ``stage`` and ``records``; ``metadata`` (what an INT8 file says about itself),
``infer`` (``pillsnap infer --quantize int8``), ``cli``.
"""

from pillsnap.quantize.stage import QuantizationResult, int8_name, quantize_release

__all__ = ["QuantizationResult", "int8_name", "quantize_release"]
