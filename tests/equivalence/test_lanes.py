"""Engines side by side: when, with how many threads, and that nothing leaks out of it."""

from __future__ import annotations

import threading

import pytest
from _tiny import experiment_config

from pillsnap.config import apply_overrides
from pillsnap.equivalence import lanes as lanes_mod
from pillsnap.equivalence.lanes import Lanes, open_lanes, plan_lanes

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return apply_overrides(
        experiment_config(tmp_path_factory.mktemp("lanes")), {"runtime.torch_device": "cpu"}
    )


def test_plan_splits_the_cores_when_both_engines_run_on_the_cpu(cfg, monkeypatch):
    monkeypatch.setattr(lanes_mod, "available_cores", lambda: 8)
    plan = plan_lanes(cfg)
    assert plan.parallel and (plan.torch_threads, plan.onnx_threads) == (4, 4)
    assert plan.all_threads == torch.get_num_threads()
    monkeypatch.setattr(lanes_mod, "available_cores", lambda: 2)
    assert (plan_lanes(cfg).torch_threads, plan_lanes(cfg).onnx_threads) == (1, 1)
    pinned = apply_overrides(cfg, {"runtime.intra_op_threads": 3})
    monkeypatch.setattr(lanes_mod, "available_cores", lambda: 8)
    assert (plan_lanes(pinned).torch_threads, plan_lanes(pinned).onnx_threads) == (5, 3)


def test_plan_takes_turns_when_asked_or_on_one_core(cfg, monkeypatch):
    monkeypatch.setattr(lanes_mod, "available_cores", lambda: 8)
    assert not plan_lanes(apply_overrides(cfg, {"compare.parallel_engines": False})).parallel
    monkeypatch.setattr(lanes_mod, "available_cores", lambda: 1)
    assert not plan_lanes(cfg).parallel


def test_both_runs_onnx_on_the_lane_thread_and_restores_torch_threads(cfg):
    before = torch.get_num_threads()
    plan = Lanes(True, 1, 1, before)
    with open_lanes(plan) as lanes:
        assert torch.get_num_threads() == 1
        where = lanes.both(
            lambda: threading.current_thread().name, lambda: threading.current_thread().name
        )
        assert where[0] == threading.main_thread().name and where[1].startswith("pillsnap-onnx")
        with lanes.torch_alone():
            assert torch.get_num_threads() == before
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_both_raises_either_engines_error_and_still_restores(cfg):
    before = torch.get_num_threads()

    def fail(message):
        raise ValueError(message)

    with (
        pytest.raises(ValueError, match="onnx side"),
        open_lanes(Lanes(True, 1, 1, before)) as lanes,
    ):
        lanes.both(lambda: 1, lambda: fail("onnx side"))
    with (
        pytest.raises(ValueError, match="torch side"),
        open_lanes(Lanes(True, 1, 1, before)) as lanes,
    ):
        lanes.both(lambda: fail("torch side"), lambda: 2)
    assert torch.get_num_threads() == before


def test_in_turn_runs_both_calls_here_in_order():
    order = []
    out = Lanes.in_turn().both(
        lambda: order.append("torch") or 1, lambda: order.append("onnx") or 2
    )
    assert out == (1, 2) and order == ["torch", "onnx"]
    assert Lanes.in_turn().describe()["engines"] == "in turn"
