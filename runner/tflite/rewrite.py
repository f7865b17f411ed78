"""Rewrites of a flatbuffer that compute the same numbers in ops a quantizer can take."""

from __future__ import annotations

from typing import Any

import numpy as np

from runner.tflite.names import layer_name
from runner.tflite.read import text


def gather_as_embedding_lookup(flatbuffer: bytes) -> tuple[bytes, list[str]]:
    """A Keras Embedding converts to GATHER(table, ids), which AEQ quantizes only in static
    modes; its weight-only and dynamic modes quantize EMBEDDING_LOOKUP tables, the same
    operation on flat ids. Each GATHER of a constant float table along axis 0 becomes
    RESHAPE(ids -> [-1]) -> EMBEDDING_LOOKUP -> RESHAPE(back); the float file computes the same
    numbers (tested). Returns the new flatbuffer and the rewritten tables' layer names."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    ops = schema.BuiltinOperator
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    sg = model.subgraphs[0]

    def opcode(code: int) -> int:
        for i, c in enumerate(model.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == code:
                return i
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        model.operatorCodes.append(c)
        return len(model.operatorCodes) - 1

    def tensor(name: str, shape: list[int], signature: list[int], dtype: int, data=None) -> int:
        t = schema.TensorT()
        t.name, t.type = name.encode(), dtype
        t.shape, t.shapeSignature = np.asarray(shape, np.int32), np.asarray(signature, np.int32)
        b = schema.BufferT()
        b.data = (
            None if data is None else np.frombuffer(np.asarray(data, np.int32).tobytes(), np.uint8)
        )
        model.buffers.append(b)
        t.buffer = len(model.buffers) - 1
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def reshape(inp: int, out: int, new_shape: list[int], name: str) -> Any:
        shape = tensor(
            f"{name}/shape", [len(new_shape)], [len(new_shape)], schema.TensorType.INT32, new_shape
        )
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode(ops.RESHAPE), [inp, shape], [out]
        op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
        op.builtinOptions = schema.ReshapeOptionsT()
        op.builtinOptions.newShape = list(new_shape)
        return op

    done: list[str] = []
    new_ops = []
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        opts = op.builtinOptions
        if max(code.builtinCode, code.deprecatedBuiltinCode) != ops.GATHER or len(op.inputs) != 2:
            new_ops.append(op)
            continue
        table, ids, out = sg.tensors[op.inputs[0]], sg.tensors[op.inputs[1]], op.outputs[0]
        data = model.buffers[table.buffer].data
        if (
            table.type != schema.TensorType.FLOAT32
            or data is None
            or len(table.shape) != 2
            or ids.type != schema.TensorType.INT32
            or getattr(opts, "axis", 0) != 0
            or getattr(opts, "batchDims", 0) != 0
        ):
            new_ops.append(op)
            continue
        name = text(table.name)
        dim = int(table.shape[1])
        n = int(np.prod(ids.shape))
        flat_ids = tensor(f"{name}/ids_flat", [n], [-1], schema.TensorType.INT32)
        rows = tensor(f"{name}/rows", [n, dim], [-1, dim], schema.TensorType.FLOAT32)
        lookup = schema.OperatorT()
        lookup.opcodeIndex = opcode(ops.EMBEDDING_LOOKUP)
        lookup.inputs, lookup.outputs = [flat_ids, op.inputs[0]], [rows]
        back = [-1, *[int(d) for d in ids.shape[1:]], dim]
        new_ops += [
            reshape(op.inputs[1], flat_ids, [-1], f"{name}/flatten_ids"),
            lookup,
            reshape(rows, out, back, f"{name}/unflatten"),
        ]
        done.append(layer_name(name))
    if not done:
        return flatbuffer, []
    sg.operators = new_ops
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), done
