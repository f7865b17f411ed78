"""Making a float model quantization-aware (tensorflow-model-optimization): which layers are
annotated, the annotated clone with the float weights, and the quantizers' starting ranges.
The QAT recipe (:mod:`runner.recipes.qat`) fine-tunes and exports what this builds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from runner.errors import RunnerError
from runner.models.qat_scope import (
    conv1d_quantize_config,
    load_scope,
    tfmot_module,
)
from runner.recipes.base import check_layer_names
from runner.recipes.qat.scheme import mended_scheme
from runner.recipes.recurrent import RECURRENT

log = logging.getLogger(__name__)

# BatchNormalization folds into the conv/dense before it (tfmot's transforms); elsewhere it cannot.
_BN_FOLDS_INTO = ("Conv2D", "DepthwiseConv2D", "Dense")
# Layers tfmot's 8-bit registry leaves out whose int8 TFLite kernels are elementwise or affine
# (MUL, SUB, MAXIMUM, MUL+ADD, a standalone BatchNorm's scale and shift, LayerNorm's normalized
# output): the int8 file quantizes their output, so their fake quantizer is an output one.
_OUTPUT_ONLY = (
    "Multiply",
    "Subtract",
    "Maximum",
    "Minimum",
    "Average",
    "Rescaling",
    "Normalization",
    "LayerNormalization",
    "BatchNormalization",
)
# TFLite's int8 average pooling keeps its input's scale: a fake quantizer of its own on the output
# (tfmot's default) makes the converter refuse the file ("violate the same scale constraint")
_SAME_SCALE = ("AveragePooling1D", "AveragePooling2D")
# activations tfmot's Activation config knows (others raise inside tfmot)
_TFMOT_ACTIVATIONS = ("relu", "swish", "gelu", "relu6", "linear", "softmax", "sigmoid", "tanh")


def _inbound_classes(layer) -> list[str]:
    out = []
    for node in getattr(layer, "_inbound_nodes", []):
        for inbound in (
            node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]
        ):
            out.append(type(inbound).__name__)
    return out


def plan_annotation(
    model, skip_layers: Sequence[str] = ()
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Which layers get fake quantization, and which stay float.

    Returns:
        ({layer name: QuantizeConfig or None (tfmot's default)}, [(name, class) left in float]).

    Raises:
        RunnerError: a recurrent layer (tfmot cannot quantization-aware-train LSTM/GRU) or a
            name in ``skip_layers`` the model does not have.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    check_layer_names(model, skip_layers, "recipe.skip_layers")
    plan: dict[str, Any] = {}
    floats: list[tuple[str, str]] = []
    conv1d = conv1d_quantize_config()
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue
        if cls in RECURRENT:
            raise RunnerError(
                f"layer {layer.name!r} ({cls}) cannot be quantization-aware-trained: tensorflow-model-optimization has no "
                "8-bit scheme for recurrent layers; use recipe=full_integer (post-training) for this model"
            )
        keep_float, config = _layer_plan(layer, cls, skip_layers, registry, conv1d)
        if keep_float:
            floats.append((layer.name, cls))
        else:
            plan[layer.name] = config
    return plan, floats


def _layer_plan(layer, cls: str, skip_layers, registry, conv1d) -> tuple[bool, Any]:
    """(stays float?, its QuantizeConfig or None for tfmot's default) for one layer."""
    inbound = _inbound_classes(layer)
    if layer.name in skip_layers:
        return True, None
    if cls == "BatchNormalization" and any(c in _BN_FOLDS_INTO for c in inbound):
        return False, None
    if cls == "Conv1D":
        return False, conv1d()
    if cls in _OUTPUT_ONLY and "InputLayer" in inbound:
        # it reads the raw model input (features of very different scales): quantizing it
        # would put an int8 quantizer on that input; it stays float (qat_mixed keeps it so)
        return True, None
    if cls in _OUTPUT_ONLY or (cls == "Activation" and not _tfmot_activation(layer)):
        return False, output_only_config()
    if cls in _SAME_SCALE:
        return False, output_only_config(quantize_output=False)
    return (False, None) if registry.supports(layer) else (True, None)


def _tfmot_activation(layer) -> bool:
    return getattr(layer.activation, "__name__", None) in _TFMOT_ACTIVATIONS


def output_only_config(quantize_output: bool = True):
    """tfmot's own 8-bit config with no weight or activation quantizer, only the output's (or
    none); it saves and loads inside ``quantize_scope``."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    return default_8bit_quantize_registry.Default8BitQuantizeConfig([], [], quantize_output)


def quantize_aware(
    model,
    skip_layers: Sequence[str] = (),
    fallback: bool = True,
    freeze_batch_norm: bool = False,
    scheme: Any = None,
):
    """A QAT copy of ``model``: supported layers wrapped, the rest left in float; ``scheme``:
    a tfmot quantization scheme (the collaborative ones keep zeros and clusters).

    ``freeze_batch_norm`` keeps every BatchNormalization in inference mode while fine-tuning:
    its moving statistics (what the converter folds into the int8 weights) stay those of the
    float model instead of drifting with a few hundred small fake-quantized batches.

    Raises:
        RunnerError: a layer that cannot be quantized when ``fallback`` is off, naming the layer,
            its class and the fix.
    """
    import tf_keras as keras

    tfmot = tfmot_module()
    plan, floats = plan_annotation(model, skip_layers)
    # an Embedding, and a normalization reading the raw input, stay float by design
    unexpected = [
        (n, c) for n, c in floats if n not in skip_layers and c not in ("Embedding", *_OUTPUT_ONLY)
    ]
    if unexpected and not fallback:
        name, cls = unexpected[0]
        raise RunnerError(
            f"layer {name!r} ({cls}) is not supported by tensorflow-model-optimization's 8-bit QAT scheme; "
            f"add it to recipe.skip_layers=[{name}] to keep it in float, or set recipe.fallback=true"
        )
    if floats:
        log.info(
            "QAT leaves %d layer(s) in float: %s",
            len(floats),
            ", ".join(f"{n} ({c})" for n, c in floats),
        )
    if not plan:
        raise RunnerError("no layer of this model can be quantization-aware-trained")

    def annotate(layer):
        clone = layer.__class__.from_config(config_with_state(layer))
        if freeze_batch_norm and type(layer).__name__ == "BatchNormalization":
            clone.trainable = False  # tf-keras runs a non-trainable BatchNorm in inference mode
        if layer.name not in plan:
            return clone
        return tfmot.quantization.keras.quantize_annotate_layer(
            clone, quantize_config=plan[layer.name]
        )

    annotated = keras.models.clone_model(model, clone_function=annotate)
    copy_weights_by_name(model, annotated)
    with load_scope():
        try:
            apply = tfmot.quantization.keras.quantize_apply
            return apply(annotated, mended_scheme(scheme)), floats
        except (ValueError, RuntimeError, TypeError) as e:
            raise RunnerError(
                f"tensorflow-model-optimization could not apply QAT: {' '.join(str(e).split())[:300]}"
            ) from None


def qat_ready(model, x):
    """``model`` in layers tfmot can wrap: nested sub-models flattened, ``TFOpLambda``
    arithmetic and ConvNeXt's ``LayerScale`` as layers, separable convolutions split (the model
    itself when it has none, or when an operation has no layer twin and nothing is nested:
    tfmot leaves it float), checked to give the same outputs on ``x`` (model-ready calibration
    inputs).

    Raises:
        RunnerError: a nested model holding an operation with no layer twin, or a rebuilt model
            that does not match.
    """
    import numpy as np

    from runner.models.tf_keras_graph import flatten_tf_keras

    try:
        flat = flatten_tf_keras(model)
    except RunnerError as e:
        if any(hasattr(layer, "layers") for layer in model.layers):
            raise  # a nested model tfmot cannot wrap either way: the operation is named
        # an operation with no layer twin stays a TFOpLambda, which tfmot leaves float
        log.info("QAT: the model is wrapped as it is (%s)", e)
        return model
    if flat is model:
        return model
    probe = np.asarray(x[:64])
    want = np.asarray(model.predict(probe, verbose=0))
    diff = float(np.max(np.abs(want - np.asarray(flat.predict(probe, verbose=0)))))
    if diff > 1e-5 * max(1.0, float(np.max(np.abs(want)))):
        raise RunnerError(
            f"the model rebuilt for QAT (sub-models flattened, operations as layers, separable "
            f"convolutions split) differs "
            f"from it by {diff:.3g} on {len(probe)} calibration inputs; keep it float with "
            "recipe=full_integer, or build it without nested models and tf.* operations"
        )
    log.info(
        "QAT: %d layers rebuilt as %d (sub-models flattened, operations as layers, separable "
        "convolutions split), "
        "max |diff| %.2g on %d inputs",
        len(model.layers),
        len(flat.layers),
        diff,
        len(probe),
    )
    return flat


def config_with_state(layer) -> dict[str, Any]:
    """``layer.get_config()``, plus the state a clone would lose: an adapted Normalization keeps
    its mean and variance outside its config (a clone of it normalizes with nothing)."""
    import numpy as np

    cfg = layer.get_config()
    if type(layer).__name__ == "Normalization" and cfg.get("mean") is None and layer.built:
        cfg = {
            **cfg,
            "mean": np.asarray(layer.adapt_mean).tolist(),
            "variance": np.asarray(layer.adapt_variance).tolist(),
        }
    return cfg


def copy_weights_by_name(source, target) -> None:
    """Copy each layer's weights to the same-named layer (one whose state went into its config
    has no weights left to copy)."""
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        inner = getattr(layer, "layer", layer)  # a quantize-annotated layer wraps the original
        src = by_name.get(inner.name)
        mine = layer.get_weights()
        if (
            src is not None
            and mine
            and [w.shape for w in mine] == [w.shape for w in src.get_weights()]
        ):
            layer.set_weights(src.get_weights())
