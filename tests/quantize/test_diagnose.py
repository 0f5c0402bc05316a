"""The calibration diagnosis: same data agrees, BGR and unnormalised calibration are told apart."""

from __future__ import annotations

import numpy as np

from pillsnap.quantize.calibrate import channel_stats
from pillsnap.quantize.diagnose import calibration_evidence


def batch(seed: int, mean=(0.4, 0.1, -0.3), std=(1.0, 0.9, 1.1), n=24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per_image = rng.normal(0, 0.3, (n, 3, 1, 1))  # images differ in colour
    x = rng.normal(0, 1, (n, 3, 16, 16)) * np.reshape(std, (1, 3, 1, 1))
    return (x + per_image + np.reshape(mean, (1, 3, 1, 1))).astype(np.float32)


def test_two_draws_of_the_same_data_agree():
    assert (
        calibration_evidence("classification", channel_stats(batch(0)), channel_stats(batch(1)))
        is None
    )


def test_reversed_channels_are_named():
    gate = channel_stats(batch(1))
    cause = calibration_evidence("classification", channel_stats(batch(0)[:, ::-1]), gate)
    assert cause["cause"] == "calibration" and "BGR" in cause["evidence"] and cause["score"] > 0.9


def test_unnormalised_inputs_are_named():
    raw = batch(0) * 0.25 + 0.45  # roughly what (x * std + mean) gives: 0..1 pixels
    cause = calibration_evidence("classification", channel_stats(raw), channel_stats(batch(1)))
    assert cause is not None and "other normalisation" in cause["evidence"]
