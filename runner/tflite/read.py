"""What a flatbuffer holds: op names, weight tensors, custom ops, float tensors."""

from __future__ import annotations

from functools import cache
from typing import Any

from runner.tflite.names import layer_name

CUSTOM = 32  # BuiltinOperator.CUSTOM


def read(flatbuffer: bytes) -> Any:
    """The flatbuffer as ``ai_edge_litert``'s object API (a ``ModelT``)."""
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))


@cache
def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    ops = schema.BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


@cache
def _types() -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as schema

    return {k: v for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def builtin(code: Any) -> int:
    """An operator code's builtin operator: the larger of the two fields (codes above 127 live
    only in ``builtinCode``; files from old converters fill only ``deprecatedBuiltinCode``)."""
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def op_code(model: Any, op: Any) -> int:
    """The builtin operator of ``op`` (``CUSTOM`` = 32 for a custom op)."""
    return builtin(model.operatorCodes[op.opcodeIndex])


def op_name(model: Any, op: Any) -> str:
    """``CONV_2D``, ``FULLY_CONNECTED`` ... (``CUSTOM`` for a custom op)."""
    return _op_names().get(op_code(model, op), "CUSTOM")


def weight_tensors(model: Any, sg: Any, op: Any) -> list[Any]:
    """The op's constant inputs of rank >= 2 (weights, not biases)."""
    out = []
    for i in op.inputs:
        if i < 0:
            continue
        t = sg.tensors[i]
        data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
        has_data = data is not None and len(data) > 0
        if (has_data or getattr(t, "offset", 0)) and t.shape is not None and len(t.shape) >= 2:
            out.append(t)
    return out


def custom_ops(flatbuffer: bytes) -> list[str]:
    """Names of the custom ops a flatbuffer uses (a builtin op's code may carry a name too)."""
    model = read(flatbuffer)
    return sorted(
        {text(code.customCode) for code in model.operatorCodes if builtin(code) == CUSTOM}
    )


def all_float32(flatbuffer: bytes) -> bool:
    """No tensor of the model is quantized or float16 (a float32 reference)."""
    model = read(flatbuffer)
    float16 = _types()["FLOAT16"]
    return not any(
        t.type == float16
        or (
            t.quantization is not None
            and t.quantization.scale is not None
            and len(t.quantization.scale)
        )
        for sg in model.subgraphs
        for t in sg.tensors
    )


def float_weight_ops(flatbuffer: bytes) -> list[str]:
    """``layer (OP)`` of each op that still holds float32 weights, in graph order."""
    model = read(flatbuffer)
    sg = model.subgraphs[0]
    float32 = _types()["FLOAT32"]
    out = []
    for op in sg.operators:
        floats = [t for t in weight_tensors(model, sg, op) if t.type == float32]
        if floats:
            out.append(f"{layer_name(text(floats[0].name))} ({op_name(model, op)})")
    return list(dict.fromkeys(out))


def tensor_producers(flatbuffer: bytes) -> dict[str, str]:
    """{output tensor name: the op that writes it}."""
    model = read(flatbuffer)
    sg = model.subgraphs[0]
    return {text(sg.tensors[o].name): op_name(model, op) for op in sg.operators for o in op.outputs}


def text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
