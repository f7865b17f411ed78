"""Float fallback for int8: ``selective`` (named or worst ops stay float) and ``auto_int8`` (the
fewest float ops that meet an accuracy budget), both on the quantization debugger's report.
Every candidate is scored by running its ``.tflite`` in LiteRT.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from runner.errors import RunnerError
from runner.evaluation.noise import paired_gain
from runner.recipes.base import Artifact, LayerRows, RecipeContext, float_layers_text
from runner.recipes.conversion import ConverterSettings, full_integer_settings
from runner.recipes.layer_report import Debugger, summary, write_rows
from runner.recipes.ptq import ConverterRecipe, PTQOptions
from runner.recipes.ranges import RangeEstimator, one_knob

log = logging.getLogger(__name__)

TRACE_COLUMNS = [
    "step",
    "calibration_ranges",
    "float_layers",
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
# Fewer samples than this inside the budget (max_accuracy_drop x n, or (1 - min_agreement) x n)
# cannot resolve it: one changed prediction decides.
MIN_SAMPLES_IN_BUDGET = 2


class DebuggerOptions(PTQOptions):
    """What ``selective`` and ``auto_int8`` share: full-integer conversion, calibrated."""

    converter: ConverterSettings = Field(
        default_factory=full_integer_settings,
        description="full-integer settings the quantization debugger starts from",
    )


class SelectiveOptions(DebuggerOptions):
    """``recipe=selective``: full int8 but a few ops in float."""

    keep_float: int = Field(1, ge=0, description="how many of the worst int8 ops stay float")
    denylist: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="layer names to keep float (instead of keep_float)"
    )


class AutoInt8Options(DebuggerOptions):
    """``recipe=auto_int8``: the fewest float ops that meet a held-out budget."""

    budget: Literal["auto", "accuracy", "agreement"] = Field(
        "auto", description="accuracy drop, agreement with the float model, or auto (see README)"
    )
    max_accuracy_drop: float = Field(
        0.005, ge=0, le=1, description="budget=accuracy: the holdout accuracy it may lose"
    )
    min_agreement: float = Field(
        0.99, ge=0, le=1, description="budget=agreement: the share of float labels it must keep"
    )
    max_float_layers: int = Field(8, ge=0, description="give up after this many float ops")
    holdout_samples: int = Field(1000, ge=1, description="validation samples the budget is met on")
    holdout_seed: int = Field(1, ge=0, description="which holdout samples are drawn")
    calibration_ranges: Annotated[list[RangeEstimator], Field(min_length=1)] = Field(
        default_factory=lambda: ["minmax", "mean"],
        description="activation range estimators tried with no float layer; the float-layer "
        "search starts from the one that meets the budget, else the one better beyond the "
        "holdout's noise, else the first",
    )

    _one_knob = field_validator("calibration_ranges")(classmethod(lambda cls, v, i: one_knob(v, i)))


class _DebuggerRecipe(ConverterRecipe):
    """Shared by ``selective`` and ``auto_int8``: full-int8 converter settings plus the debugger.

    Their layer report is made while producing and travels on the artifact
    (:attr:`Artifact.layer_rows`); the results layer writes it.
    """

    def data_needed(self) -> str | None:
        return "calibrates activations and finds the worst int8 ops on sample inputs (with labels)"

    def layer_report(self, ctx: RecipeContext, requested: bool) -> LayerRows | None:
        """None: the report made while producing is on the artifact."""
        return None

    def debugger(self, ctx: RecipeContext, ranges: str | None = None) -> Debugger:
        """The debugger on the recipe's converter settings (with ``ranges`` as the activation
        range estimator when given)."""
        converter = self.converter
        if ranges is not None:
            converter = dataclasses.replace(converter, calibration_ranges=ranges)
        dbg = Debugger.build(
            ctx.model,
            converter,
            self.calibration(ctx),
            ctx.dataset.is_text,
            ctx.convert_batch_size,
        )
        log.info("%s: worst int8 layers: %s", self.name, summary(dbg.rows))
        return dbg

    def artifact(
        self,
        ctx: RecipeContext,
        flatbuffer: bytes,
        kept: Sequence[Mapping[str, Any]],
        seconds: float,
        **kw: Any,
    ) -> Artifact:
        names = sorted({r["layer"] for r in kept})
        return self.write_tflite(
            ctx, flatbuffer, seconds, float_layers=float_layers_text(names), **kw
        )


class SelectiveRecipe(_DebuggerRecipe):
    """Full int8 but the ``keep_float`` most error-prone ops (or ``denylist`` by name) in float."""

    Options = SelectiveOptions
    opts: SelectiveOptions

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        t0 = time.perf_counter()
        dbg = self.debugger(ctx)
        denylist = self.opts.denylist
        if denylist:
            known = {r["layer"] for r in dbg.rows}
            unknown = sorted(set(denylist) - known)
            if unknown:
                raise RunnerError(
                    f"recipe.denylist names {unknown}, which have no quantized op; layers in the report: {sorted(known)}"
                )
            kept = [r for r in dbg.rows if r["layer"] in denylist]
        else:
            kept = dbg.worst(self.opts.keep_float)
        flatbuffer = dbg.quantize([r["tensor_name"] for r in kept])
        seconds = time.perf_counter() - t0
        return [
            self.artifact(
                ctx,
                flatbuffer,
                kept,
                seconds,
                worst_layer=dbg.rows[0]["layer"],
                layer_rows=dbg.rows,
            )
        ]


@dataclass
class _Step:
    """One auto_int8 candidate: ``k`` float layers, scored on the holdout."""

    k: int
    flatbuffer: bytes
    kept: list
    right: np.ndarray  # per holdout sample: right by the budget's measure
    gain: float  # over full int8, same samples
    bound: float  # the noise bound for that gain (at least one sample's worth when k > 0)
    meets: bool  # within the budget

    @property
    def real(self) -> bool:
        return self.k > 0 and self.gain >= self.bound

    def summary(self, n: int) -> str:
        return (
            f"holdout score {float(np.mean(self.right)):.4f}, gain over full int8 "
            f"{self.gain:+.4f} with noise bound {self.bound:.4f} on {n} samples"
        )


class AutoInt8Recipe(_DebuggerRecipe):
    """The fewest float layers (worst first) whose int8 model meets a budget.

    Candidates are scored in LiteRT on a held-out slice of the training split (never the test
    split) against the float model on the same slice; every step goes to ``fallback_trace.csv``.

    ``budget``: ``accuracy`` (drop at most ``max_accuracy_drop``), ``agreement`` (the same label
    as the float model on at least ``min_agreement`` of the samples: needs no labels, and stays
    honest on images a model was trained on), or ``auto``: agreement for a user's pretrained
    model (its training data is unknown: the holdout may be images it learned), accuracy for the
    runner's own baseline (its validation split was never fitted on).
    """

    Options = AutoInt8Options
    opts: AutoInt8Options

    def holdout(self, ctx: RecipeContext):
        """(samples, what they are): the data set's own validation split when it ships one
        (never trained on, even by a pretrained model), else the baseline's validation split
        (never fitted on by the runner's baseline), capped at ``holdout_samples``."""
        from runner.data import subset

        _, val, where = ctx.held_out()
        if val is None:
            log.warning(
                "auto_int8: train.validation_split is 0, so the budget is checked on training samples"
            )
            val, where = ctx.dataset.train, "the training split (train.validation_split is 0)"
        return subset(val, self.opts.holdout_samples, self.opts.holdout_seed), where

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        from runner.evaluation.metrics import labels_from_outputs, predict_keras

        t0 = time.perf_counter()
        hold, where = self.holdout(ctx)
        float_labels = labels_from_outputs(predict_keras(ctx.model, hold.x, ctx.scaling))
        budget = self.budget_kind(ctx)
        # what a sample counts as right: the float model's label, or the true one
        target = float_labels if budget == "agreement" else hold.y
        warnings = self.resolution_warnings(budget, len(hold))
        for w in warnings:
            log.warning("%s", w)
        dbg, ranges, tried, start = self.pick_ranges(ctx, hold, float_labels, target, budget)
        steps, trace = self.search(ctx, dbg, hold, float_labels, target, budget, ranges, start)
        write_rows(ctx.run_dir / "fallback_trace.csv", tried + trace, TRACE_COLUMNS)
        chosen, note = self.choose(steps, budget, len(hold))
        if len(self.opts.calibration_ranges) > 1:
            note += f"; activation ranges: {ranges} (of {', '.join(self.opts.calibration_ranges)})"
        return [
            self.artifact(
                ctx,
                chosen.flatbuffer,
                chosen.kept,
                time.perf_counter() - t0,
                worst_layer=dbg.rows[0]["layer"],
                note=f"{note}; holdout: {len(hold)} samples of {where}",
                warnings=tuple(warnings),
                layer_rows=dbg.rows,
            )
        ]

    def pick_ranges(self, ctx, hold, float_labels, target, budget: str):
        """(debugger, estimator, trace rows of the estimators not taken, the taken one's scored
        full-int8 step and trace row for :meth:`search` to go on from): full int8 with each
        ``calibration_ranges`` estimator, scored on the holdout; the first that meets the
        budget, else the one that beats the first beyond the noise (the largest gain), else the
        first."""
        first, *others = self.opts.calibration_ranges
        if not others:
            return self.debugger(ctx, first), first, [], None
        scored = []
        for ranges in self.opts.calibration_ranges:
            dbg = self.debugger(ctx, ranges)
            steps, trace = self.search(
                ctx, dbg, hold, float_labels, target, budget, ranges, max_float=0
            )
            scored.append((dbg, ranges, steps[0], trace))
        base = scored[0][2]
        meets = [c for c in scored if c[2].meets]
        better = []
        for c in scored[1:]:
            gain, bound = paired_gain(base.right, c[2].right)
            if gain > 0 and gain >= bound:
                better.append((gain, c))
        pick = meets[0] if meets else max(better, key=lambda g: g[0])[1] if better else scored[0]
        log.info("auto_int8: starting from calibration_ranges=%s", pick[1])
        tried = [row for c in scored if c is not pick for row in c[3]]
        return pick[0], pick[1], tried, ([pick[2]], pick[3])

    def budget_kind(self, ctx: RecipeContext) -> str:
        if self.opts.budget != "auto":
            return self.opts.budget
        return "agreement" if ctx.pretrained else "accuracy"

    def within(self, budget: str, drop: float, agreement: float) -> bool:
        """Whether a candidate with this accuracy ``drop`` and ``agreement`` meets ``budget``."""
        if budget == "agreement":
            return agreement >= self.opts.min_agreement
        return drop <= self.opts.max_accuracy_drop

    def budget_text(self, budget: str) -> str:
        if budget == "agreement":
            return f"agreement >= {self.opts.min_agreement:g}"
        return f"accuracy drop <= {self.opts.max_accuracy_drop:g}"

    def search(
        self,
        ctx,
        dbg: Debugger,
        hold,
        float_labels,
        target,
        budget: str,
        ranges: str = "minmax",
        start: tuple[list[_Step], list[dict[str, Any]]] | None = None,
        max_float: int | None = None,
    ) -> tuple[list[_Step], list[dict[str, Any]]]:
        """Score full int8, then one more float layer (worst first) per step, in LiteRT; stop at
        the first step that meets the budget with a gain over full int8 beyond the noise, or
        after ``max_float`` float layers (default ``max_float_layers``). ``start``: steps
        already scored (and their trace rows) to go on from. Returns the steps and their trace
        rows (``fallback_trace.csv``)."""
        from runner.evaluation.metrics import TFLiteModel, labels_from_outputs

        float_acc = float(np.mean(float_labels == hold.y))
        steps, trace = (list(start[0]), list(start[1])) if start else ([], [])
        if steps and steps[0].meets:
            return steps, trace  # full int8 already meets the budget
        cap = self.opts.max_float_layers if max_float is None else max_float
        for k in range(len(steps), min(cap, len(dbg.layers)) + 1):
            kept = dbg.worst(k)  # every op of the k worst layers
            flatbuffer = dbg.quantize([r["tensor_name"] for r in kept])
            out = TFLiteModel(content=flatbuffer).predict(hold.x, ctx.scaling, 128)
            labels = labels_from_outputs(out)
            right = labels == target
            gain, bound = paired_gain(steps[0].right, right) if steps else (0.0, 0.0)
            acc = float(np.mean(labels == hold.y))
            agreement = float(np.mean(labels == float_labels))
            meets = self.within(budget, float_acc - acc, agreement)
            step = _Step(k, flatbuffer, kept, right, gain, bound, meets)
            steps.append(step)
            trace.append(
                {
                    "step": k,
                    "calibration_ranges": ranges,
                    "float_layers": k,
                    "layers": " ".join(dict.fromkeys(r["layer"] for r in kept)),
                    "size_bytes": len(flatbuffer),
                    "holdout_accuracy": acc,
                    "accuracy_drop": float_acc - acc,
                    "agreement": agreement,
                    "gain_over_int8": gain,
                    "noise_bound": bound,
                    "beyond_noise": step.real,
                    "budget": self.budget_text(budget),
                    "samples": len(hold),
                    "meets_budget": step.meets,
                }
            )
            log.info(
                "auto_int8 (%s ranges): %d float layer(s), holdout accuracy %.4f (drop %.4f), "
                "agreement %.4f, gain over int8 %+.4f (noise bound %.4f)",
                *(ranges, k, acc, float_acc - acc, agreement, gain, bound),
            )
            if step.meets and (k == 0 or step.real):
                break
        return steps, trace

    def choose(self, steps: list[_Step], budget: str, n: int) -> tuple[_Step, str]:
        """The first step in budget whose gain is real; else the best real gain; else full
        int8 (the smallest candidate, and none is shown to beat it)."""
        text, last = self.budget_text(budget), steps[-1]
        if last.meets and (last.k == 0 or last.real):
            return last, f"budget {text} met with {last.k} float layer(s) ({last.summary(n)})"
        real = [s for s in steps[1:] if s.real]
        chosen = max(real, key=lambda s: (s.gain, -s.k)) if real else steps[0]
        why = (
            f"kept {chosen.k} float layer(s), the largest gain over full int8 beyond the "
            f"holdout's noise ({chosen.summary(n)})"
            if real
            else "no float layer gained more than the holdout's noise over full int8, so this "
            f"is full int8 ({steps[0].summary(n)})"
        )
        return chosen, (
            f"no point within {last.k} float layer(s) meets the budget {text}; {why}. Next: "
            "recipe=int16x8 (16-bit activations), recipe=qat (fine-tunes for int8), a larger "
            "recipe.calibration_samples, or recipe=float16"
        )

    def resolution_warnings(self, budget: str, n: int) -> list[str]:
        """A budget worth fewer than :data:`MIN_SAMPLES_IN_BUDGET` holdout samples is noise."""
        share = (
            (1 - self.opts.min_agreement) if budget == "agreement" else self.opts.max_accuracy_drop
        )
        if share * n >= MIN_SAMPLES_IN_BUDGET:
            return []
        what = (
            f"min_agreement={self.opts.min_agreement:g}"
            if budget == "agreement"
            else f"max_accuracy_drop={self.opts.max_accuracy_drop:g}"
        )
        return [
            f"auto_int8: the holdout has {n} samples, so the budget {what} is {share * n:.1f} "
            "sample(s): one changed prediction decides it. Raise recipe.holdout_samples or "
            "train.validation_split, or loosen the budget"
        ]
