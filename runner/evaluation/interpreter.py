"""A ``.tflite`` file in the LiteRT interpreter: fed the data's raw inputs (scaled and
quantized as the file's input wants), batched where its shape allows, its outputs dequantized,
and its single-invoke latency timed. What every score of a file is measured with."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from runner.data import Scaling

log = logging.getLogger(__name__)


class TFLiteModel:
    """A ``.tflite`` file in the LiteRT interpreter, fed raw (uint8 / token id) inputs."""

    def __init__(
        self, path: str | Path | None = None, num_threads: int = 1, content: bytes | None = None
    ) -> None:
        """Load ``path``, or a flatbuffer held in memory (``content``)."""
        from ai_edge_litert.interpreter import Interpreter

        from runner.console import filtered

        self.path = Path(path) if path is not None else Path("<in memory>.tflite")
        self.num_threads = num_threads
        with filtered():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self._interp = (
                Interpreter(model_content=content, num_threads=num_threads)
                if content is not None
                else Interpreter(model_path=str(self.path), num_threads=num_threads)
            )
            self._interp.allocate_tensors()
        self.input = self._interp.get_input_details()[0]
        self.output = self._interp.get_output_details()[0]
        sig = self.input.get("shape_signature", self.input["shape"])
        # A dynamic batch (-1) can be resized; a fixed one (e.g. a fused LSTM) is fed in its own size.
        self.fixed_batch = int(sig[0]) if int(sig[0]) > 0 else None
        self._batch = int(self.input["shape"][0])

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input["dtype"])

    def prepare(self, x_raw: np.ndarray, scaling: Scaling) -> np.ndarray:
        """Scale raw inputs, then quantize them if the model takes quantized integers."""
        dtype = self.input_dtype
        x = scaling(x_raw)
        scale, zero_point = self.input["quantization"]
        if np.issubdtype(dtype, np.integer) and scale:
            # a quantized input: real values (also raw uint8 pixels under input_scaling=none,
            # for a model that rescales inside) become the tensor's integers
            info = np.iinfo(dtype)
            q = np.rint(np.asarray(x, np.float32) / np.float32(scale) + zero_point)
            return np.clip(q, info.min, info.max).astype(dtype)
        return np.asarray(x, dtype=dtype)

    def _dequantize(self, out: np.ndarray) -> np.ndarray:
        scale, zero_point = self.output["quantization"]
        if np.issubdtype(out.dtype, np.integer) and scale:
            return (out.astype(np.float32) - zero_point) * np.float32(scale)
        return out.astype(np.float32, copy=False)

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self._interp.resize_tensor_input(
                self.input["index"], [n, *self.input["shape"][1:]], strict=True
            )
            self._interp.allocate_tensors()
            self._batch = n

    def invoke(self, x: np.ndarray) -> np.ndarray:
        """Run one prepared batch whose size the interpreter already has."""
        self._interp.set_tensor(self.input["index"], x)
        self._interp.invoke()
        return self._interp.get_tensor(self.output["index"])

    def predict(
        self, x_raw: np.ndarray, scaling: Scaling, batch_size: int = 128, progress: bool = False
    ) -> np.ndarray:
        """Dequantized outputs for every sample of ``x_raw``."""
        n = len(x_raw)
        bs = self.fixed_batch or max(1, min(batch_size, n, batch_cap(x_raw)))
        if self.fixed_batch is None:
            try:
                self._resize(bs)
            except (RuntimeError, ValueError) as e:  # input not resizable after all: one at a time
                log.info(
                    "%s: cannot resize input to %d (%s); evaluating one sample at a time",
                    self.path.name,
                    bs,
                    e,
                )
                # the failed resize is half-applied: put the file's own batch back
                self.fixed_batch = bs = int(self.input["shape"][0])
                self._interp.resize_tensor_input(
                    self.input["index"], list(self.input["shape"]), strict=True
                )
                self._interp.allocate_tensors()
                self._batch = bs
        outs = []
        for start in _progress(range(0, n, bs), progress and n > 20 * bs, f"eval {self.path.name}"):
            chunk = x_raw[start : start + bs]
            real = len(chunk)
            if real < bs:
                if self.fixed_batch is None:
                    self._resize(real)
                else:  # pad a fixed-batch model's last batch
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - real, axis=0)])
            # get_tensor returns a copy, so the slice can be kept as it is
            outs.append(self._dequantize(self.invoke(self.prepare(chunk, scaling)))[:real])
        return np.concatenate(outs) if outs else np.empty((0,), np.float32)

    def latencies(
        self, x_raw: np.ndarray, scaling: Scaling, warmup: int, samples: int
    ) -> list[float]:
        """Single-invoke latency in ms over ``samples`` inputs (after ``warmup`` untimed runs).

        A dynamic-batch model is timed at batch 1; a fixed-batch model at its own batch.
        """
        bs = self.fixed_batch or 1
        if self.fixed_batch is None:
            self._resize(1)
        idx = np.arange(max(samples, 1)) % len(x_raw)
        prepared = [self.prepare(np.repeat(x_raw[i : i + 1], bs, axis=0), scaling) for i in idx]
        for x in prepared[:warmup]:
            self.invoke(x)
        times = []
        for x in prepared[:samples]:
            self._interp.set_tensor(self.input["index"], x)
            t0 = time.perf_counter()
            self._interp.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        return times


# The interpreter holds every intermediate tensor of a batch at once: a batch is capped at this
# many input values (13 images of 224x224x3, 128 CIFAR images), which kept MobileNetV2 at 224x224
# to a few hundred MB where a batch of 128 took +0.9 GB, at the same images per second.
BATCH_VALUES = 1 << 21


def batch_cap(x_raw: np.ndarray) -> int:
    """The most samples of ``x_raw``'s shape one batch may hold (see :data:`BATCH_VALUES`)."""
    per_sample = int(np.prod(x_raw.shape[1:])) if x_raw.ndim > 1 else 1
    return max(1, BATCH_VALUES // max(per_sample, 1))


def _progress(it: range, enabled: bool, desc: str) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="batch", leave=False, disable=None)  # None: only on a terminal
