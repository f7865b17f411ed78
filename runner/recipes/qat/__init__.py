"""Quantization-aware training (tensorflow-model-optimization) as a recipe.

- :mod:`runner.recipes.qat.recipe`: :class:`QATRecipe`: fine-tuning with the epoch judge
  (every epoch's real int8 file scored on held-out data), the export of ``qat.tflite`` and
  ``qat.h5``.
- :mod:`runner.recipes.qat.judge`: the epoch judge and the row's notes.
- :mod:`runner.recipes.qat.lr`: the fine-tuning learning rate (``learning_rate_scale=auto``).
- :mod:`runner.recipes.qat.wrap`: which layers tfmot annotates, the annotated clone, the
  8-bit scheme (depthwise kernels per channel).
- :mod:`runner.recipes.qat.quantizer_ranges`: the quantizers' starting ranges.

Two QAT pieces live with the models because loading a QAT file must not import the recipes:
:mod:`runner.models.qat_scope` (the custom objects a QAT ``.h5`` needs) and
:mod:`runner.models.tf_keras_graph` (a tf_keras graph flattened so tfmot accepts it).
"""

from runner.recipes.qat.judge import JUDGE_SAMPLES, kept_note, left_float_note
from runner.recipes.qat.options import QATOptions
from runner.recipes.qat.recipe import FineTuned, QATRecipe

__all__ = ["JUDGE_SAMPLES", "FineTuned", "QATOptions", "QATRecipe", "kept_note", "left_float_note"]
