"""Rewrites of a flatbuffer that compute the same numbers in ops a quantizer can take."""

from __future__ import annotations

from typing import Any

import numpy as np

from runner.tflite.names import layer_name
from runner.tflite.read import builtin, op_code, text


class _Editor:
    """Appends operator codes, tensors and RESHAPE ops to an unpacked model's first subgraph."""

    def __init__(self, model: Any) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.schema, self.model, self.sg = schema, model, model.subgraphs[0]

    def code(self, op: Any) -> int:
        return op_code(self.model, op)

    def opcode(self, code: int) -> int:
        for i, c in enumerate(self.model.operatorCodes):
            if builtin(c) == code:
                return i
        c = self.schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        self.model.operatorCodes.append(c)
        return len(self.model.operatorCodes) - 1

    def tensor(self, name: str, shape: list[int], signature: list[int], dtype: int, data=None):
        t = self.schema.TensorT()
        t.name, t.type = name.encode(), dtype
        t.shape, t.shapeSignature = np.asarray(shape, np.int32), np.asarray(signature, np.int32)
        b = self.schema.BufferT()
        b.data = (
            None if data is None else np.frombuffer(np.asarray(data, np.int32).tobytes(), np.uint8)
        )
        self.model.buffers.append(b)
        t.buffer = len(self.model.buffers) - 1
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int]) -> Any:
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = self.opcode(code), inputs, outputs
        return op

    def reshape(self, inp: int, out: int, new_shape: list[int], name: str) -> Any:
        int32 = self.schema.TensorType.INT32
        shape = self.tensor(f"{name}/shape", [len(new_shape)], [len(new_shape)], int32, new_shape)
        op = self.op(self.schema.BuiltinOperator.RESHAPE, [inp, shape], [out])
        op.builtinOptionsType = self.schema.BuiltinOptions.ReshapeOptions
        op.builtinOptions = self.schema.ReshapeOptionsT()
        op.builtinOptions.newShape = list(new_shape)
        return op

    def is_table_gather(self, op: Any) -> bool:
        """GATHER(constant 2-D float table, int32 ids) along axis 0, no batch dims."""
        types = self.schema.TensorType
        if self.code(op) != self.schema.BuiltinOperator.GATHER or len(op.inputs) != 2:
            return False
        table, ids = self.sg.tensors[op.inputs[0]], self.sg.tensors[op.inputs[1]]
        opts = op.builtinOptions
        return (
            table.type == types.FLOAT32
            and self.model.buffers[table.buffer].data is not None
            and len(table.shape) == 2
            and ids.type == types.INT32
            and getattr(opts, "axis", 0) == 0
            and getattr(opts, "batchDims", 0) == 0
        )

    def as_lookup(self, op: Any) -> tuple[list[Any], str]:
        """RESHAPE(ids -> [-1]) -> EMBEDDING_LOOKUP -> RESHAPE(back) for one table GATHER."""
        types = self.schema.TensorType
        table, ids = self.sg.tensors[op.inputs[0]], self.sg.tensors[op.inputs[1]]
        name, dim, n = text(table.name), int(table.shape[1]), int(np.prod(ids.shape))
        flat_ids = self.tensor(f"{name}/ids_flat", [n], [-1], types.INT32)
        rows = self.tensor(f"{name}/rows", [n, dim], [-1, dim], types.FLOAT32)
        lookup = self.op(
            self.schema.BuiltinOperator.EMBEDDING_LOOKUP, [flat_ids, op.inputs[0]], [rows]
        )
        back = [-1, *[int(d) for d in ids.shape[1:]], dim]
        return [
            self.reshape(op.inputs[1], flat_ids, [-1], f"{name}/flatten_ids"),
            lookup,
            self.reshape(rows, op.outputs[0], back, f"{name}/unflatten"),
        ], name


def gather_as_embedding_lookup(flatbuffer: bytes) -> tuple[bytes, list[str]]:
    """A Keras Embedding converts to GATHER(table, ids), which AEQ quantizes only in static
    modes; its weight-only and dynamic modes quantize EMBEDDING_LOOKUP tables, the same
    operation on flat ids. Each GATHER of a constant float table along axis 0 becomes
    RESHAPE(ids -> [-1]) -> EMBEDDING_LOOKUP -> RESHAPE(back); the float file computes the same
    numbers (tested). Returns the new flatbuffer and the rewritten tables' layer names."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    edit = _Editor(model)
    done: list[str] = []
    new_ops: list[Any] = []
    for op in edit.sg.operators:
        if not edit.is_table_gather(op):
            new_ops.append(op)
            continue
        ops, name = edit.as_lookup(op)
        new_ops += ops
        done.append(layer_name(name))
    if not done:
        return flatbuffer, []
    edit.sg.operators = new_ops
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), done
