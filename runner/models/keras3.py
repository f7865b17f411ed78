"""Keras 3 models in: loaded by Keras 3, translated into an equal tf_keras model.

``pip install tensorflow`` has given Keras 3 since TF 2.16, so most users' files are Keras 3
files; tensorflow-model-optimization (QAT) and this runner's converter path need tf_keras
(Keras 2). The translation rebuilds the model layer by layer from its Keras 3 config (the same
classes exist in both) and copies every layer's weights; the caller checks that the outputs match
on real inputs before the twin is used for anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from runner.errors import RunnerError
from runner.models.keras3_layers import (
    activation_name,
    affine,
    layer_from,
    refs,
    substitute,
)
from runner.models.loaded import LoadedModel, TwinStore, fits

log = logging.getLogger(__name__)


def load(path: Path, safe_mode: bool = True) -> Any:
    """The model as Keras 3 (the ``keras`` package) loads it."""
    import keras

    if getattr(keras, "__version__", "0").split(".")[0] != "3":
        raise RunnerError(
            f"{path} was saved by Keras 3, but the installed `keras` package is "
            f"{keras.__version__}: pip install 'keras>=3'"
        )
    kwargs = {"safe_mode": safe_mode} if path.suffix == ".keras" else {}
    return keras.saving.load_model(path, compile=False, **kwargs)


# Tolerance of a Keras 3 model's tf_keras twin on real inputs (max |difference| of any output).
TWIN_TOLERANCE = 1e-5


def open_keras3(
    p: Path, safe_mode: bool, version: str | None, sample: Any, twins: TwinStore | None
) -> LoadedModel:
    """A Keras 3 file's checked translation: from ``twins`` when kept there, else made now."""

    def cached() -> LoadedModel | None:
        hit = twins.get() if twins is not None else None
        if hit is None:
            return None
        log.info("%s: the tf_keras translation cached for this file (%s)", p.name, hit[1])
        return LoadedModel(hit[0], None, "keras3", hit[1], lambda: load(p, safe_mode))

    found = cached()
    if found is not None or twins is None:
        return found or _translate_keras3(p, safe_mode, version, sample)
    with twins.lock():  # a concurrent job translating it: wait for its twin
        found = cached()
        if found is not None:
            return found
        loaded = _translate_keras3(p, safe_mode, version, sample)
        twins.put(loaded.model, loaded.note)
        return loaded


def _translate_keras3(p: Path, safe_mode: bool, version: str | None, sample: Any) -> LoadedModel:
    import numpy as np

    original = load(p, safe_mode)
    twin = translate(original)
    note = f"translated from Keras {version} to tf_keras"
    # a sample that does not fit the model is the caller's one-line error (load_pretrained)
    if sample is not None and len(sample) and fits(twin.input_shape[1:], np.shape(sample)[1:]):
        diff = max_difference(original, twin, sample)
        if diff >= TWIN_TOLERANCE:
            raise RunnerError(
                f"{p}: the tf_keras translation of this Keras 3 model differs from it by up to "
                f"{diff:.2g} on {len(sample)} real inputs (tolerance {TWIN_TOLERANCE:g}); export "
                "it with model.export(path) and pass that folder (post-training recipes only)"
            )
        note += f" (max |diff| {diff:.1g} on {len(sample)} real inputs)"
    log.info("%s: %s", p.name, note)
    return LoadedModel(twin, original, "keras3", note)


# An eager call holds every layer's activations of its batch: the check runs in batches of at
# most this many input values (one 224x224x3 image; 64 at once took 5.6 GB on MobileNetV2).
CHECK_BATCH_VALUES = 1 << 18


