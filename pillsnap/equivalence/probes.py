"""Measurements taken only after a gate failed, to tell the likely causes apart.

* ``input_stage``: what the ONNX graph does to its input before the first
  convolution, fitted against what reaches Torch's first convolution. A channel
  permutation means a colour-order problem, a per-channel scale/shift means a
  normalisation problem, identity means the divergence happens later.
* ``batch_consistency``: whether a sample's output depends on the rest of its
  batch (BatchNorm left in training mode, broken dynamic axes).

Both are behavioural: they run the models, they do not look for operator names.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pillsnap.engines.runners import Runner

log = logging.getLogger(__name__)
FIT_TOLERANCE = 1e-3
"""Relative residual under which a per-channel affine fit counts as exact."""
IDENTITY_TOLERANCE = 1e-3


class _Stop(Exception):
    pass


def torch_first_conv_input(runner: Runner, x: np.ndarray) -> np.ndarray | None:
    """The tensor reaching the Torch model's first ``Conv2d`` (the forward is stopped right there)."""
    import torch

    module = getattr(runner, "module", None)
    if module is None:
        return None
    seen: list[np.ndarray] = []

    def grab(_mod: Any, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach().float().cpu().numpy())
        raise _Stop

    hooks = [
        m.register_forward_pre_hook(grab)
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    try:
        with torch.inference_mode():
            param = next(module.parameters(), None)
            t = torch.from_numpy(x)
            if param is not None:
                t = t.to(device=param.device, dtype=param.dtype)
            module(t)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return seen[0] if seen else None


def onnx_first_conv_input(onnx_path: str, x: np.ndarray) -> np.ndarray | None:
    """The tensor reaching the ONNX graph's first ``Conv`` node, computed by ONNX Runtime on CPU."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    reachable = set(inputs)
    target = None
    for node in model.graph.node:  # ONNX requires topological order
        if any(i in reachable for i in node.input):
            if node.op_type == "Conv":
                target = node.input[0]
                break
            reachable.update(node.output)
    if target is None:
        return None
    if target == inputs[0]:
        return x.copy()
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None)
    )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed_type = sess.get_inputs()[0].type
    feed = x.astype(np.float16 if feed_type == "tensor(float16)" else np.float32)
    return np.asarray(sess.run(None, {inputs[0]: feed})[0], np.float32)


def _fit_channels(observed: np.ndarray, reference: np.ndarray, step: int = 1) -> dict[str, Any]:
    perm, scale, shift, resid = [], [], [], []
    for c in range(observed.shape[1]):
        y = observed[:, c, ::step, ::step].astype(np.float64).ravel()
        best = None
        for d in range(reference.shape[1]):
            r = reference[:, d, ::step, ::step].astype(np.float64).ravel()
            design = np.stack([r, np.ones_like(r)], axis=1)
            (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
            err = float(np.sqrt(np.mean((y - a * r - b) ** 2)) / (np.std(y) + 1e-12))
            if best is None or err < best[3]:
                best = (d, float(a), float(b), err)
        perm.append(best[0])
        scale.append(best[1])
        shift.append(best[2])
        resid.append(best[3])
    return {"permutation": perm, "scale": scale, "shift": shift, "residual": max(resid)}


def fit_input_stage(
    observed: np.ndarray, reference: np.ndarray, max_pad: int = 8
) -> dict[str, Any]:
    """Explain ``observed`` as a per-channel affine map of a permutation of ``reference``.

    Returns ``kind`` (identity | channel_permutation | affine | permutation_affine |
    other), the permutation (output channel c <- reference channel perm[c]), the
    per-channel scale and shift, and the worst relative residual of the fit. When
    the graph pads before its first convolution (TF "same" padding), the
    reference is located inside the padded tensor first.
    """
    n, ch, h, w = reference.shape
    if observed.ndim != 4 or observed.shape[:2] != (n, ch):
        return {
            "kind": "other",
            "detail": f"shape {list(observed.shape)} vs {list(reference.shape)}",
        }
    dh, dw = observed.shape[2] - h, observed.shape[3] - w
    if not (0 <= dh <= max_pad and 0 <= dw <= max_pad):
        return {
            "kind": "other",
            "detail": f"shape {list(observed.shape)} vs {list(reference.shape)}",
        }
    offset = (0, 0)
    if dh or dw:  # choose the offset on a subsampled fit, then fit fully there
        step = max(1, min(h, w) // 32)
        offsets = [(oy, ox) for oy in range(dh + 1) for ox in range(dw + 1)]
        offset = min(
            offsets,
            key=lambda o: _fit_channels(
                observed[:, :, o[0] : o[0] + h, o[1] : o[1] + w], reference, step
            )["residual"],
        )
    out = _fit_channels(
        observed[:, :, offset[0] : offset[0] + h, offset[1] : offset[1] + w], reference
    )
    out["offset"] = list(offset)
    if out["residual"] > FIT_TOLERANCE:
        return {
            **out,
            "kind": "other",
            "detail": f"no per-channel scale/shift explains it (residual {out['residual']:.2g})",
        }
    perm, scale, shift = out["permutation"], out["scale"], out["shift"]
    permuted = perm != list(range(ch))
    affine = any(
        abs(a - 1) > IDENTITY_TOLERANCE or abs(b) > IDENTITY_TOLERANCE for a, b in zip(scale, shift)
    )
    kind = {
        (False, False): "identity",
        (True, False): "channel_permutation",
        (False, True): "affine",
        (True, True): "permutation_affine",
    }[(permuted, affine)]
    return {**out, "kind": kind}


def input_stage(onnx_path: str, torch_runner: Runner, x: np.ndarray) -> dict[str, Any]:
    """Fit the ONNX graph's input stage against Torch's (see the module doc)."""
    observed = onnx_first_conv_input(onnx_path, x)
    if observed is None:
        return {"kind": "unavailable", "detail": "no Conv node reachable from the ONNX input"}
    reference = torch_first_conv_input(torch_runner, x)
    result = fit_input_stage(observed, x if reference is None else reference)
    result["reference"] = "x" if reference is None else "torch_first_conv_input"
    return result


def batch_consistency(runner: Runner, x: np.ndarray) -> float:
    """Largest relative change of a sample's output when run alone instead of in the batch."""
    if len(x) < 2:
        return 0.0
    together = runner.infer(x)
    alone = np.concatenate([runner.infer(x[i : i + 1]) for i in range(len(x))])
    return float(np.abs(together - alone).max() / (np.abs(together).max() + 1e-12))
