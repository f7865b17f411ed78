"""``auto_int8``'s candidates: full int8 with the k worst layers taken out of int8, either to
float (the converter's float fallback) or to int16 activations with their int8 weights (``a16w8``,
through ai-edge-quantizer: the file stays integer-only). Each candidate is scored in LiteRT on a
held-out slice against the float model and full int8 on the same samples; every one is a row of
``fallback_trace.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from runner.evaluation.noise import paired_gain

Fallback = Literal["float", "a16w8"]

TRACE_COLUMNS = [
    "step",
    "fallback",
    "calibration_ranges",
    "float_layers",
    "int16_layers",
    "layers",
    "size_bytes",
    "holdout_accuracy",
    "accuracy_drop",
    "agreement",
    "gain_over_int8",
    "noise_bound",
    "beyond_noise",
    "budget",
    "samples",
    "meets_budget",
]


@dataclass
class Step:
    """One candidate: the ``k`` worst layers out of int8 by ``fallback``, scored on the holdout."""

    k: int
    fallback: str  # "float" or "a16w8" ("none" for full int8, k = 0)
    flatbuffer: bytes
    kept: list  # the debugger's rows of the k worst layers
    layers: list[str]  # the layers out of int8 (a16w8: those with an op in the reference)
    right: np.ndarray  # per holdout sample: right by the budget's measure
    gain: float  # over full int8, same samples
    bound: float  # the noise bound for that gain
    meets: bool  # within the budget

    @property
    def real(self) -> bool:
        return self.k > 0 and self.gain >= self.bound

    @property
    def done(self) -> bool:
        """In budget, and (past full int8) better than full int8 beyond the noise."""
        return self.meets and (self.k == 0 or self.real)

    @property
    def how(self) -> str:
        """What the row's note calls it: "1 float layer(s)", "2 int16-activation layer(s)"."""
        if self.fallback == "a16w8":
            return f"{len(self.layers)} int16-activation layer(s)"
        return f"{self.k} float layer(s)"

    def summary(self, n: int) -> str:
        return (
            f"holdout score {float(np.mean(self.right)):.4f}, gain over full int8 "
            f"{self.gain:+.4f} with noise bound {self.bound:.4f} on {n} samples"
        )


@dataclass
class Holdout:
    """The samples every candidate is scored on, and the budget it must meet."""

    x: np.ndarray
    y: np.ndarray
    float_labels: np.ndarray
    budget: str  # "accuracy" or "agreement"
    budget_text: str
    within: Callable[[float, float], bool]  # (accuracy drop, agreement) -> meets
    scaling: Any
    trace: list[dict[str, Any]] = field(default_factory=list)

    @property
    def target(self) -> np.ndarray:
        """What a sample counts as right: the float model's label, or the true one."""
        return self.float_labels if self.budget == "agreement" else self.y

    def __len__(self) -> int:
        return len(self.y)

    def score(
        self,
        flatbuffer: bytes,
        k: int,
        fallback: str,
        kept: list,
        layers: list[str],
        base: Step | None,
        ranges: str,
    ) -> Step:
        """``flatbuffer`` run in LiteRT on the holdout; its trace row appended to :attr:`trace`."""
        from runner.evaluation.interpreter import TFLiteModel
        from runner.evaluation.metrics import labels_from_outputs

        labels = labels_from_outputs(
            TFLiteModel(content=flatbuffer).predict(self.x, self.scaling, 128)
        )
        right = labels == self.target
        gain, bound = paired_gain(base.right, right) if base is not None else (0.0, 0.0)
        float_acc = float(np.mean(self.float_labels == self.y))
        acc = float(np.mean(labels == self.y))
        agreement = float(np.mean(labels == self.float_labels))
        step = Step(
            k, fallback, flatbuffer, kept, layers, right, gain, bound,
            self.within(float_acc - acc, agreement),
        )  # fmt: skip
        self.trace.append(
            {
                "step": k,
                "fallback": fallback,
                "calibration_ranges": ranges,
                "float_layers": k if fallback == "float" else 0,
                "int16_layers": len(layers) if fallback == "a16w8" else 0,
                "layers": " ".join(layers),
                "size_bytes": len(flatbuffer),
                "holdout_accuracy": acc,
                "accuracy_drop": float_acc - acc,
                "agreement": agreement,
                "gain_over_int8": gain,
                "noise_bound": bound,
                "beyond_noise": step.real,
                "budget": self.budget_text,
                "samples": len(self),
                "meets_budget": step.meets,
            }
        )
        return step


def choose(steps: list[Step], budget_text: str, n: int) -> tuple[Step, str]:
    """The candidate to ship and why: at the search's last step, the first fallback (in the
    order tried) that meets the budget with a real gain; else the largest real gain; else full
    int8 (the smallest candidate, and none is shown to beat it). The note names how the other
    fallback of the same layers scored."""
    last_k = steps[-1].k
    done = [s for s in steps if s.k == last_k and s.done]
    if done:
        chosen = done[0]
        note = f"budget {budget_text} met with {chosen.how} ({chosen.summary(n)})"
        return chosen, note + _other(chosen, steps)
    real = [s for s in steps if s.real]
    chosen = max(real, key=lambda s: (s.gain, -s.k)) if real else steps[0]
    why = (
        f"kept {chosen.how}, the largest gain over full int8 beyond the holdout's noise "
        f"({chosen.summary(n)}){_other(chosen, steps)}"
        if real
        else "no layer out of int8 gained more than the holdout's noise over full int8, so this "
        f"is full int8 ({steps[0].summary(n)})"
    )
    return chosen, (
        f"no point within {last_k} layer(s) out of int8 meets the budget {budget_text}; {why}. "
        "Next: recipe=int16x8 (16-bit activations), recipe=qat (fine-tunes for int8), a larger "
        "recipe.calibration_samples, or recipe=float16"
    )


def _other(chosen: Step, steps: list[Step]) -> str:
    """ "; as int16 activations: holdout score ..." for the other fallback of the same step."""
    others = [s for s in steps if s.k == chosen.k and s.fallback != chosen.fallback]
    return "".join(
        f"; the same layers {'in float' if s.fallback == 'float' else 'with int16 activations'}: "
        f"holdout score {float(np.mean(s.right)):.4f} ({'meets' if s.meets else 'misses'} it)"
        for s in others
    )
