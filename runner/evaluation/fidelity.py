"""Is a converted file faithful to its Keras model? One rule, used everywhere it is asked.

A float conversion (float32, float16) only rounds: its outputs stay within a small, even noise
of the Keras model's, and a label can only change on a sample whose top two outputs were
already within that noise of each other (a near tie). So a float file is faithful when

* its output SQNR against the Keras model is at least :data:`FLOAT_FIDELITY_DB`, and
* every label it changed sat on a near tie: the float model's top-2 margin on that sample was
  within twice the conversion's typical output change (its 90th-percentile per-sample max
  |difference|). A changed label on a sample the float model was sure of is drift.

Counting flips against a fixed agreement (0.995) refused good files: a low-margin classifier
whose float16 outputs are 40 dB from Keras flips 2 of 256 near ties. The rule is judged on the
caller's real inputs where it has them; inputs drawn from a model's input domain put more samples
near a boundary than real data does, which the near-tie bound absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A float conversion's outputs sit at least this far (dB) above their difference from Keras:
# measured float32 conversions 90-130 dB, float16 60-80; a drifting fused LSTM 5-20.
FLOAT_FIDELITY_DB = 30.0
# SQNR is capped here: no measurable noise (a bit-exact file) reads as this many dB.
MAX_SQNR_DB = 150.0
# The conversion's typical per-sample output change: this percentile of the per-sample max |diff|.
NOISE_PERCENTILE = 90


def labels_from_outputs(out: np.ndarray) -> np.ndarray:
    """Predicted labels from a sigmoid (one unit, threshold 0.5) or softmax/logit head."""
    out = np.asarray(out)
    if out.ndim == 1 or out.shape[-1] == 1:
        return (out.reshape(-1) > 0.5).astype(np.int64)
    return np.argmax(out, axis=-1).astype(np.int64)


def output_fidelity(reference: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """(SQNR in dB, max |difference|) of ``out`` against ``reference`` outputs.

    SQNR = 10 log10(sum(ref^2) / sum((ref - out)^2)), over every output value: float32
    conversions sit near 100 dB, float16 near 60-80 dB, int8 near 20-40 dB; a drifting
    conversion falls far below its kind.
    """
    ref = np.asarray(reference, np.float64).reshape(len(reference), -1)
    got = np.asarray(out, np.float64).reshape(len(out), -1)
    if ref.shape != got.shape:
        raise ValueError(f"output shape {got.shape} differs from the float model's {ref.shape}")
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref**2))
    floor = signal * 10 ** (-MAX_SQNR_DB / 10)
    sqnr = MAX_SQNR_DB if noise <= floor else 10 * np.log10(signal / noise)
    return float(min(sqnr, MAX_SQNR_DB)), float(np.max(np.abs(ref - got))) if ref.size else 0.0


def margins(outputs: np.ndarray) -> np.ndarray:
    """Per sample, how far the decision is from flipping: top-1 minus top-2 output (a sigmoid
    head: the distance of 2p - 1 from 0, on the same scale)."""
    out = np.asarray(outputs, np.float64)
    if out.ndim == 1 or out.shape[-1] == 1:
        return np.abs(2 * out.reshape(-1) - 1)
    top2 = np.sort(out.reshape(len(out), -1), axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@dataclass(frozen=True)
class Fidelity:
    """A file's outputs against its Keras model's on the same inputs."""

    samples: int
    output_sqnr_db: float
    output_max_abs_error: float
    agreement: float  # share of samples with the Keras model's label
    flips: int  # samples whose label changed
    near_tie_flips: int  # of those, samples the float model had within the noise of a tie
    noise: float  # the typical per-sample max |difference| (NOISE_PERCENTILE)

    @property
    def sure_flips(self) -> int:
        """Labels changed on samples the float model was sure of: drift, not rounding."""
        return self.flips - self.near_tie_flips

    @property
    def faithful(self) -> bool:
        """The float-conversion rule of this module (see its docstring)."""
        return self.output_sqnr_db >= FLOAT_FIDELITY_DB and self.sure_flips == 0

    def describe(self) -> str:
        flips = (
            f", {self.flips} changed label(s), {self.near_tie_flips} of them near ties"
            if self.flips
            else ""
        )
        return (
            f"output SQNR {self.output_sqnr_db:.1f} dB, label agreement {self.agreement:.4f} "
            f"on {self.samples} inputs{flips}"
        )


def compare(reference: np.ndarray, out: np.ndarray) -> Fidelity:
    """How faithful ``out`` is to ``reference`` (the Keras model's outputs, same inputs)."""
    ref = np.asarray(reference, np.float64)
    got = np.asarray(out, np.float64)
    sqnr, max_err = output_fidelity(ref, got)
    flipped = labels_from_outputs(ref) != labels_from_outputs(got)
    diff = np.abs(ref.reshape(len(ref), -1) - got.reshape(len(got), -1)).max(axis=1)
    noise = float(np.percentile(diff, NOISE_PERCENTILE)) if len(diff) else 0.0
    near = margins(ref) <= 2 * noise
    return Fidelity(
        samples=len(ref),
        output_sqnr_db=sqnr,
        output_max_abs_error=max_err,
        agreement=float(1 - np.mean(flipped)) if len(ref) else 1.0,
        flips=int(flipped.sum()),
        near_tie_flips=int((flipped & near).sum()),
        noise=noise,
    )
