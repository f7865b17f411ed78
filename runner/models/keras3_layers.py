"""Keras 3 layer configs as tf_keras layers, one entry at a time: values spelled the tf_keras
way, keys tf_keras does not know dropped, references to other tensors substituted, and the
activations and elementwise operations Keras 3 spells differently worked out. Used by
:mod:`runner.models.keras3`'s translator."""

from __future__ import annotations

import inspect
from typing import Any

from runner.errors import RunnerError

# how a Keras 3 config marks a reference to another layer's output tensor
TENSOR = "__keras_tensor__"


def affine(cls: str, c: float, number_first: bool) -> tuple[float, float] | None:
    """``(scale, offset)`` of ``x op c`` (or ``c op x``), or None where it is not affine."""
    if cls == "Add":
        return 1.0, c
    if cls == "Multiply":
        return c, 0.0
    if cls == "Subtract":
        return (-1.0, c) if number_first else (1.0, -c)
    if cls in ("Divide", "TrueDivide") and not number_first and c != 0:
        return 1.0 / c, 0.0
    return None


def activation_name(act: Any) -> str | None:
    if isinstance(act, dict):  # a serialized function: {"class_name": "function", "config": "gelu"}
        act = act.get("config")
    return act if isinstance(act, str) else None


def refs(spec: Any) -> list[tuple[str, int, int]]:
    if spec and isinstance(spec[0], str):
        spec = [spec]
    return [(str(s[0]), int(s[1]), int(s[2])) for s in spec]


def substitute(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, dict):
        if obj.get("class_name") == TENSOR:
            name, node, index = obj["config"]["keras_history"]
            return tensors[(name, int(node), int(index))]
        return {k: substitute(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [substitute(v, tensors) for v in obj]
    return obj


def layer_from(entry: dict, tk: Any) -> Any:
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
    config = {k: plain_value(v) for k, v in config.items()}
    accepted = accepted_keys(twin_cls)
    keras3_defaults = config_defaults(entry)
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
    if cls_name == "MultiHeadAttention":  # tf_keras builds from the shapes it was built with
        shapes = (entry.get("build_config") or {}).get("shapes_dict") or {}
        query, value = shapes.get("query_shape"), shapes.get("value_shape")
        config["query_shape"], config["value_shape"] = query, value
        config["key_shape"] = shapes.get("key_shape") or value
    try:
        return twin_cls.from_config(config)
    except Exception as e:  # noqa: BLE001
        raise RunnerError(
            f"layer {name!r} ({cls_name}) could not be rebuilt in tf_keras: "
            f"{' '.join(str(e).split())[:200]}"
        ) from None


def plain_value(v: Any) -> Any:
    """Keras 3 config values in tf_keras terms: a DTypePolicy object becomes its name; nested
    objects (initializers, regularizers) lose the Keras 3-only options they leave unset."""
    if isinstance(v, dict) and v.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
        return v.get("config", {}).get("name", "float32")
    if isinstance(v, dict) and "class_name" in v and isinstance(v.get("config"), dict):
        inner = {k: plain_value(x) for k, x in v["config"].items() if x is not None}
        return {**v, "config": inner}
    return v


def accepted_keys(cls: type) -> set[str] | None:
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


def config_defaults(entry: dict) -> dict[str, Any]:
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
