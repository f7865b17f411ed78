"""Float fallback for int8: ``selective`` (named or worst ops stay float) and ``auto_int8`` (the
fewest float ops that meet an accuracy budget), both on the quantization debugger's report.
Every candidate is scored by running its ``.tflite`` in LiteRT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from runner.artifacts import Artifact, LayerRows
from runner.errors import RunnerError
from runner.recipes.base import RecipeContext, float_layers_text
from runner.recipes.candidates import TRACE_COLUMNS, Fallback, Holdout, Step, choose
from runner.recipes.conversion import ConverterOptions, full_integer_settings
from runner.recipes.layer_report import Debugger, summary, write_rows
from runner.recipes.mixed import A16W8Files
from runner.recipes.ptq import ConverterRecipe, PTQOptions
from runner.recipes.ranges import RangeEstimator, one_knob

log = logging.getLogger(__name__)

# Fewer samples than this inside the budget (max_accuracy_drop x n, or (1 - min_agreement) x n)
# cannot resolve it: one changed prediction decides.
MIN_SAMPLES_IN_BUDGET = 2


class DebuggerOptions(PTQOptions):
    """What ``selective`` and ``auto_int8`` share: full-integer conversion, calibrated."""

    converter: ConverterOptions = Field(
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

    fallback: Annotated[list[Fallback], Field(min_length=1)] = Field(
        default_factory=lambda: ["float", "a16w8"],
        description="how each step takes a layer out of int8: float (float fallback) and/or "
        "a16w8 (int16 activations, int8 weights: integer-only, through ai-edge-quantizer); each "
        "is scored, the first in this order that meets the budget is taken",
    )

    @field_validator("fallback")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"names a fallback twice: {v}")
        return v

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
            converter = converter.replace(calibration_ranges=ranges)
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


class AutoInt8Recipe(_DebuggerRecipe):
    """The fewest layers (worst first) out of int8 whose model meets a budget.

    Each step takes one more of the debugger's worst layers out of int8, by each ``fallback`` in
    turn: ``float`` (the converter's float fallback) and ``a16w8`` (int16 activations, int8
    weights, through ai-edge-quantizer: integer-only). Candidates are scored in LiteRT on a
    held-out slice (never the test split) against the float model on the same slice; every
    candidate goes to ``fallback_trace.csv``.

    ``budget``: ``accuracy`` (drop at most ``max_accuracy_drop``), ``agreement`` (the same label
    as the float model on at least ``min_agreement`` of the samples: needs no labels, and stays
    honest on images a model was trained on), or ``auto``: agreement for a user's pretrained
    model (its training data is unknown: the holdout may be images it learned), accuracy for the
    runner's own baseline (its validation split was never fitted on).
    """

    Options = AutoInt8Options
    opts: AutoInt8Options

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        """a16w8 candidates quantize the float32 reference ``.tflite``."""
        return "a16w8" in self.opts.fallback

    def holdout(self, ctx: RecipeContext) -> tuple[Holdout, str]:
        """(samples, what they are): the data set's own validation split when it ships one
        (never trained on, even by a pretrained model), else the baseline's validation split
        (never fitted on by the runner's baseline), capped at ``holdout_samples``."""
        from runner.data import subset
        from runner.evaluation.metrics import labels_from_outputs, predict_keras

        _, val, where = ctx.held_out()
        if val is None:
            log.warning(
                "auto_int8: train.validation_split is 0, so the budget is checked on training samples"
            )
            val, where = ctx.dataset.train, "the training split (train.validation_split is 0)"
        hold = subset(val, self.opts.holdout_samples, self.opts.holdout_seed)
        budget = self.budget_kind(ctx)
        float_labels = labels_from_outputs(predict_keras(ctx.model, hold.x, ctx.scaling))
        return Holdout(
            hold.x, hold.y, float_labels, budget, self.budget_text(budget),
            lambda drop, agreement: self.within(budget, drop, agreement), ctx.scaling,
        ), where  # fmt: skip

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        t0 = time.perf_counter()
        hold, where = self.holdout(ctx)
        warnings = self.resolution_warnings(hold.budget, len(hold))
        dbg, ranges, start = self.pick_ranges(ctx, hold)
        a16w8, why_not = self.a16w8_files(ctx, ranges)
        if why_not:
            warnings.append(why_not)
        for w in warnings:
            log.warning("%s", w)
        steps = self.search(dbg, hold, ranges, start, a16w8=a16w8)
        if a16w8 is not None and a16w8.failed:
            if self.opts.fallback == ["a16w8"]:
                raise RunnerError(f"recipe.fallback=[a16w8]: no a16w8 candidate: {a16w8.failed}")
            warnings.append(f"auto_int8 tried float fallback only (a16w8 failed): {a16w8.failed}")
            log.warning("%s", warnings[-1])
        write_rows(ctx.run_dir / "fallback_trace.csv", hold.trace, TRACE_COLUMNS)
        chosen, note = choose(steps, hold.budget_text, len(hold))
        if len(self.opts.calibration_ranges) > 1:
            note += f"; activation ranges: {ranges} (of {', '.join(self.opts.calibration_ranges)})"
        if chosen.fallback == "a16w8":
            note = f"int16 activations in {', '.join(chosen.layers)}; {note}"
        return [
            self.artifact(
                ctx,
                chosen.flatbuffer,
                chosen.kept if chosen.fallback == "float" else [],
                time.perf_counter() - t0,
                worst_layer=dbg.rows[0]["layer"],
                note=f"{note}; holdout: {len(hold)} samples of {where}",
                warnings=tuple(warnings),
                layer_rows=dbg.rows,
            )
        ]

    def a16w8_files(self, ctx: RecipeContext, ranges: str) -> tuple[A16W8Files | None, str]:
        """(the a16w8 candidates' maker, or None and why not when ``fallback`` asks for them
        but they cannot be made here; with ``fallback: [a16w8]`` alone that is an error)."""
        if "a16w8" not in self.opts.fallback:
            return None, ""
        try:
            return A16W8Files(ctx, self.opts, ranges), ""
        except RunnerError as e:
            if self.opts.fallback == ["a16w8"]:
                raise RunnerError(f"recipe.fallback=[a16w8]: {e}") from None
            return None, f"auto_int8 tried float fallback only (no a16w8 candidates): {e}"

    def pick_ranges(self, ctx: RecipeContext, hold: Holdout):
        """(debugger, estimator, the taken one's scored full-int8 step for :meth:`search` to go
        on from): full int8 with each ``calibration_ranges`` estimator, scored on the holdout;
        the first that meets the budget, else the one that beats the first beyond the noise (the
        largest gain), else the first. Every estimator's row stays in the trace."""
        scored = []
        for ranges in self.opts.calibration_ranges:
            dbg = self.debugger(ctx, ranges)
            flatbuffer = dbg.quantize([])
            base = scored[0][2] if scored else None
            scored.append((dbg, ranges, hold.score(flatbuffer, 0, "none", [], [], base, ranges)))
        meets = [c for c in scored if c[2].meets]
        better = [c for c in scored[1:] if c[2].gain > 0 and c[2].gain >= c[2].bound]
        pick = meets[0] if meets else max(better, key=lambda c: c[2].gain) if better else scored[0]
        log.info("auto_int8: starting from calibration_ranges=%s", pick[1])
        start = pick[2]
        start.gain, start.bound = 0.0, 0.0  # the search's full int8: every gain is over it
        return pick[0], pick[1], start

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
        dbg: Debugger,
        hold: Holdout,
        ranges: str,
        start: Step,
        a16w8: A16W8Files | None = None,
    ) -> list[Step]:
        """From full int8 (``start``), one more layer out of int8 (worst first) per step, by
        each ``fallback``, scored in LiteRT; stop at the first step where a candidate meets the
        budget with a gain over full int8 beyond the noise, or after ``max_float_layers``."""
        steps = [start]
        if start.meets:
            return steps  # full int8 already meets the budget
        shown: list[str] = []  # the last a16w8 candidate's layers: a repeat is not scored again
        for k in range(1, min(self.opts.max_float_layers, len(dbg.layers)) + 1):
            kept = dbg.worst(k)  # every op of the k worst layers
            names = list(dict.fromkeys(r["layer"] for r in kept))
            for fallback in self.opts.fallback:
                if fallback == "float":
                    flat = dbg.quantize([r["tensor_name"] for r in kept])
                    steps.append(hold.score(flat, k, "float", kept, names, start, ranges))
                elif a16w8 is not None and (sixteen := a16w8.present(names)) not in ([], shown):
                    shown = sixteen
                    if (flat := a16w8.flatbuffer(sixteen)) is None:
                        continue  # ai-edge-quantizer failed: said once, after the search
                    steps.append(hold.score(flat, k, "a16w8", kept, sixteen, start, ranges))
                else:
                    continue
                row = hold.trace[-1]
                log.info(
                    "auto_int8: %d layer(s) %s, holdout accuracy %.4f, agreement %.4f, gain over "
                    "int8 %+.4f (noise bound %.4f)",
                    *(k, fallback, row["holdout_accuracy"], row["agreement"]),
                    *(row["gain_over_int8"], row["noise_bound"]),
                )
            if any(s.k == k and s.done for s in steps):
                break
        return steps

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
