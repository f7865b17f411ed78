"""Layers tfmot's pruning and clustering registries skip, made compressible.

tfmot registers DepthwiseConv2D with no prunable or clusterable weights, so MobileNets' and
EfficientNets' depthwise kernels stay dense under ``prune_low_magnitude`` and
``cluster_weights``. A subclass that declares its kernel through tfmot's ``PrunableLayer`` and
``ClusterableLayer`` interfaces is pruned and clustered like a Conv2D; after stripping, the
plain class comes back (what QAT's registry, the converter and a saved .h5 know).

And the collaborative (prune- and cluster-preserving) QAT schemes, made to leave float the
layers they cannot configure instead of failing on them (:func:`known_layers_only`).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _compressible_depthwise():
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    class CompressibleDepthwiseConv2D(
        keras.layers.DepthwiseConv2D,
        tfmot.sparsity.keras.PrunableLayer,
        tfmot.clustering.keras.ClusterableLayer,
    ):
        """A DepthwiseConv2D whose kernel tfmot prunes and clusters (its registries skip it)."""

        def get_prunable_weights(self):
            return [self.depthwise_kernel]

        def get_clusterable_weights(self):
            return [("depthwise_kernel", self.depthwise_kernel)]

    return CompressibleDepthwiseConv2D


def kind(layer) -> str:
    """A layer's class name, the compressible depthwise subclass named as its base."""
    return type(layer).__name__.removeprefix("Compressible")


def swap_depthwise(model, compressible: bool):
    """A copy of ``model`` (same weights, a fresh graph) whose DepthwiseConv2D layers are the
    compressible subclass (``compressible=True``) or plain again (``False``: what QAT's
    registry, the converter and a saved .h5 know)."""
    import tf_keras as keras

    sub, plain = _compressible_depthwise(), keras.layers.DepthwiseConv2D

    def clone(layer):
        cls = type(layer)
        if compressible and cls is plain:
            cls = sub
        elif not compressible and cls is sub:
            cls = plain
        return cls.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


def known_layers_only(scheme: Any) -> Any:
    """``scheme`` whose registry supports only the layers it can also configure.

    tfmot 0.8's preserving registries call every layer without trainable weights supported,
    then ask the default 8-bit registry for its config, which raises for a layer it does not know
    (``get_quantize_config() called on an unsupported layer ... Rescaling``: every EfficientNet,
    and Keras 3 models that scale their input). Such a layer is left float here, as the plain 8-bit
    scheme leaves it."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as d8,
    )

    registry, default = scheme.get_quantize_registry(), d8.Default8BitQuantizeRegistry()
    preserving = registry.supports

    def supports(layer) -> bool:
        return preserving(layer) and (bool(layer.trainable_weights) or default.supports(layer))

    registry.supports = supports  # shadows the classmethod for this registry object
    scheme.get_quantize_registry = lambda: registry
    return scheme
