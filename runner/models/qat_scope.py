"""What a saved quantization-aware (QAT) model needs to load back: tfmot's scope and our configs.

Kept with the model loader, so loading a QAT model never imports the recipes package.
"""

from __future__ import annotations

import contextlib
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


def custom_objects() -> dict[str, Any]:
    cls = conv1d_quantize_config()
    return {cls.__name__: cls}


@contextlib.contextmanager
def load_scope() -> Iterator[None]:
    """The custom-object scope a saved QAT model needs to load back."""
    with tfmot_module().quantization.keras.quantize_scope(custom_objects()):
        yield
