"""BatchNormalization folded into the convolution or dense layer before it, in the Keras model.

The TFLite converter folds an inference-mode BatchNorm into the preceding layer's weights
(w * gamma / sqrt(var + eps)) while converting. A recipe that puts the weights on a quantization
grid before conversion (``qat_int4``) must fold first: folding afterwards scales every output
channel and moves the weights off the grid they were fine-tuned on.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from runner.errors import RunnerError

# the layers a following BatchNorm folds into (their output channels on the last axis)
FOLDS_INTO = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")


def fold_batch_norm(model, probe: np.ndarray | None = None):
    """A functional copy of ``model`` (tf_keras) with every foldable BatchNorm folded.

    A BatchNorm folds when it is the only reader of a Conv1D/Conv2D/DepthwiseConv2D/Dense with a
    linear activation and normalizes the last axis. Returns ``(model, folded names)``; the model
    itself when nothing folds. With ``probe`` (model-ready inputs) the copy's outputs are checked
    against the original's.

    Raises:
        RunnerError: the folded copy's outputs differ from the model's on ``probe``.
    """
    import tf_keras as keras

    if isinstance(model, keras.Sequential):
        inputs = keras.Input(batch_shape=model.input_shape)
        x = inputs
        for layer in model.layers:
            x = layer(x)
        model = keras.Model(inputs, x, name=model.name)
    cfg = model.get_config()
    layers = {layer.name: layer for layer in model.layers}
    pairs = _foldable(cfg, layers)
    if not pairs:
        return model, []
    folded = keras.Model.from_config(_rewired(cfg, pairs), custom_objects=_custom_objects(model))
    for layer in folded.layers:
        source = layers[layer.name]
        bn = next((layers[b] for b, c in pairs.items() if c == layer.name), None)
        layer.set_weights(_fold(source, bn) if bn is not None else source.get_weights())
    if probe is not None:
        want = np.asarray(model(probe[:64], training=False))
        got = np.asarray(folded(probe[:64], training=False))
        diff = float(np.max(np.abs(want - got)))
        if diff > 1e-4 * max(1.0, float(np.max(np.abs(want)))):
            raise RunnerError(
                f"folding {len(pairs)} BatchNorm layer(s) into their convolutions changed the "
                f"model's outputs by {diff:.3g}; this model cannot be folded for this recipe"
            )
    return folded, sorted(pairs)


def _inbound(layer_cfg: dict[str, Any]) -> list[str]:
    return [entry[0] for node in layer_cfg.get("inbound_nodes", []) for entry in node]


def _foldable(cfg: dict[str, Any], layers: dict[str, Any]) -> dict[str, str]:
    """{BatchNorm name: the layer it folds into}."""
    readers = Counter(name for lc in cfg["layers"] for name in _inbound(lc))
    outputs = {entry[0] for entry in cfg.get("output_layers", [])}
    pairs = {}
    for lc in cfg["layers"]:
        if lc["class_name"] != "BatchNormalization" or len(lc.get("inbound_nodes", [])) != 1:
            continue
        sources = _inbound(lc)
        bn = layers[lc["config"]["name"]]
        if len(sources) != 1 or sources[0] in outputs or readers[sources[0]] != 1:
            continue
        source = layers[sources[0]]
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        rank = len(source.output_shape) if hasattr(source, "output_shape") else None
        last = axis is not None and rank is not None and axis in (-1, rank - 1)
        linear = getattr(getattr(source, "activation", None), "__name__", "") == "linear"
        if type(source).__name__ in FOLDS_INTO and linear and last:
            pairs[bn.name] = source.name
    return pairs


def _rewired(cfg: dict[str, Any], pairs: dict[str, str]) -> dict[str, Any]:
    """The config without the folded BatchNorms: their readers read the conv, which gets a bias."""
    import copy

    cfg = copy.deepcopy(cfg)
    into = set(pairs.values())
    kept = []
    for lc in cfg["layers"]:
        if lc["config"]["name"] in pairs:
            continue
        if lc["config"]["name"] in into:
            lc["config"]["use_bias"] = True
        for node in lc.get("inbound_nodes", []):
            for entry in node:
                entry[0] = pairs.get(entry[0], entry[0])
        kept.append(lc)
    cfg["layers"] = kept
    for entry in cfg.get("output_layers", []):
        entry[0] = pairs.get(entry[0], entry[0])
    return cfg


def _fold(layer, bn) -> list[np.ndarray]:
    """``layer``'s kernel and bias with ``bn`` (inference mode) folded in."""
    gamma = np.asarray(bn.gamma) if bn.scale else 1.0
    beta = np.asarray(bn.beta) if bn.center else 0.0
    mean, var = np.asarray(bn.moving_mean), np.asarray(bn.moving_variance)
    s = gamma / np.sqrt(var + bn.epsilon)
    weights = layer.get_weights()
    kernel = weights[0]
    bias = weights[1] if len(weights) > 1 else np.zeros_like(mean)
    if type(layer).__name__ == "DepthwiseConv2D":  # (h, w, channels, multiplier)
        kernel = kernel * np.reshape(s, kernel.shape[2:])
    else:  # output channels last
        kernel = kernel * s
    return [kernel.astype(np.float32), ((bias - mean) * s + beta).astype(np.float32)]


def _custom_objects(model) -> dict[str, Any]:
    """The model's own layer classes, by name (a flattened graph's operation layers)."""
    return {type(layer).__name__: type(layer) for layer in model.layers}
