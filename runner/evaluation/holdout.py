"""Held-out samples that several files of one model are judged on, side by side: per sample,
whether each file labels it right and whether it agrees with the float model (what
:func:`runner.evaluation.noise.beats` compares). QAT's epoch judge and ``adaround`` use it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runner.data import Scaling, Split
from runner.evaluation.interpreter import TFLiteModel
from runner.evaluation.metrics import labels_from_outputs, predict_keras


@dataclass
class Holdout:
    split: Split
    where: str  # what the samples are, for the row's note
    scaling: Scaling
    float_labels: np.ndarray  # the float model's labels on them

    @classmethod
    def of(cls, float_model, split: Split, where: str, scaling: Scaling) -> Holdout:
        labels = labels_from_outputs(predict_keras(float_model, split.x, scaling))
        return cls(split, where, scaling, labels)

    def __len__(self) -> int:
        return len(self.split)

    def hits(self, flatbuffer: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: (the file labels it right, it agrees with the float model)."""
        out = TFLiteModel(content=flatbuffer).predict(self.split.x, self.scaling, 128)
        labels = labels_from_outputs(out)
        return labels == self.split.y, labels == self.float_labels
