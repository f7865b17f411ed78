"""Quantization-aware training helpers (tensorflow-model-optimization)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def load_scope() -> Iterator[None]:
    """The custom-object scope a saved QAT model needs to load back."""
    import tensorflow_model_optimization as tfmot

    with tfmot.quantization.keras.quantize_scope():
        yield