def max_difference(original: Any, twin: Any, sample: Any) -> float:
    """The largest |difference| of the two models' outputs on ``sample``, run in small batches."""
    import numpy as np

    per_sample = int(np.prod(np.shape(sample)[1:])) or 1
    bs = max(1, CHECK_BATCH_VALUES // per_sample)
    most = 0.0
    for s in range(0, len(sample), bs):
        batch = sample[s : s + bs]
        diff = np.asarray(original(batch, training=False)) - np.asarray(twin(batch))
        most = max(most, float(np.max(np.abs(diff))))
    return most


def translate(model: Any) -> Any:
    """An equal tf_keras model: the same layers (by class and config), wiring and weights.

    Nested Sequential/Functional sub-models are flattened into one graph (tensorflow-model-
    optimization cannot quantize a model inside a model); Keras 3 operations recorded as graph
    nodes (``x + 3.0``, ``x * y``) become tf_keras layers; activations tf_keras lacks or computes
    differently (``hard_silu``, ``hard_sigmoid``) are spelled out in layers; the Keras 3
    applications' ``LayerScale`` becomes a depthwise 1x1 convolution.

    Raises:
        RunnerError: a layer with no tf_keras twin, or an option tf_keras does not have,
            named with its class (one line).
    """
    return _rebuild(model, model.get_config())


def _rebuild(model: Any, cfg: dict, translator: type | None = None) -> Any:
    import tf_keras as tk

    if type(model).__name__ not in ("Sequential", "Functional", "Model") or "layers" not in cfg:
        raise RunnerError(
            f"model {model.name!r} is a subclassed Keras 3 model ({type(model).__name__}), which "
            "has no layer graph to translate; rebuild it with the functional API or "
            "keras.Sequential, or pass the SavedModel from model.export(path) (post-training "
            "recipes only)"
        )
    t = (translator or _Translator)(tk)
    if type(model).__name__ == "Sequential":
        inp = t.sequential_input(cfg)
        out = t.sequential(cfg, inp, ())
    else:
        ins, outs = refs(cfg["input_layers"]), refs(cfg["output_layers"])
        if len(ins) != 1 or len(outs) != 1:
            raise RunnerError(
                f"the model has {len(ins)} inputs and {len(outs)} outputs; the runner takes "
                "models with one input and one classification output"
            )
        entry = next(e for e in cfg["layers"] if _name(e) == ins[0][0])
        inp = t.input(entry["config"], ins[0][0])
        out = t.functional(cfg, [inp], ())[0]
    twin = tk.Model(inp, out, name=cfg.get("name"))
    t.copy_weights(model)
    return twin


def _name(entry: dict) -> str:
    return str(entry.get("name") or entry["config"]["name"])


_NESTED = ("Sequential", "Functional", "Model")
# Keras 3 operations saved as graph nodes, by arity: two tensors -> a merge layer; a tensor and
# a number -> Rescaling(scale, offset) (see _affine)
_MERGE = {"Add": "Add", "Subtract": "Subtract", "Multiply": "Multiply"}
# activations tf_keras lacks (hard_silu) or computes differently (hard_sigmoid: 0.2x + 0.5 there,
# relu6(x + 3) / 6 in Keras 3), spelled out in layers tf_keras and TFLite both have
_SPELLED = {"hard_sigmoid", "hard_silu", "hard_swish"}


class _Translator:
    """Builds the tf_keras graph, keeping which Keras 3 layer each twin takes its weights from."""

    def __init__(self, tk: Any) -> None:
        self.tk = tk
        self.built: dict[tuple, Any] = {}  # (scope, Keras 3 name) -> tf_keras layer
        self.names: set[str] = set()
        self.weights: list[tuple[tuple, Any, Any]] = []  # (Keras 3 path, twin, adapter)

    # ---------------------------------------------------------------- graphs
    def input(self, c: dict, name: str) -> Any:
        shape = c.get("batch_shape") or c.get("batch_input_shape")
        return self.tk.Input(
            batch_shape=tuple(shape), dtype=c.get("dtype", "float32"), name=self.unique(name)
        )

    def sequential_input(self, cfg: dict) -> Any:
        layers = cfg["layers"]
        if layers and layers[0]["class_name"] == "InputLayer":
            return self.input(layers[0]["config"], "input")
        shape = cfg.get("build_input_shape")
        if shape is None:
            raise RunnerError(
                "the Keras 3 Sequential model was never built (no input shape); call it once or "
                "add keras.Input(shape) before saving"
            )
        return self.tk.Input(batch_shape=tuple(shape), name=self.unique("input"))

    def sequential(self, cfg: dict, x: Any, scope: tuple) -> Any:
        for entry in cfg["layers"]:
            if entry["class_name"] != "InputLayer":
                x = self.call(entry, [x], {}, scope)
        return x

    def functional(self, cfg: dict, inputs: list, scope: tuple) -> list:
        ins = refs(cfg["input_layers"])
        tensors: dict[tuple[str, int, int], Any] = dict(zip(ins, inputs, strict=False))
        for entry in cfg["layers"]:
            name = _name(entry)
            if entry["class_name"] == "InputLayer":
                continue
            offset = int(entry.get("node_offset", 0))
            for node_index, node in enumerate(entry.get("inbound_nodes", []), start=offset):
                args = substitute(node.get("args", []), tensors)
                kwargs = substitute(node.get("kwargs", {}), tensors)
                out = self.call(entry, args, kwargs, scope)
                for i, o in enumerate(out if isinstance(out, (list, tuple)) else [out]):
                    tensors[(name, node_index, i)] = o
        return [tensors[ref] for ref in refs(cfg["output_layers"])]

    # ---------------------------------------------------------------- one node
    def call(self, entry: dict, args: list, kwargs: dict, scope: tuple) -> Any:
        cls, name = entry["class_name"], _name(entry)
        module = str(entry.get("module") or "")
        if cls in _NESTED and module in ("keras", "keras.models", "keras.src.models"):
            inner, path = entry["config"], (*scope, name)
            if cls == "Sequential":
                return self.sequential(inner, args[0], path)
            return self.functional(inner, list(args), path)[0]
        if module.startswith("keras.src.ops"):
            return self.operation(cls, name, args, scope)
        if cls == "LayerScale" and module.startswith("keras.src.applications"):
            return self.layer_scale(entry, args[0], scope)
        key = (scope, name)
        if key not in self.built:
            self.built[key] = self.layer(entry, scope)
        layer, after = self.built[key]
        out = layer(*args, **kwargs)
        return after(out) if after else out

    def layer(self, entry: dict, scope: tuple) -> tuple[Any, Any]:
        """The twin layer, and the spelled-out activation that follows it (or None)."""
        config = dict(entry["config"])
        name = config.get("name", _name(entry))
        act = activation_name(config.get("activation"))
        after = None
        if act in _SPELLED:
            if entry["class_name"] == "Activation":
                return (lambda x: x), self.spelled(act, self.unique(name))
            config["activation"] = "linear"
            after = self.spelled(act, self.unique(f"{name}_{act}"))
        config["name"] = self.unique(name)
        twin = layer_from({**entry, "config": config}, self.tk)
        self.weights.append(((*scope, name), twin, None))
        return twin, after

    def spelled(self, act: str, name: str) -> Any:
        """hard_sigmoid(x) = relu6(x + 3) / 6; hard_silu(x) = x * hard_sigmoid(x)."""
        L = self.tk.layers  # noqa: N806
        sig = name if act == "hard_sigmoid" else f"{name}_sigmoid"
        shift = L.Rescaling(1.0, 3.0, name=f"{sig}_shift")
        relu6 = L.ReLU(6.0, name=f"{sig}_relu6")
        scale = L.Rescaling(1.0 / 6.0, name=sig)
        if act == "hard_sigmoid":
            return lambda x: scale(relu6(shift(x)))
        mul = L.Multiply(name=name)
        return lambda x: mul([x, scale(relu6(shift(x)))])

    def operation(self, cls: str, name: str, args: list, scope: tuple) -> Any:
        L = self.tk.layers  # noqa: N806
        tensors = [a for a in args if not isinstance(a, (int, float))]
        numbers = [float(a) for a in args if isinstance(a, (int, float))]
        twin_name = self.unique(name if not scope else f"{scope[-1]}_{name}")
        if len(tensors) == 2 and not numbers and cls in _MERGE:
            return getattr(L, _MERGE[cls])(name=twin_name)(tensors)
        scale_shift = (
            affine(cls, numbers[0], isinstance(args[0], (int, float)))
            if len(tensors) == 1 and len(numbers) == 1
            else None
        )
        if scale_shift is not None:
            return L.Rescaling(*scale_shift, name=twin_name)(tensors[0])
        raise RunnerError(
            f"operation {name!r} (keras.ops.{cls.lower()} on {len(tensors)} tensor(s) and "
            f"{len(numbers)} number(s)) has no tf_keras layer twin; write it as a Keras layer "
            "(keras.layers.Add, Multiply, Rescaling) to quantization-aware-train this model"
        )

    def layer_scale(self, entry: dict, x: Any, scope: tuple) -> Any:
        """``x * gamma`` per channel: a depthwise 1x1 convolution (quantizable, int8 in TFLite)."""
        import numpy as np

        name = _name(entry)
        if len(x.shape) != 4:
            raise RunnerError(
                f"layer {name!r} (LayerScale) scales a rank-{len(x.shape)} tensor; only the "
                "image models' rank-4 LayerScale has a tf_keras twin"
            )
        twin = self.tk.layers.DepthwiseConv2D(1, use_bias=False, name=self.unique(name))
        self.weights.append(
            ((*scope, name), twin, lambda w: [np.asarray(w[0]).reshape(1, 1, -1, 1)])
        )
        return twin(x)

    def unique(self, name: str) -> str:
        out, i = name, 1
        while out in self.names:
            out, i = f"{name}_{i}", i + 1
        self.names.add(out)
        return out

    # ---------------------------------------------------------------- weights
    def copy_weights(self, model: Any) -> None:
        for path, twin, adapt in self.weights:
            layer = model
            for part in path:
                layer = layer.get_layer(part)
            weights = layer.get_weights()
            if adapt is not None:
                weights = adapt(weights)
            mine = twin.get_weights()
            if [w.shape for w in mine] != [w.shape for w in weights]:
                raise RunnerError(
                    f"layer {path[-1]!r} ({type(layer).__name__}) holds weights of shapes "
                    f"{[w.shape for w in weights]}, but its tf_keras twin "
                    f"{[w.shape for w in mine]}; the model cannot be translated to tf_keras"
                )
            if weights:
                twin.set_weights(weights)
