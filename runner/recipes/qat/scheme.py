"""tfmot's 8-bit schemes, mended so that the fake-quant model is the file the converter writes:
DepthwiseConv2D kernels fake-quantized per channel (tfmot's per-axis quantizer took the depth
multiplier as its axis), and a Conv2D/DepthwiseConv2D/Dense read directly by a ReLU keeps its
weight quantizer (tfmot's ReLU transforms gave it a no-op config meant for Add, so every conv of
a BatchNorm-folded model fine-tuned in float). Any scheme's own preserving quantizers are kept
(PQAT, CQAT, PCQAT)."""

from __future__ import annotations

from typing import Any

from runner.models.qat_scope import depthwise_quantize_config


def mended_scheme(scheme: Any = None):
    """``scheme`` (tfmot's default 8-bit scheme when None, or one of its prune- or
    cluster-preserving subclasses) with two of its mismatches with the converter mended:

    - DepthwiseConv2D kernels are fake-quantized per channel
      (:func:`runner.models.qat_scope.depthwise_quantize_config`), as the file stores them;
    - a Conv2D/DepthwiseConv2D/Dense read directly by a ReLU keeps its weight quantizer: tfmot's
      ReLU transforms give the layer before the ReLU a no-op config (meant for Add), which
      dropped its *weight* quantizer too, so those kernels fine-tuned in float (every conv of a
      model with its BatchNorms folded, and any conv -> ReLU without BatchNorm). Under a
      preserving scheme that also dropped the quantizer keeping the zeros or clusters: PQAT on
      a pruned Conv2D -> ReLU ended with none of its zeros. The kept quantizer is the scheme's
      own (the preserving one there).
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_layout_transform as layout,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_scheme,
    )

    if scheme is None:
        scheme = default_8bit_quantize_scheme.Default8BitQuantizeScheme()
    registry = scheme.get_quantize_registry()
    own_config = registry.get_quantize_config
    # a preserving registry's weight quantizers, by the config class they go into
    preserving = dict(getattr(registry, "_config_quantizer_map", {}))

    def get_quantize_config(layer):
        if type(layer).__name__ == "DepthwiseConv2D":  # preserving schemes leave it unpreserved
            return depthwise_quantize_config()(["depthwise_kernel"], ["activation"], False)
        return own_config(layer)

    class Layout(layout.Default8BitQuantizeLayoutTransform):
        def apply(self, model, layer_quantize_map):
            return layout.model_transformer.ModelTransformer(
                model, _layout_transforms(preserving), set(layer_quantize_map), layer_quantize_map
            ).transform()

    registry.get_quantize_config = get_quantize_config  # this registry object only
    scheme.get_quantize_registry = lambda: registry
    scheme.get_layout_transformer = Layout
    return scheme


def _layout_transforms(preserving: dict | None = None) -> list:
    """tfmot 0.8.1's default 8-bit layout transforms, in its order, with its two ReLU transforms
    keeping the weight quantizer of a Conv2D/DepthwiseConv2D/Dense before the ReLU
    (``preserving``: a preserving registry's weight quantizer per config class name)."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_transforms as t,
    )

    def weights_kept(base):
        class WeightsKept(base):
            def replacement(self, match_layer):
                source = match_layer.input_layers[0]
                if source.layer["class_name"] not in KEPT:  # Add: nothing between it and the ReLU
                    return super().replacement(match_layer)
                source.metadata["quantize_config"] = _weights_only_config(
                    source.layer["class_name"], preserving
                )
                return match_layer

            def custom_objects(self):
                configs = [_weights_only_config(name) for name in KEPT]
                return {**super().custom_objects(), **{type(c).__name__: type(c) for c in configs}}

        return WeightsKept()

    return [
        t.InputLayerQuantize(),
        t.SeparableConv1DQuantize(),
        t.SeparableConvQuantize(),
        t.Conv2DReshapeBatchNormReLUQuantize(),
        t.Conv2DReshapeBatchNormActivationQuantize(),
        t.Conv2DBatchNormReLUQuantize(),
        t.Conv2DBatchNormActivationQuantize(),
        t.Conv2DReshapeBatchNormQuantize(),
        t.Conv2DBatchNormQuantize(),
        t.ConcatTransform6Inputs(),
        t.ConcatTransform5Inputs(),
        t.ConcatTransform4Inputs(),
        t.ConcatTransform3Inputs(),
        t.ConcatTransform(),
        t.DenseBatchNormQuantize(),
        t.DenseBatchNormReLUQuantize(),
        t.DenseBatchNormActivationQuantize(),
        weights_kept(t.LayerReLUQuantize),
        weights_kept(t.LayerReluActivationQuantize),
    ]


KEPT = ("Conv2D", "DepthwiseConv2D", "Dense")  # keep their kernel's quantizer before a ReLU


def _weights_only_config(class_name: str, preserving: dict | None = None):
    """A config quantizing the kernel of a ``KEPT`` layer only (its output is the ReLU's), with
    the preserving registry's weight quantizer for its config class when there is one
    (DepthwiseConv2D has none: the preserving schemes leave it unpreserved)."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as d8,
    )

    if class_name == "DepthwiseConv2D":
        return depthwise_quantize_config()(["depthwise_kernel"], [], False)
    if class_name == "Conv2D":
        config = d8.Default8BitConvQuantizeConfig(["kernel"], [], False)
    else:  # Dense
        config = d8.Default8BitQuantizeConfig(["kernel"], [], False)
    if preserving and type(config).__name__ in preserving:
        config.weight_quantizer = preserving[type(config).__name__]
    return config
