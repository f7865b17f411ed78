"""ai-edge-quantizer's rules as data: one :class:`Rule` per scope (a layer-name regex, or first /
last; an op; mode, bits, granularity, algorithm), later rules winning, applied to AEQ's recipe
manager; and what AEQ reports back per tensor. No TensorFlow and no AEQ import at module level."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from runner import tflite
from runner.errors import RunnerError
from runner.schema import Options

Mode = Literal["weight_only", "dynamic", "static", "none"]
Granularity = Literal[
    "channelwise", "tensorwise", "blockwise_32", "blockwise_64", "blockwise_128", "blockwise_256"
]


class Rule(Options):
    """One AEQ scope: which ops (``scope`` regex, ``op``) get which quantization."""

    scope: str = Field(".*", description="a regex on layer names, or first / last")
    op: str = Field("*", description="a TFLite op name (FULLY_CONNECTED ...) or * for all")
    mode: Mode = Field("weight_only", description="what is quantized (none: keep float)")
    bits: Literal[4, 8] = Field(8, description="weight bits")
    granularity: Granularity = Field("channelwise", description="how many scales per weight")
    activation_bits: Literal[8, 16] = Field(8, description="mode=static: activation bits")
    algorithm: str = Field("min_max_uniform_quantize", description="an AEQ algorithm key")

    @field_validator("scope")
    @classmethod
    def _regex(cls, scope: str) -> str:
        if scope not in ("first", "last"):
            try:
                re.compile(scope)
            except re.error as e:
                raise ValueError(f"not a regex: {e}") from None
        return scope


def algorithm_key(name: str) -> str:
    """AEQ's key for an algorithm named in any case (its keys mix 'octav' styles)."""
    from ai_edge_quantizer import algorithm_manager

    keys = {}
    for a in algorithm_manager.AlgorithmName:
        keys[a.value.lower()] = keys[a.name.lower()] = a.value
    if name.lower() not in keys:
        known = sorted({a.value.lower() for a in algorithm_manager.AlgorithmName})
        raise RunnerError(f"unknown algorithm {name!r}; ai-edge-quantizer has {', '.join(known)}")
    return keys[name.lower()]


def add_rule(manager: Any, rule: Rule, scope: str, qtyping: Any) -> None:
    algorithm = algorithm_key(rule.algorithm)
    op = (
        qtyping.TFLOperationName.ALL_SUPPORTED
        if rule.op == "*"
        else qtyping.TFLOperationName(rule.op.upper())
    )
    if rule.mode == "none":
        manager.add_quantization_config(scope, op, algorithm_key="no_quantize")
        return
    granularity = qtyping.QuantGranularity(rule.granularity.upper())
    if rule.mode == "weight_only":
        manager.add_weight_only_config(scope, op, rule.bits, granularity, algorithm)
    elif rule.mode == "dynamic":
        manager.add_dynamic_config(scope, op, rule.bits, granularity, algorithm)
    else:
        manager.add_static_config(
            scope, op, rule.activation_bits, rule.bits, granularity, algorithm
        )


def weight_ops(flatbuffer: bytes) -> list[tuple[str, str]]:
    """(op name, AEQ's scope name of the op) of each op with weights, in graph order."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as utils

    model = tflite.read(flatbuffer)
    sg = model.subgraphs[0]
    return [
        (tflite.op_name(model, op), utils.get_op_scope(op, sg.tensors))
        for op in sg.operators
        if tflite.weight_tensors(model, sg, op)
    ]


LOOKUPS = ("EMBEDDING_LOOKUP", "GATHER")


def scope_regex(scope: str, ops: list[tuple[str, str]]) -> str:
    """A rule's scope regex; ``first`` / ``last``: the first / last op with weights that is not
    an embedding lookup (a text model's table is its bulk, not its sensitive input layer)."""
    if scope not in ("first", "last"):
        return scope
    ops = [o for o in ops if o[0] not in LOOKUPS]
    if not ops:
        raise RunnerError(f"scope {scope}: the model has no op with weights")
    _, name = ops[0] if scope == "first" else ops[-1]
    return f"^{re.escape(name)}$"


def tensor_results(result: Any) -> dict[str, dict[str, float]]:
    """{tensor name: {metric: value}} of AEQ's ComparisonResult (intermediate and output
    tensors of every signature)."""
    out: dict[str, dict[str, float]] = {}
    for sig in result.available_signature_keys():
        per = result.get_signature_comparison_result(sig)
        out |= {**per.intermediate_tensors, **per.output_tensors}
    return out
