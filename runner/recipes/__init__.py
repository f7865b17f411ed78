"""Recipes, one module per family, all behind the :class:`~runner.recipes.base.Recipe` protocol.

- ``base``: the protocol, the context a recipe receives, the artifacts it returns
- ``conversion``: the TFLite converter and the routes for recurrent models (used by every family)
- ``ptq``: post-training recipes (none, dynamic_range, float16, full_integer, int16x8 ...)
- ``qat``: quantization-aware training
- ``debugger``: the per-layer int8 error report
- ``fallback``: selective and auto_int8 (int8 with some ops kept in float)
"""
