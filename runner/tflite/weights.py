"""What pruning and clustering leave in a file: the share of exact zeros among its weights and
how many distinct values an output channel holds, read from the flatbuffer itself; and the
size a user downloads (gzip), which is where those show (the raw flatbuffer does not shrink)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.tflite.read import op_name, read

# TensorType -> numpy dtype of the weight types a converter or ai-edge-quantizer writes
_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT8": np.int8, "UINT8": np.uint8}
_DTYPES |= {"INT16": np.int16}
# ops whose weights hold their output channels on the last axis (1 x H x W x C_out)
_CHANNELS_LAST = ("DEPTHWISE_CONV_2D",)


@dataclass(frozen=True)
class WeightStats:
    weights: int  # weight values (constant tensors of rank >= 2)
    sparsity: float | None  # share of exact zeros among them
    max_unique_per_channel: int | None  # the most distinct values any output channel holds


def gzip_size(data: bytes) -> int:
    """Bytes after gzip at level 9 (what a download or an app store transfers), reproducibly."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def weight_stats(flatbuffer: bytes) -> WeightStats:
    """Sparsity and unique values per output channel over the file's weight tensors."""
    model = read(flatbuffer)
    names = {v: k for k, v in _type_ids().items()}
    zeros = total = 0
    most = 0
    for sg in model.subgraphs:
        axes = _channel_axes(model, sg)
        for i, t in enumerate(sg.tensors):
            if t.sparsity is not None and t.shape is not None:  # stored sparse: count what is kept
                kept = _stored_sparse(model, t, names)
                if kept is not None:
                    total += int(np.prod(t.shape))
                    zeros += int(np.prod(t.shape)) - kept.size + int(np.count_nonzero(kept == 0))
                continue
            values = _values(model, t, flatbuffer, names)
            if values is None:
                continue
            z, unique = _stats(values, axes.get(i, _quantized_axis(t)))
            zeros, total, most = zeros + z, total + values.size, max(most, unique)
    if not total:
        return WeightStats(0, None, None)
    return WeightStats(total, zeros / total, most)


def op_weight_stats(flatbuffer: bytes) -> list[dict[str, Any]]:
    """Each weighted op of the file, in graph order: the tensor it writes, its op name, and its
    weights' count, share of zeros and most unique values per output channel (what the layer
    report shows beside each layer's int8 error)."""
    model = read(flatbuffer)
    names = {v: k for k, v in _type_ids().items()}
    rows = []
    for sg in model.subgraphs:
        axes = _channel_axes(model, sg)
        for op in sg.operators:
            zeros = total = most = 0
            for i in (j for j in op.inputs if j >= 0):
                t = sg.tensors[i]
                values = _values(model, t, flatbuffer, names)
                if values is not None:
                    z, unique = _stats(values, axes.get(i, _quantized_axis(t)))
                    zeros, total, most = zeros + z, total + values.size, max(most, unique)
            if total and len(op.outputs):
                out = sg.tensors[op.outputs[0]].name
                rows.append(
                    {
                        "tensor_name": out.decode() if isinstance(out, bytes) else str(out),
                        "op": op_name(model, op),
                        "weights": total,
                        "weight_sparsity": zeros / total,
                        "unique_per_channel": most,
                    }
                )
    return rows


def dequantized_weights(flatbuffer: bytes) -> dict[str, np.ndarray]:
    """{tensor name: real values} of the file's quantized weight tensors (integers times their
    per-channel scales, less zero points), in the file's own layout (OHWI, [out, in])."""
    model = read(flatbuffer)
    names = {v: k for k, v in _type_ids().items()}
    out = {}
    for sg in model.subgraphs:
        for t in sg.tensors:
            q = t.quantization
            if q is None or q.scale is None or not len(q.scale):
                continue
            values = _values(model, t, flatbuffer, names)
            if values is None or not np.issubdtype(values.dtype, np.integer):
                continue
            shape = [1] * values.ndim
            axis = int(q.quantizedDimension) if len(q.scale) > 1 else 0
            shape[axis] = len(q.scale)
            scale = np.asarray(q.scale, np.float64).reshape(shape if len(q.scale) > 1 else [1])
            zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else 0, np.float64)
            zero = zero.reshape(shape) if zero.size > 1 else zero
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            out[name] = ((values.astype(np.float64) - zero) * scale).astype(np.float32)
    return out


def _stats(values: np.ndarray, axis: int) -> tuple[int, int]:
    """(exact zeros, the most distinct values any slice along ``axis`` holds)."""
    per = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return int(np.count_nonzero(values == 0)), max(len(np.unique(row)) for row in per)


def _values(model: Any, t: Any, flatbuffer: bytes, names: dict[int, str]) -> np.ndarray | None:
    """A constant tensor of rank >= 2 as an array (packed int4 unpacked), else None."""
    if t.shape is None or len(t.shape) < 2 or t.buffer >= len(model.buffers):
        return None
    buf = model.buffers[t.buffer]
    raw = bytes(buf.data) if buf.data is not None and len(buf.data) else b""
    if not raw and getattr(buf, "offset", 0) > 1:
        raw = flatbuffer[buf.offset : buf.offset + buf.size]
    if not raw:
        return None
    kind, count = names.get(t.type), int(np.prod(t.shape))
    if kind == "INT4":
        packed = np.frombuffer(raw, np.uint8)
        nibbles = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)[:count]
        return ((nibbles.astype(np.int8) ^ 8) - 8).reshape(t.shape)  # two's complement
    dtype = _DTYPES.get(kind or "")
    if dtype is None or len(raw) != count * np.dtype(dtype).itemsize:
        return None
    return np.frombuffer(raw, dtype).reshape(t.shape)


def _stored_sparse(model: Any, t: Any, names: dict[int, str]) -> np.ndarray | None:
    """The values a sparse-stored tensor keeps (EXPERIMENTAL_SPARSITY), or None."""
    buf = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
    dtype = _DTYPES.get(names.get(t.type) or "")
    if buf is None or buf.data is None or dtype is None:
        return None
    raw = bytes(buf.data)
    return np.frombuffer(raw[: len(raw) - len(raw) % np.dtype(dtype).itemsize], dtype)


def _channel_axes(model: Any, sg: Any) -> dict[int, int]:
    """{tensor index: output-channel axis} for the weights of channels-last ops."""
    return {
        op.inputs[1]: -1
        for op in sg.operators
        if op_name(model, op) in _CHANNELS_LAST and len(op.inputs) > 1
    }


def _quantized_axis(t: Any) -> int:
    q = t.quantization
    if q is not None and q.scale is not None and len(q.scale) > 1:
        return int(q.quantizedDimension)
    return 0  # OHWI convolutions and [out, in] fully-connected weights


def _type_ids() -> dict[str, int]:
    from ai_edge_litert import schema_py_generated as schema

    return {k: v for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
