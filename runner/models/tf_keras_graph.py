"""tf_keras models in layers tensorflow-model-optimization can wrap: nested sub-models flattened,
``TFOpLambda`` arithmetic and ConvNeXt's ``LayerScale`` as layers. A tf_keras config is put in
the Keras 3 layout and rebuilt by the same walker that translates Keras 3 models
(:mod:`runner.models.keras3`)."""

from __future__ import annotations

from typing import Any

from runner.errors import RunnerError
from runner.models.keras3 import _NESTED, _SPELLED, _name, _rebuild, _Translator
from runner.models.keras3_layers import TENSOR, activation_name

# What the rebuild rewrites; a model with none of them is returned as it is
_REWRITTEN = (*_NESTED, "TFOpLambda", "LayerScale", "SeparableConv2D")


def flatten_tf_keras(model: Any) -> Any:
    """A tf_keras model with what tensorflow-model-optimization refuses rewritten, or the model
    itself when it has none: sub-models flattened, ``TFOpLambda`` arithmetic (``x + 3.0``,
    ``x * y``: tf_keras's MobileNetV3, ConvNeXt) as layers, ConvNeXt's ``LayerScale`` as a
    depthwise 1x1 convolution, a ``SeparableConv2D`` (NASNet, Xception) as its depthwise and 1x1
    halves. The caller checks the outputs match on real inputs.

    Raises:
        RunnerError: an operation with no layer twin, named (one line).
    """
    cfg = model.get_config()
    if not any(e["class_name"] in _REWRITTEN for e in cfg.get("layers", [])):
        return model
    return _rebuild(model, _from_tf_keras_model(cfg), _QATTranslator)


class _QATTranslator(_Translator):
    """The walker, with separable convolutions split in two for QAT."""

    def call(self, entry: dict, args: list, kwargs: dict, scope: tuple) -> Any:
        if entry["class_name"] == "SeparableConv2D":
            return self.separable(entry, args[0], scope)
        return super().call(entry, args, kwargs, scope)

    def separable(self, entry: dict, x: Any, scope: tuple) -> Any:
        """A separable convolution as its two halves, a depthwise convolution then a 1x1 one
        (what the converter writes, and what tfmot quantizes): each half is a layer of its own
        whose output range is calibrated; the 1x1 half keeps the name, so a BatchNorm after it
        still folds."""
        c, name = entry["config"], _name(entry)
        L = self.tk.layers  # noqa: N806
        act = activation_name(c.get("activation")) or "linear"
        depthwise = L.DepthwiseConv2D(
            c["kernel_size"],
            strides=c["strides"],
            padding=c["padding"],
            depth_multiplier=c["depth_multiplier"],
            data_format=c.get("data_format"),
            dilation_rate=c["dilation_rate"],
            use_bias=False,
            name=self.unique(f"{name}_depthwise"),
        )
        pointwise = L.Conv2D(
            c["filters"],
            1,
            data_format=c.get("data_format"),
            activation="linear" if act in _SPELLED else act,
            use_bias=c["use_bias"],
            name=self.unique(name),
        )
        path = (*scope, name)
        self.weights.append((path, depthwise, lambda w: [w[0]]))
        self.weights.append((path, pointwise, lambda w: list(w[1:])))
        out = pointwise(depthwise(x))
        return self.spelled(act, self.unique(f"{name}_{act}"))(out) if act in _SPELLED else out


# tf_keras's TFOpLambda functions that are arithmetic, as the Keras 3 operation they equal
_TF_OPS = {
    "__operators__.add": "Add",
    "math.add": "Add",
    "math.subtract": "Subtract",
    "__operators__.sub": "Subtract",
    "math.multiply": "Multiply",
    "__operators__.mul": "Multiply",
    "math.truediv": "TrueDivide",
    "math.divide": "TrueDivide",
}


def _from_tf_keras_model(cfg: dict) -> dict:
    """A tf_keras model config in the Keras 3 layout the translator reads."""
    out = {**cfg, "layers": [_from_tf_keras(e) for e in cfg["layers"]]}
    return out


def _from_tf_keras(entry: dict) -> dict:
    cls, config = entry["class_name"], entry.get("config", {})
    out = {**entry, "module": "keras.layers"}
    if cls in _NESTED:
        inner = _from_tf_keras_model(config)
        first = (config.get("layers") or [{}])[0].get("class_name")
        # tf_keras counts a nested model's own construction as its node 0
        out.update(
            module="keras",
            config=inner,
            node_offset=int(cls != "Sequential" or first == "InputLayer"),
        )
    elif cls == "TFOpLambda":
        fn = config.get("function")
        if fn not in _TF_OPS:
            raise RunnerError(
                f"layer {entry['name']!r} (TFOpLambda: tf.{fn}) has no layer twin; write it as a "
                "Keras layer to quantization-aware-train this model"
            )
        out.update(module="keras.src.ops.numpy", class_name=_TF_OPS[fn])
    elif cls == "LayerScale":
        out["module"] = "keras.src.applications.convnext"
    if cls == "InputLayer":
        return out
    out["inbound_nodes"] = [
        _tf_keras_node(node, cls == "TFOpLambda") for node in entry.get("inbound_nodes", [])
    ]
    return out


def _tf_keras_ref(ref: Any) -> Any:
    """``[layer, node, tensor]`` (a tf_keras inbound reference) as a Keras 3 tensor dict."""
    if isinstance(ref, list) and len(ref) >= 3 and isinstance(ref[0], str):
        return {"class_name": TENSOR, "config": {"keras_history": list(ref[:3])}}
    return ref


def _tf_keras_node(node: list, op: bool) -> dict:
    if node and isinstance(node[0], str):  # a TFOpLambda's node is its one reference
        node = [node]
    refs = [_tf_keras_ref(r) for r in node]
    kwargs = dict(node[0][3]) if node and len(node[0]) > 3 and isinstance(node[0][3], dict) else {}
    kwargs = {k: _tf_keras_ref(v) for k, v in kwargs.items() if k != "name"}
    if op:  # TFOpLambda: x is the inbound tensor, y a tensor or a number
        return {"args": [refs[0], kwargs.pop("y", None)], "kwargs": {}}
    return {"args": [refs[0]] if len(refs) == 1 else [refs], "kwargs": kwargs}
