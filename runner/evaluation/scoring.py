"""Scoring: every artifact run on the test split against the float model's outputs, the
shared ones memoized with the baseline, and the fidelity floors that name a drifting file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.artifacts import Artifact, Metrics
from runner.data import Dataset, Scaling
from runner.evaluation.memo import fingerprint, memo_metrics
from runner.evaluation.metrics import EvalConfig, evaluate_keras, evaluate_tflite
from runner.files import sha256_file, sha256_tree

log = logging.getLogger(__name__)

# The evaluation keys that change a score (the memo key of the shared float rows).
SCORING_KEYS = {"batch_size", "num_threads", "latency_warmup", "latency_samples"}


class Scorer:
    """Scores artifacts on the test split against the float model's outputs.

    The float model and the float32 reference are the same for every job of a sweep on one
    baseline: their metrics are memoized in the baseline's cache entry (``memo_dir``) under a key
    naming the file hash, the test split's fingerprint, the scaling and the evaluation settings.
    A recipe's own artifact is always measured afresh.
    """

    def __init__(
        self, data: Dataset, scaling: Scaling, ecfg: EvalConfig, memo_dir: Path | None
    ) -> None:
        self.data, self.scaling, self.ecfg, self.memo_dir = data, scaling, ecfg, memo_dir
        self.reference: Metrics | None = None  # the float Keras model's metrics and outputs
        self.memo_status = "off"  # of the last score: hit | miss | off
        self._spec = {
            "test": fingerprint(data.test.x, data.test.y),
            "scaling": scaling.as_dict(),
            "num_classes": data.num_classes,
            "evaluation": ecfg.model_dump(include=SCORING_KEYS),
            "memo_version": 2,  # 2: the float model's outputs are kept (output fidelity)
        }

    def score_float_model(self, load: Callable[[], Any], path: Path) -> Metrics:
        """The float Keras model's own metrics: the reference every artifact is compared with.

        ``load`` gives the model (from the file at ``path``); a memoized score never calls it.
        """
        test = self.data.test
        m, self.memo_status = memo_metrics(
            self.memo_dir,
            {"keras": sha256_tree(path), **self._spec} if self.memo_dir is not None else {},
            lambda: evaluate_keras(
                load(), test.x, test.y, self.scaling, None, self.data.num_classes, self.ecfg
            ),
        )
        self.reference = m
        return m

    def score(self, art: Artifact, memoize: bool = False) -> Metrics:
        """Run the artifact (a .tflite in LiteRT, a Keras model as itself) on the test split."""
        assert self.reference is not None, "score_float_model comes first"
        evaluate, target = (
            (evaluate_tflite, art.path) if art.format == "tflite" else (evaluate_keras, art.model)
        )
        test = self.data.test

        def measure() -> Metrics:
            return evaluate(
                target,
                test.x,
                test.y,
                self.scaling,
                self.reference.outputs,
                self.data.num_classes,
                self.ecfg,
            )

        memo = memoize and art.path.is_file() and self.memo_dir is not None
        spec = (
            {
                "artifact": sha256_file(art.path),
                "reference": fingerprint(self.reference.outputs),
                **self._spec,
            }
            if memo
            else {}
        )
        m, self.memo_status = memo_metrics(self.memo_dir if memo else None, spec, measure)
        return m


def fidelity_warnings(art: Artifact, m: Metrics, ecfg: Any) -> list[str]:
    """Agreement and output-SQNR floors (``evaluation.min_*``), named by artifact."""
    out = []
    floor = float(ecfg.min_agreement_quantized if art.quantized else ecfg.min_agreement)
    agreement = m.agreement if m.agreement is not None else 1.0
    if agreement < floor:
        what = (
            "quantization changed many predictions"
            if art.quantized
            else "the conversion, not the quantization, changed the model"
        )
        out.append(
            f"{art.name}: agreement with the float Keras model is {agreement:.4f} < {floor} ({what})"
        )
    sqnr_floor = ecfg.min_output_sqnr_db
    if (
        not art.quantized
        and m.output_sqnr_db is not None
        and sqnr_floor is not None
        and m.output_sqnr_db < float(sqnr_floor)
    ):
        out.append(
            f"{art.name}: output SQNR against the float Keras model is {m.output_sqnr_db:.1f} dB "
            f"< {sqnr_floor} dB (the conversion, not the quantization, changed the outputs)"
        )
    return out
