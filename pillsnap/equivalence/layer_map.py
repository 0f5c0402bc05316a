"""Which Torch module produced which ONNX tensor, and that module's output captured by a forward hook.

Both exporters of the project name every ONNX node after the module whose forward
emitted it: the TorchScript exporter (timm classifier) writes
``/blocks/blocks.2/blocks.2.0/conv_pw/Conv``, Ultralytics' exporter (the same
exporter underneath, then onnxslim, which keeps the names) ``/model.6/m.0/cv1/conv/Conv``.
Each path component is one *called* module, named the way ``torch.onnx`` names it:
the last non-numeric atom of its qualified name plus the numeric atoms after it
(``blocks.2.0`` for ``blocks.2.0``, ``m.0`` for ``model.6.m.0``, ``conv_pw`` for
``blocks.2.0.conv_pw``); containers that are never called (``ModuleList``,
``ModuleDict``, a ``Sequential`` iterated by hand) add no component of their own.

An ONNX tensor is a module's output when it leaves that module's scope (a node
outside the scope reads it, or it is a graph output). It is matched to the
innermost module it leaves, only when that match is certain:

* the scope resolves to exactly one Torch module (walking the module tree, through
  uncalled containers only);
* that module is reached from no other scope (a module shared by several call sites,
  like Ultralytics' one ``SiLU`` instance, cannot say which call a tensor is) and its
  scope lets exactly one tensor out (a module called several times, like SPPF's
  pooling, lets out one per call);
* at run time the module is called exactly once and returns one tensor.

Everything else (a tensor inside a module, like the ``Sigmoid`` of a SiLU; a node
without a scope, like one added by a conversion tool) is left out and counted by
reason, never guessed. Graph output *k* is Torch output *k* (the first element of a
tuple, e.g. Ultralytics' raw head), which is what the parity gates compare.

The exporter folds an eval-mode ``BatchNorm`` into the convolution before it, so the
ONNX ``Conv`` output is Torch's convolution output *after* that BatchNorm: the hook
applies the BatchNorm (running statistics, exactly what the exporter folds) to it,
unless the graph kept a ``BatchNormalization`` node after the convolution.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from pillsnap.equivalence.layers import Tap

ROOT = ""
"""The Torch model itself (its outputs are the graph outputs)."""
_RECENT = 4


def scope_of(node_name: str) -> tuple[str, ...] | None:
    """``/model.6/m.0/cv1/conv/Conv`` -> ``("model.6", "m.0", "cv1", "conv")``; None without a scope."""
    if not node_name.startswith("/"):
        return None
    parts = node_name.split("/")[1:]
    scope = tuple(parts[:-1])
    return scope if scope and all(scope) else None


def unqualified(name: str) -> str:
    """``torch.onnx``'s scope name of a module: from its last non-numeric atom on."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


@dataclass
class ModuleTree:
    """The named modules of a Torch model, indexed for resolving ONNX scopes."""

    modules: dict[str, Any]
    containers: set[str]
    by_tail: dict[str, list[str]]

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModuleTree:
        import torch

        # remove_duplicate=False: a module shared by several parents keeps each of its paths.
        named = dict(model.named_modules(remove_duplicate=False))
        containers = {
            n for n, m in named.items() if isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict))
        }
        by_tail: dict[str, list[str]] = defaultdict(list)
        for name in named:
            if name:
                by_tail[unqualified(name)].append(name)
        return cls(named, containers, dict(by_tail))

    def resolve(self, scope: tuple[str, ...]) -> str | None:
        """The one module path a scope names, or None when none or several fit."""
        prefix = ROOT
        for component in scope:
            found = [
                n for n in self.by_tail.get(component, []) if self._child(prefix, n, component)
            ]
            if len(found) != 1:
                return None
            prefix = found[0]
        return prefix

    def _child(self, prefix: str, name: str, component: str) -> bool:
        """Is ``name`` reached from ``prefix`` by one call (through uncalled containers only)?"""
        if prefix and not name.startswith(prefix + "."):
            return False
        start = len(name) - len(component)  # where the component begins inside the path
        atoms = name.split(".")
        for k in range(1, len(atoms)):
            between = ".".join(atoms[:k])
            if len(between) <= len(prefix) or len(between) >= start:
                continue
            if between not in self.containers:
                return False
        return True


@dataclass
class TapPlan:
    """For each tapped ONNX tensor, the Torch module whose output it is; the rest counted by reason."""

    modules: dict[str, str]
    """ONNX tensor name -> Torch module path (``ROOT`` for a graph output)."""
    output_index: dict[str, int]
    """Graph output tensor name -> its index among the graph outputs."""
    after_batchnorm: set[str]
    """Tensors whose Torch value is taken after the BatchNorm the exporter folded into them."""
    skipped: Counter = field(default_factory=Counter)


