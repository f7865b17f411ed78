"""A bare SavedModel (``model.export()``, ``tf.saved_model.save``) used through its signature.

It has no Keras layer graph: post-training recipes convert it with
``TFLiteConverter.from_saved_model``, and the float model is scored by calling the signature.
Recipes that need a Keras graph (QAT, the layer report, selective, auto_int8) say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import RunnerError

NEEDS_KERAS = (
    "{path} is a SavedModel without a Keras graph; recipe {recipe} needs one: pass the .keras or "
    ".h5 file it was exported from"
)


@dataclass
class _Input:
    """What the runner reads of a model input (``model.inputs[0].dtype.as_numpy_dtype``)."""

    dtype: Any
    name: str


def signature_input_shape(path: Path) -> tuple[int | None, ...] | None:
    """The serving signature's input shape without the batch axis, read from ``saved_model.pb``
    alone (no variable is restored); None when the folder does not say."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    for graph in proto.meta_graphs:
        sigs = {k: v for k, v in graph.signature_def.items() if not k.startswith("__")}
        sig = sigs.get("serving_default") or (next(iter(sigs.values())) if len(sigs) == 1 else None)
        if sig is not None and len(sig.inputs) == 1:
            (spec,) = sig.inputs.values()
            dims = [int(d.size) for d in spec.tensor_shape.dim]
            return tuple(None if d < 0 else d for d in dims[1:])
    return None


class SavedModelSource:
    """A SavedModel's serving signature, with the few attributes the runner reads of a model."""

    layers: tuple = ()  # no Keras layers: no Embedding or recurrent layer to inspect

    def __init__(self, path: Path, signature: str | None = None) -> None:
        import tensorflow as tf

        self.path = Path(path)
        self.name = self.path.name
        loaded = tf.saved_model.load(str(self.path))
        sigs = dict(getattr(loaded, "signatures", {}) or {})
        key = signature or ("serving_default" if "serving_default" in sigs else None)
        if key is None and len(sigs) == 1:
            key = next(iter(sigs))
        if key is None or key not in sigs:
            raise RunnerError(
                f"{self.path} has no serving signature (found: {sorted(sigs) or 'none'}); save it "
                "with model.export(path) or tf.saved_model.save(model, path, signatures=...)"
            )
        self.signature_key = key
        self._loaded = loaded  # keeps the variables alive
        self._fn = sigs[key]
        _, kwargs = self._fn.structured_input_signature
        outputs = self._fn.structured_outputs
        if len(kwargs) != 1 or len(outputs) != 1:
            raise RunnerError(
                f"{self.path}'s signature {key!r} has {len(kwargs)} inputs and {len(outputs)} "
                "outputs; the runner takes models with one input and one classification output"
            )
        (self._input_name, spec), (self._output_key, out_spec) = (
            next(iter(kwargs.items())),
            next(iter(outputs.items())),
        )
        self.input_shape = tuple(spec.shape.as_list())
        self.output_shape = tuple(out_spec.shape.as_list())
        self.inputs = [_Input(spec.dtype, self._input_name)]
        self._dtype = spec.dtype

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        import tensorflow as tf

        out = self._fn(**{self._input_name: tf.constant(np.asarray(x), dtype=self._dtype)})
        return out[self._output_key].numpy()

    def predict(self, x: Any, verbose: int = 0, batch_size: int = 128) -> np.ndarray:
        return np.concatenate([self(x[s : s + batch_size]) for s in range(0, len(x), batch_size)])
