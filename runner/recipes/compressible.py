"""Layers tfmot's pruning and clustering registries skip, made compressible.

tfmot registers DepthwiseConv2D with no prunable or clusterable weights, so MobileNets' and
EfficientNets' depthwise kernels stay dense under ``prune_low_magnitude`` and
``cluster_weights``. A subclass that declares its kernel through tfmot's ``PrunableLayer`` and
``ClusterableLayer`` interfaces is pruned and clustered like a Conv2D; after stripping, the
plain class comes back (what QAT's registry, the converter and a saved .h5 know).
"""

from __future__ import annotations

import functools


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
