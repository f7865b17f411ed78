"""Config-driven experiment runner for TensorFlow Lite quantization.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` before TensorFlow can be imported, so every
model is built with tf-keras (Keras 2), which tensorflow-model-optimization needs. Nothing heavy is
imported here: ``python -m runner --help`` and config errors answer without TensorFlow.
"""

from __future__ import annotations

import os

# Must happen before the first `import tensorflow` anywhere in the process.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probing on CPU-only machines, oneDNN notes) is noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from runner.errors import RunnerError  # noqa: E402

__all__ = ["RunnerError"]


def _version() -> str:
    """The installed distribution's version (pyproject.toml is its one source)."""
    from importlib import metadata

    try:
        return metadata.version("tfq-runner")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


__version__ = _version()
