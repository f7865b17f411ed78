"""The evaluation stage: every artifact run in LiteRT and scored against the float model.

- :mod:`runner.evaluation.metrics`: the LiteRT runner (:class:`TFLiteModel`), accuracy,
  agreement, top-5, latency; the ``evaluation`` group's schema. No TensorFlow.
- :mod:`runner.evaluation.fidelity`: is a converted file faithful to its Keras model? One rule.
- :mod:`runner.evaluation.scoring`: a run's :class:`Scorer`: the float model and each artifact,
  with the scores a sweep shares memoized in the baseline's cache entry.
"""
