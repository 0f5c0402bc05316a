"""Why an INT8 model failed its gate, when the evidence points at the calibration data.

The calibration reader keeps per-channel statistics of what it fed; the gate's own
inputs, made by the shared pre-processing, give the same statistics. Calibration
images pre-processed differently (BGR instead of RGB, not normalised, another
letterbox) show as shifted channel means or a different spread, and no exclusion
of layers can repair ranges calibrated on the wrong data: the loop stops and the
reason names the calibration.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MEAN_SHIFT = 0.5
"""Largest per-channel mean difference, in units of the gate inputs' std, still seen as the same data.

Two draws of a few dozen pill photos differ by ~0.1-0.2 std (colours vary by class);
BGR instead of RGB shifts the fixture's channels by ~1 std, missing normalisation by ~2."""
SPREAD_RATIO = 1.6
"""Largest ratio of per-channel std (either way) still seen as the same data (unnormalised: ~4)."""
TITLE = "calibration data (INT8 activation ranges)"
ADVICE = (
    "Calibrate on images pre-processed exactly like the deployed inputs (pillsnap.preprocess: RGB, "
    "the config's normalisation, the detector's letterbox) and of the same kind as the gate's "
    "(quantize.calibration_split); layer exclusions cannot repair ranges calibrated on other data."
)


def calibration_evidence(
    task: str, calibration: dict[str, Any], gate_inputs: dict[str, Any]
) -> dict[str, Any] | None:
    """A cause (``{model, cause, title, score, evidence, advice}``) or None when they agree."""
    if not calibration or not gate_inputs:
        return None
    m_c, s_c = np.asarray(calibration["mean"]), np.asarray(calibration["std"])
    m_g, s_g = np.asarray(gate_inputs["mean"]), np.asarray(gate_inputs["std"])
    if m_c.shape != m_g.shape:
        return _cause(task, f"calibration inputs have {m_c.size} channels, the gate's {m_g.size}")
    scale = np.maximum(s_g, 1e-6)
    shift = float(np.max(np.abs(m_c - m_g) / scale))
    spread = float(np.max(np.maximum(s_c / scale, scale / np.maximum(s_c, 1e-6))))
    if shift <= MEAN_SHIFT and spread <= SPREAD_RATIO:
        return None
    text = (
        f"calibration inputs per channel: mean {_r(m_c)}, std {_r(s_c)}; the gate's inputs "
        f"(pillsnap.preprocess): mean {_r(m_g)}, std {_r(s_g)} -- mean shift up to {shift:.2f} std, "
        f"spread ratio up to {spread:.2f}"
    )
    reversed_shift = float(np.max(np.abs(m_c[::-1] - m_g) / scale))
    if m_c.size == 3 and reversed_shift < min(MEAN_SHIFT, shift / 2):
        text += "; with the channel order reversed they agree (BGR instead of RGB?)"
    elif spread > SPREAD_RATIO:
        text += f" (min/max {_r(calibration['min'])}..{_r(calibration['max'])} vs "
        text += f"{_r(gate_inputs['min'])}..{_r(gate_inputs['max'])}: other normalisation?)"
    return _cause(task, text)


def _r(values: Any) -> list[float]:
    return [round(float(v), 3) for v in np.ravel(values)]


def _cause(task: str, evidence: str) -> dict[str, Any]:
    return {
        "model": task,
        "cause": "calibration",
        "title": TITLE,
        "score": 0.95,
        "evidence": evidence,
        "advice": ADVICE,
    }
