"""The fast evaluator: re-run only the part of the network that a path's changed tensors affect.

The model is traced once with torch.fx. Per evaluation batch, the base model's activations are
computed once and the ones later needed are cached; a point then runs only the nodes downstream
of the changed tensors, reading everything else from the cache. When a path changes a single
Linear/Conv module, that module is not re-run at all: for a fixed input its output is affine in
its own weights, so the output at alpha is lerp(out_base, out_end, alpha) from two cached outputs.
Batching several alphas through the downstream part was measured on the CPU and did not pay
(a conv's cost per sample is flat in the batch size there), so alphas run one after another.
A tensor read in two places (a language model's token embedding tied to its output projection)
changes both nodes, so the re-run starts at the first of them and the second sees the moved tensor
too. Attention, LayerNorm, GELU, position embeddings and LSTMs are re-run like any other node;
evaluation is in eval mode, so dropout is off everywhere, endpoints included.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from fedlayer.analysis.evaluate import Accumulator, EvalData, ParameterPath, WorkingModel
from fedlayer.analysis.pooling import StridedMaxPool2d
from fedlayer.errors import one_line
from fedlayer.training import Metrics

_AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_OUT_OF_PLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
}
_VERIFY_SAMPLES = 8


class Untraceable(Exception):
    """The model cannot be run as a graph with identical results; use the plain evaluator.

    The message is one line: the engine reports it as the reason for falling back.
    """


@dataclass(frozen=True, eq=False)
class _Plan:
    """What a point of a path re-runs: `run` in order, reading `inputs` from the cache."""

    run: tuple[fx.Node, ...]
    inputs: tuple[fx.Node, ...]
    drops: dict[fx.Node, tuple[fx.Node, ...]]  # values no longer needed after a node ran
    linear: fx.Node | None  # the single affine module whose output is lerped, not re-run
    constant: bool  # the output does not depend on the changed tensors


class GraphEvaluator:
    """Same numbers as `PlainEvaluator` (bn="interpolate"), with the shared work done once per batch."""

    name = "graph"

    def __init__(self, work: WorkingModel, data: EvalData, batch_size: int):
        self.work, self.data, self.batch_size = work, data, batch_size
        try:
            self.module = fx.GraphModule(work.model, _Tracer().trace(work.model))
        except Exception as exc:  # tracing fails in many ways (control flow, unsupported calls)
            raise Untraceable(f"torch.fx cannot trace it ({one_line(exc)})") from exc
        self.nodes = list(self.module.graph.nodes)
        _make_out_of_place(self.nodes)
        self.submodules = dict(self.module.named_modules())
        self.uses = {node: self._tensor_ids(node) for node in self.nodes}
        self.defaults = {node: _placeholder_default(node) for node in self.nodes[1:] if node.op == "placeholder"}
        self.output = self.nodes[-1]
        self.plans: dict[frozenset[int], _Plan] = {}
        self._verify(data.inputs[:_VERIFY_SAMPLES])

    def evaluate(
        self, base: Mapping[str, torch.Tensor], paths: Sequence[tuple[ParameterPath, Sequence[float]]]
    ) -> tuple[Metrics, list[list[Metrics]]]:
        """Metrics of the base model and of each path at each of its alphas."""
        self.work.load(base)
        plans = [self._plan(frozenset(id(s.target) for s in segments)) for segments, _ in paths]
        keep = {node for plan in plans for node in plan.inputs + ((plan.linear,) if plan.linear else ())}
        base_acc = Accumulator()
        accs = [[Accumulator() for _ in alphas] for _, alphas in paths]
        for inputs, labels in self.data.chunks(self.batch_size):
            cache: dict[fx.Node, object] = {}
            base_acc.add(self._run_all(inputs, cache, keep), labels)
            for (segments, alphas), plan, row in zip(paths, plans, accs, strict=True):
                if alphas and not plan.constant:
                    self._run_path(segments, alphas, plan, cache, labels, row)
        base_metrics = base_acc.result()
        results = [
            [base_metrics if plan.constant else acc.result() for acc in row]
            for plan, row in zip(plans, accs, strict=True)
        ]
        return base_metrics, results

    def _run_path(self, segments: ParameterPath, alphas, plan: _Plan, cache, labels, row: list[Accumulator]) -> None:
        if plan.linear is not None:
            ends = self._linear_ends(plan.linear, segments, cache)
        for alpha, accumulator in zip(alphas, row, strict=True):
            env = {node: cache[node] for node in plan.inputs}
            if plan.linear is not None:
                env[plan.linear] = torch.lerp(*ends, alpha)
            else:
                for segment in segments:
                    segment.write(alpha)
            accumulator.add(self._run(plan.run, env, plan.drops), labels)
        if plan.linear is None:
            for segment in segments:
                segment.restore()

    def _linear_ends(self, node: fx.Node, segments: ParameterPath, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine module's outputs at alpha 0 and 1: the cached base one and the far end's."""
        module = self.submodules[node.target]
        names = {id(t): name for name, t in module.named_parameters(recurse=False)}
        base_end = segments[0].base_end
        far = {names[id(s.target)]: s.value(1.0 - base_end) for s in segments}
        args = fx.node.map_arg(node.args, cache.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, cache.__getitem__)
        far_output = torch.func.functional_call(module, far, args, kwargs)
        return (cache[node], far_output) if base_end == 0.0 else (far_output, cache[node])

    def _run_all(self, inputs: torch.Tensor, cache: dict, keep: set[fx.Node]) -> torch.Tensor:
        """A full forward pass of the base model that stores the activations in `keep`."""
        env: dict[fx.Node, Any] = {self.nodes[0]: inputs, **self.defaults}
        for node in self.nodes:
            if node not in env:
                env[node] = self._execute(node, env)
            if node in keep:
                cache[node] = env[node]
        return env[self.output]

    def _run(self, nodes: Sequence[fx.Node], env: dict, drops: Mapping[fx.Node, Sequence[fx.Node]]):
        for node in nodes:
            env[node] = self._execute(node, env)
            for done in drops.get(node, ()):
                del env[done]
        return env[self.output]

    def _execute(self, node: fx.Node, env: Mapping[fx.Node, Any]):
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        target = node.target  # a callable for call_function, a qualified name (str) for the other ops
        if node.op == "call_module" and isinstance(target, str):
            return self.submodules[target](*args, **kwargs)
        if node.op == "call_function" and callable(target):
            return target(*args, **kwargs)
        if node.op == "call_method" and isinstance(target, str):
            return getattr(args[0], target)(*args[1:], **kwargs)
        if node.op == "get_attr" and isinstance(target, str):
            return operator.attrgetter(target)(self.module)
        if node.op == "output":
            return args[0]
        raise Untraceable(f"unexpected graph node {node.op} {node.target}")

    def _plan(self, targets: frozenset[int]) -> _Plan:
        if targets not in self.plans:
            self.plans[targets] = self._make_plan(targets)
        return self.plans[targets]

    def _make_plan(self, targets: frozenset[int]) -> _Plan:
        changed = [node for node in self.nodes if self.uses[node] & targets]
        downstream: set[fx.Node] = set()
        stack = list(changed)
        while stack:
            node = stack.pop()
            if node not in downstream:
                downstream.add(node)
                stack.extend(node.users)
        order = [node for node in self.nodes if node in downstream]
        linear = changed[0] if len(changed) == 1 and self._is_affine(changed[0], targets) else None
        run = tuple(node for node in order if node is not linear)
        inputs = {arg for node in run for arg in node.all_input_nodes if arg not in downstream}
        if linear is not None:
            inputs.update(linear.all_input_nodes)
        last_use = {arg: node for node in run for arg in node.all_input_nodes if arg in downstream}
        drops: dict[fx.Node, list[fx.Node]] = {}
        for value, node in last_use.items():
            drops.setdefault(node, []).append(value)
        return _Plan(
            run=run,
            inputs=tuple(node for node in self.nodes if node in inputs),
            drops={node: tuple(values) for node, values in drops.items()},
            linear=linear,
            constant=self.output not in downstream,
        )

    def _is_affine(self, node: fx.Node, targets: frozenset[int]) -> bool:
        if node.op != "call_module" or type(self.submodules[node.target]) not in _AFFINE_MODULES:
            return False
        own = {id(p) for p in self.submodules[node.target].parameters(recurse=False)}
        return targets <= own

    def _tensor_ids(self, node: fx.Node) -> frozenset[int]:
        """Identities of the parameters and buffers a node reads directly."""
        if node.op == "call_module":
            module = self.submodules[node.target]
            return frozenset(id(t) for t in (*module.parameters(), *module.buffers()))
        if node.op == "get_attr" and isinstance(node.target, str):
            value = operator.attrgetter(node.target)(self.module)
            if isinstance(value, nn.Module):
                return frozenset(id(t) for t in (*value.parameters(), *value.buffers()))
            return frozenset({id(value)}) if isinstance(value, torch.Tensor) else frozenset()
        return frozenset()

    def _verify(self, inputs: torch.Tensor) -> None:
        """The graph must reproduce the module's own forward pass, or the fast path is not used."""
        try:
            graph_out = self._run_all(inputs, {}, set())
            eager_out = self.work.model(inputs)
        except Exception as exc:
            raise Untraceable(f"the traced graph does not run ({one_line(exc)})") from exc
        same = (
            isinstance(graph_out, torch.Tensor)
            and isinstance(eager_out, torch.Tensor)
            and graph_out.shape == eager_out.shape
            and torch.allclose(graph_out, eager_out, rtol=1e-5, atol=1e-6, equal_nan=True)
        )
        if not same:
            raise Untraceable("the traced graph does not reproduce the model's forward pass")


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with fedlayer's own layers kept as single calls (they branch on their input)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, StridedMaxPool2d) or super().is_leaf_module(module, qualified_name)


