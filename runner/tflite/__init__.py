"""Reading and rewriting ``.tflite`` flatbuffers: op codes, weights, the Keras layer a tensor
came from, and the GATHER -> EMBEDDING_LOOKUP rewrite. Built on ``ai_edge_litert``'s schema
(always installed); nothing here imports TensorFlow or ai-edge-quantizer."""

from runner.tflite.names import layer_name
from runner.tflite.read import (
    all_float32,
    custom_ops,
    float_weight_ops,
    op_name,
    read,
    tensor_producers,
    weight_tensors,
)
from runner.tflite.rewrite import gather_as_embedding_lookup

__all__ = [
    "all_float32",
    "custom_ops",
    "float_weight_ops",
    "gather_as_embedding_lookup",
    "layer_name",
    "op_name",
    "read",
    "tensor_producers",
    "weight_tensors",
]