def plan_taps(graph: Any, taps: list[Tap], tree: ModuleTree) -> TapPlan:
    """Match each tap (ONNX tensor) to a Torch module by its node's scope (see the module doc)."""
    scope_by_tensor: dict[str, tuple[str, ...] | None] = {}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        scope = scope_of(node.name)
        for out in node.output:
            scope_by_tensor[out] = scope
        for inp in node.input:
            consumers[inp].append(node)
    outputs = {o.name: i for i, o in enumerate(graph.output)}

    def leaves(tensor: str, scope: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The scopes ``tensor`` leaves, innermost first."""
        out = []
        for depth in range(len(scope), 0, -1):
            inner = scope[:depth]
            readers = [scope_of(c.name) for c in consumers[tensor]]
            if tensor in outputs or any(r is None or r[:depth] != inner for r in readers):
                out.append(inner)
        return out

    exits: dict[tuple[str, ...], int] = Counter()
    left: dict[str, list[tuple[str, ...]]] = {}
    for tap in taps:
        scope = scope_by_tensor.get(tap.name)
        left[tap.name] = leaves(tap.name, scope) if scope else []
        for s in left[tap.name]:
            exits[s] += 1
    resolved = {s: tree.resolve(s) for s in exits}
    scopes_of_module: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    for s, name in resolved.items():
        if name is not None:
            scopes_of_module[id(tree.modules[name])].add(s)

    plan = TapPlan({}, {}, set())
    for tap in taps:
        if tap.name in outputs:
            plan.modules[tap.name] = ROOT
            plan.output_index[tap.name] = outputs[tap.name]
            continue
        if scope_by_tensor.get(tap.name) is None:
            plan.skipped["no module scope"] += 1
            continue
        if not left[tap.name]:
            plan.skipped["inside a module"] += 1
            continue
        reason = "no confident module match"
        for s in left[tap.name]:
            name = resolved[s]
            if name is None:
                continue
            if exits[s] != 1:
                reason = "several tensors leave the module"
                continue
            if len(scopes_of_module[id(tree.modules[name])]) != 1:
                reason = "module called several times"
                continue
            plan.modules[tap.name] = name
            break
        else:
            plan.skipped[reason] += 1
            continue
        if not any(c.op_type == "BatchNormalization" for c in consumers[tap.name]):
            plan.after_batchnorm.add(tap.name)
    return plan


def capture_torch(
    model: torch.nn.Module, batch: np.ndarray, plan: TapPlan
) -> tuple[dict[str, np.ndarray], Counter]:
    """One forward of ``batch`` with hooks: ONNX tensor name -> the Torch value it should equal."""
    import torch
    import torch.nn.functional as F

    wanted = set(plan.modules.values()) - {ROOT}
    calls: Counter = Counter()
    values: dict[str, Any] = {}
    folded: dict[str, Any] = {}
    # The last few module outputs, kept alive so ids stay unique: an eval BatchNorm reading
    # one of them is applied right to that module's output, which is what the exporter folds.
    produced_by: dict[int, tuple[str, Any]] = {}
    root_out: list[Any] = []

    def on_output(name: str):
        def hook(_mod: Any, _args: Any, out: Any) -> None:
            calls[name] += 1
            if calls[name] == 1 and isinstance(out, torch.Tensor):
                values[name] = out.detach().float().cpu().numpy().copy()
                produced_by[id(out)] = (name, out)
                while len(produced_by) > _RECENT:
                    del produced_by[next(iter(produced_by))]

        return hook

    def before_batchnorm(bn: Any):
        def hook(_mod: Any, args: tuple[Any, ...]) -> None:
            source = produced_by.get(id(args[0])) if args else None
            if source is None or bn.training or bn.running_mean is None:
                return
            x = args[0].detach()
            y = F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
            folded[source[0]] = y.float().cpu().numpy()

        return hook

    hooks = [model.register_forward_hook(lambda _m, _a, out: root_out.append(out))]
    for name in wanted:
        hooks.append(plan_module(model, name).register_forward_hook(on_output(name)))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(before_batchnorm(m)))
    try:
        forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
    skipped: Counter = Counter()
    out: dict[str, np.ndarray] = {}
    outputs = _as_list(root_out[0]) if root_out else []
    for tensor, name in plan.modules.items():
        if name == ROOT:
            k = plan.output_index[tensor]
            if k < len(outputs) and isinstance(outputs[k], torch.Tensor):
                out[tensor] = outputs[k].detach().float().cpu().numpy()
            else:
                skipped["model output not a tensor"] += 1
        elif calls[name] != 1:
            skipped["module called several times" if calls[name] else "module not called"] += 1
        elif name not in values:
            skipped["module output not a single tensor"] += 1
        else:
            use_folded = tensor in plan.after_batchnorm and name in folded
            out[tensor] = folded[name] if use_folded else values[name]
    return out, skipped


def output_bytes(model: torch.nn.Module, sample: np.ndarray, plan: TapPlan) -> int:
    """Bytes (float32) the planned module outputs of ``sample`` take: counting hooks, no copies."""
    import torch

    total = [0]

    def count(_mod: Any, _args: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * 4

    wanted = set(plan.modules.values()) - {ROOT}
    hooks = [plan_module(model, name).register_forward_hook(count) for name in wanted]
    try:
        forward(model, sample)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def forward(model: torch.nn.Module, batch: np.ndarray) -> None:
    """One inference pass of ``batch`` on the model's device and dtype (the hooks collect)."""
    import torch

    with torch.inference_mode():
        param = next(model.parameters(), None)
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if param is not None:
            x = x.to(device=param.device, dtype=param.dtype)
        model(x)


def plan_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name) if name else model


def _as_list(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]