def _make_out_of_place(nodes: Sequence[fx.Node]) -> None:
    """Rewrite in-place operations out of place: a cached activation must never be overwritten.

    The graph may keep using the mutated tensor's node after an in-place call (`g.relu_(); h + g`),
    so later uses of the mutated argument are redirected to the call's result.
    """
    position = {node: i for i, node in enumerate(nodes)}
    for node in nodes:
        was_inplace = True
        if node.op == "call_function" and node.target in _OUT_OF_PLACE_OPERATORS:
            node.target = _OUT_OF_PLACE_OPERATORS[node.target]
        elif node.op == "call_function" and getattr(node.target, "__name__", "").endswith("_"):
            node.target = _out_of_place_function(node.target)
        elif node.op == "call_function":
            was_inplace = _switch_off_inplace_argument(node)
        elif (
            node.op == "call_method"
            and isinstance(node.target, str)
            and node.target.endswith("_")
            and not node.target.startswith("_")
        ):
            if not hasattr(torch.Tensor, node.target[:-1]):
                raise Untraceable(f"in-place method {node.target} has no out-of-place form")
            node.target = node.target[:-1]
        else:
            was_inplace = False
        if was_inplace and node.args and isinstance(node.args[0], fx.Node):

            def after(user: fx.Node, n: fx.Node = node) -> bool:
                return position[user] > position[n]

            node.args[0].replace_all_uses_with(node, delete_user_cb=after)


