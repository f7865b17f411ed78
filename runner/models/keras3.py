"""Keras 3 models in: loaded by Keras 3, translated into an equal tf_keras model.

``pip install tensorflow`` has given Keras 3 since TF 2.16, so most users' files are Keras 3
files; tensorflow-model-optimization (QAT) and this runner's converter path need tf_keras
(Keras 2). The translation rebuilds the model layer by layer from its Keras 3 config (the same
classes exist in both) and copies every layer's weights; the caller checks that the outputs match
on real inputs before the twin is used for anything.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from runner.errors import RunnerError

log = logging.getLogger(__name__)

_TENSOR = "__keras_tensor__"


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


def translate(model: Any) -> Any:
    """An equal tf_keras model: the same layers (by class and config), wiring and weights.

    Raises:
        RunnerError: a layer with no tf_keras twin, or an option tf_keras does not have,
            named with its class (one line).
    """
    import tf_keras as tk

    cfg = model.get_config()
    if type(model).__name__ == "Sequential":
        twin = _sequential(cfg, tk)
    elif "input_layers" in cfg and "layers" in cfg:
        twin = _functional(cfg, tk)
    else:
        raise RunnerError(
            f"model {model.name!r} is a subclassed Keras 3 model ({type(model).__name__}), which "
            "has no layer graph to translate; rebuild it with the functional API or "
            "keras.Sequential, or pass the SavedModel from model.export(path) (post-training "
            "recipes only)"
        )
    _copy_weights(model, twin)
    return twin


def _sequential(cfg: dict, tk: Any) -> Any:
    layers = list(cfg["layers"])
    if layers and layers[0]["class_name"] == "InputLayer":
        first = layers.pop(0)["config"]
        shape, dtype = first.get("batch_shape"), first.get("dtype", "float32")
    else:
        shape, dtype = cfg.get("build_input_shape"), "float32"
    if shape is None:
        raise RunnerError(
            "the Keras 3 Sequential model was never built (no input shape); call it once or add "
            "keras.Input(shape) before saving"
        )
    inp = tk.Input(batch_shape=tuple(shape), dtype=dtype, name="input")
    return tk.Sequential([inp, *(_layer(e, tk) for e in layers)], name=cfg.get("name"))


def _functional(cfg: dict, tk: Any) -> Any:
    ins, outs = _refs(cfg["input_layers"]), _refs(cfg["output_layers"])
    if len(ins) != 1 or len(outs) != 1:
        raise RunnerError(
            f"the model has {len(ins)} inputs and {len(outs)} outputs; the runner takes models "
            "with one input and one classification output"
        )
    tensors: dict[tuple[str, int, int], Any] = {}
    for entry in cfg["layers"]:
        name = entry.get("name") or entry["config"]["name"]
        if entry["class_name"] == "InputLayer":
            c = entry["config"]
            t = tk.Input(
                batch_shape=tuple(c["batch_shape"]), dtype=c.get("dtype", "float32"), name=name
            )
            tensors[(name, 0, 0)] = t
            continue
        layer = _layer(entry, tk)
        for node_index, node in enumerate(entry.get("inbound_nodes", [])):
            args = _substitute(node.get("args", []), tensors)
            kwargs = _substitute(node.get("kwargs", {}), tensors)
            out = layer(*args, **kwargs)
            for i, o in enumerate(out if isinstance(out, (list, tuple)) else [out]):
                tensors[(name, node_index, i)] = o
    return tk.Model(tensors[ins[0]], tensors[outs[0]], name=cfg.get("name"))


def _refs(spec: Any) -> list[tuple[str, int, int]]:
    if spec and isinstance(spec[0], str):
        spec = [spec]
    return [(str(s[0]), int(s[1]), int(s[2])) for s in spec]


def _substitute(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, dict):
        if obj.get("class_name") == _TENSOR:
            name, node, index = obj["config"]["keras_history"]
            return tensors[(name, int(node), int(index))]
        return {k: _substitute(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_substitute(v, tensors) for v in obj]
    return obj


def _layer(entry: dict, tk: Any) -> Any:
    """The tf_keras twin of one Keras 3 layer entry (its class, its config translated)."""
    cls_name, config = entry["class_name"], dict(entry["config"])
    name = config.get("name", "?")
    module = str(entry.get("module") or "")
    twin_cls = getattr(tk.layers, cls_name, None)
    if twin_cls is None or (module and not module.startswith("keras")):
        raise RunnerError(
            f"layer {name!r} ({cls_name}) has no tf_keras twin, so this Keras 3 model cannot be "
            "quantization-aware-trained or debugged; post-training recipes still work on the "
            "SavedModel from model.export(path)"
        )
    config = {k: _value(v) for k, v in config.items()}
    accepted = _accepted(twin_cls)
    keras3_defaults = _defaults(entry)
    for key in list(config):
        if accepted is not None and key not in accepted:
            if (
                key in keras3_defaults
                and config[key] == keras3_defaults[key]
                or config[key]
                in (
                    None,
                    False,
                    {},
                    [],
                )
            ):
                del config[key]  # a Keras 3 option left at its default: nothing to carry over
                continue
            raise RunnerError(
                f"layer {name!r} ({cls_name}) sets {key}={config[key]!r}, which tf_keras's "
                f"{cls_name} does not have; the model cannot be translated to tf_keras"
            )
    try:
        return twin_cls.from_config(config)
    except Exception as e:  # noqa: BLE001
        raise RunnerError(
            f"layer {name!r} ({cls_name}) could not be rebuilt in tf_keras: "
            f"{' '.join(str(e).split())[:200]}"
        ) from None


def _value(v: Any) -> Any:
    """Keras 3 config values in tf_keras terms: a DTypePolicy object becomes its name; nested
    objects (initializers, regularizers) lose the Keras 3-only options they leave unset."""
    if isinstance(v, dict) and v.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        return v.get("config", {}).get("name", "float32")
    if isinstance(v, dict) and "class_name" in v and isinstance(v.get("config"), dict):
        inner = {k: _value(x) for k, x in v["config"].items() if x is not None}
        return {**v, "config": inner}
    return v


def _accepted(cls: type) -> set[str] | None:
    """The config keys ``cls`` takes (None: it takes any keyword)."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        keys |= {p.name for p in params if p.kind is not p.VAR_KEYWORD}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return keys
    # every __init__ passes **kwargs up: the base Layer takes these
    return keys | {"name", "dtype", "trainable", "dynamic", "input_dim", "input_shape"}


def _defaults(entry: dict) -> dict[str, Any]:
    """Keras 3's own defaults for the layer's class (so options left at default are dropped)."""
    import keras

    cls = getattr(keras.layers, entry["class_name"], None)
    if cls is None:
        return {}
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.default is not p.empty:
                    out[p.name] = p.default
    return out


def _copy_weights(model: Any, twin: Any) -> None:
    twins = {layer.name: layer for layer in twin.layers}
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        target = twins.get(layer.name)
        mine = target.get_weights() if target is not None else []
        if target is None or [w.shape for w in mine] != [w.shape for w in weights]:
            raise RunnerError(
                f"layer {layer.name!r} ({type(layer).__name__}) holds weights of shapes "
                f"{[w.shape for w in weights]}, but its tf_keras twin "
                f"{[w.shape for w in mine]}; the model cannot be translated to tf_keras"
            )
        target.set_weights(weights)
