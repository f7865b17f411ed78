"""What a saved quantization-aware (QAT) model needs to load back: tfmot's scope and our configs.

Kept with the model loader, so loading a QAT model never imports the recipes package.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


def tfmot_module():
    import tensorflow_model_optimization as tfmot

    return tfmot


def conv1d_quantize_config():
    """Conv1D is not in tfmot's default 8-bit registry; this config quantizes it like Conv2D."""
    tfmot = tfmot_module()
    quantizers = tfmot.quantization.keras.quantizers

    class Conv1DQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return [
                (
                    layer.kernel,
                    quantizers.LastValueQuantizer(
                        num_bits=8, symmetric=True, narrow_range=False, per_axis=False
                    ),
                )
            ]

        def get_activations_and_quantizers(self, layer):
            return [
                (
                    layer.activation,
                    quantizers.MovingAverageQuantizer(
                        num_bits=8, symmetric=False, narrow_range=False, per_axis=False
                    ),
                )
            ]

        def set_quantize_weights(self, layer, quantize_weights):
            layer.kernel = quantize_weights[0]

        def set_quantize_activations(self, layer, quantize_activations):
            layer.activation = quantize_activations[0]

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return Conv1DQuantizeConfig


@functools.cache
def depthwise_quantize_config():
    """tfmot's DepthwiseConv2D config with the kernel fake-quantized per channel, as the converter
    quantizes it.

    tfmot's "per-axis" depthwise quantizer takes the kernel's last axis, the depth multiplier (1),
    so it is per-tensor: the converter then writes the QAT file's depthwise weights per-tensor
    too (one scale for every channel, where post-training int8 has one per channel), and
    channels much smaller than the largest lose their weights. This one quantizes each of the
    ``channels x multiplier`` output channels on its own, in TFLite's order (``c * M + m``).
    """
    import tensorflow as tf
    import tf_keras as keras
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantizers as quantizers,
    )

    class DepthwiseWeightsQuantizer(quantizers.Default8BitConvWeightsQuantizer):
        def build(self, tensor_shape, name, layer):
            channels = int(tensor_shape[-2]) * int(tensor_shape[-1])  # (h, w, C, M) -> C*M
            return {
                f"{k}_var": layer.add_weight(
                    f"{name}_{k}",
                    shape=(channels,),
                    initializer=keras.initializers.Constant(v),
                    trainable=False,
                )
                for k, v in (("min", -6.0), ("max", 6.0))
            }

        def __call__(self, inputs, training, weights, **kwargs):
            shape = tf.shape(inputs)
            flat = tf.reshape(inputs, [shape[0], shape[1], 1, -1])  # last axis: C*M channels
            out = quant_ops.LastValueQuantize(
                flat,
                weights["min_var"],
                weights["max_var"],
                is_training=training,
                num_bits=self.num_bits,
                per_channel=True,
                symmetric=self.symmetric,
                narrow_range=self.narrow_range,
            )
            return tf.reshape(out, shape)

    class DepthwiseConvQuantizeConfig(registry.Default8BitConvQuantizeConfig):
        def __init__(self, weight_attrs, activation_attrs, quantize_output):
            super().__init__(weight_attrs, activation_attrs, quantize_output)
            self.weight_quantizer = DepthwiseWeightsQuantizer()

    return DepthwiseConvQuantizeConfig


def custom_objects() -> dict[str, Any]:
    classes = (conv1d_quantize_config(), depthwise_quantize_config())
    return {cls.__name__: cls for cls in classes}


@contextlib.contextmanager
def load_scope() -> Iterator[None]:
    """The custom-object scope a saved QAT model needs to load back."""
    with tfmot_module().quantization.keras.quantize_scope(custom_objects()):
        yield
