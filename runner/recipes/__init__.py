"""Recipes, one module per family, all behind the :class:`~runner.recipes.base.Recipe` protocol.

- ``base``: the protocol, the context a recipe receives, the artifacts it returns, the
  calibration options every calibrating family shares
- ``conversion``: the TFLite converter and the routes for recurrent models (used by every family)
- ``recurrent``: LSTM/GRU models as the converter sees them (fixed batch, unrolled copy)
- ``ptq``: post-training converter recipes (none, dynamic_range, float16, full_integer, int16x8 ...)
- ``qat``: quantization-aware training (``qat/recipe.py``, ``qat/wrap.py``)
- ``layer_report``: the per-layer int8 error report (TFLite's quantization debugger)
- ``selective``: selective and auto_int8 (int8 with the worst ops kept in float)
- ``aeq``: ai-edge-quantizer recipes (int4, int8 weight-only, static int8)
- (the sign test that judges gains on held-out samples is runner.evaluation.noise)
"""