def _out_of_place_function(function):
    name = function.__name__
    for namespace in (torch, torch.nn.functional):
        if getattr(namespace, name, None) is function and hasattr(namespace, name[:-1]):
            return getattr(namespace, name[:-1])
    raise Untraceable(f"in-place function {name} has no out-of-place form")


def _switch_off_inplace_argument(node: fx.Node) -> bool:
    """F.relu(x, inplace=True) and the like: bind the call and pass inplace=False; True if it was in place."""
    if not callable(node.target):  # a str target: inspect.signature would raise TypeError
        return False
    try:
        signature = inspect.signature(node.target)
    except (TypeError, ValueError):
        return False
    if "inplace" not in signature.parameters:
        return False
    try:
        bound = signature.bind(*node.args, **node.kwargs)
    except TypeError as exc:
        raise Untraceable(f"cannot bind the arguments of {node.target} ({one_line(exc)})") from exc
    if not bound.arguments.get("inplace", False):
        return False
    bound.arguments["inplace"] = False
    node.args, node.kwargs = tuple(bound.args), dict(bound.kwargs)
    return True


def _placeholder_default(node: fx.Node):
    """Extra forward() arguments must have defaults: only the input batch is passed."""
    if not node.args:
        raise Untraceable(f"forward() argument {node.target!r} has no default; only one input is passed")
    return node.args[0]
