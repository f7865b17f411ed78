"""``recipe=mixed_a16w8``: integer execution throughout, but the layers the layer report ranks
worst get 16-bit activations (int8 weights) instead of float fallback.

The layers are ranked by the TFLite quantization debugger (each op's own int8 error against a
float twin fed the same inputs: :mod:`runner.recipes.layer_report`), with the activation ranges
ai-edge-quantizer uses (``mean`` of each calibration sample's own: :mod:`runner.recipes.ranges`).
ai-edge-quantizer then quantizes the float32 reference: every op static int8, the chosen
layers' ops static a16w8, with int8<->int16 QUANTIZE ops between. The file stays integer-only
(no float op); LiteRT runs the int16 ops with reference kernels, slower than the int8 ones, so
the row's latency says what the 16-bit layers cost.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Annotated

from pydantic import Field

from runner.artifacts import Artifact
from runner.errors import RunnerError
from runner.recipes.aeq import AEQRecipe
from runner.recipes.aeq_rules import Rule
from runner.recipes.base import CalibrationOptions, RecipeContext
from runner.recipes.conversion import full_integer_settings

log = logging.getLogger(__name__)


class MixedOptions(CalibrationOptions):
    """``recipe=mixed_a16w8``: how many (or which) layers get 16-bit activations."""

    sixteen_bit_layers: int = Field(
        4, ge=0, description="the worst layers of the layer report that get int16 activations"
    )
    layers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="layer names to give int16 activations (instead)"
    )
    validation_samples: int = Field(32, ge=1, description="samples of the per-tensor report")


def layer_scope(layer: str) -> str:
    """The AEQ scope regex of a Keras layer's ops: its name as a path component of the op's
    output tensor name (``model/block7a_se_expand/BiasAdd``, fused names joined by ``;``)."""
    return rf"(^|[/;]){re.escape(layer)}/"


class MixedA16W8Recipe(AEQRecipe):
    """Static int8 everywhere, a16w8 on the worst (or named) layers (see module)."""

    Options = MixedOptions  # type: ignore[assignment]
    opts: MixedOptions  # type: ignore[assignment]

    @property
    def rules(self) -> list[Rule]:
        return [Rule(mode="static", bits=8, activation_bits=8)]

    @property
    def embedding_lookup(self) -> bool:
        return False  # static rules: an Embedding's GATHER stays as it is

    def data_needed(self) -> str | None:
        return "calibrates activations and ranks the int8 layers on sample inputs"

    def rules_for(self, sixteen: list[str]) -> list[Rule]:
        """Static int8 everywhere, a16w8 in the ops of the ``sixteen`` layers."""
        return self.rules + [
            Rule(scope=layer_scope(layer), mode="static", bits=8, activation_bits=16)
            for layer in sixteen
        ]

    def chosen_layers(self, ctx: RecipeContext) -> list[str]:
        """``layers`` when given, else the ``sixteen_bit_layers`` worst of the layer report."""
        if self.opts.layers or not self.opts.sixteen_bit_layers:
            return list(self.opts.layers)
        # the ranking is the slow part (a calibration and an instrumented run): kept with the
        # baseline, so a sweep or a rerun with the same draw does not rank again
        spec = {"ranked_by": "layer_report/mean", "calibration": self.opts.draw_key}
        stored = ctx.store.get(f"{self.name}-ranking", spec) if ctx.store is not None else None
        if stored is not None and isinstance(stored[1].get("layers"), list):
            return stored[1]["layers"][: self.opts.sixteen_bit_layers]
        from runner.recipes.layer_report import Debugger, summary

        settings = full_integer_settings().replace(calibration_ranges="mean")
        dbg = Debugger.build(
            ctx.model, settings, self.opts.draw(ctx), ctx.dataset.is_text, ctx.convert_batch_size
        )
        log.info("%s: worst int8 layers: %s", self.name, summary(dbg.rows))
        if ctx.store is not None:
            ctx.store.put(f"{self.name}-ranking", spec, b"", {"layers": dbg.layers})  # in the meta
        return dbg.layers[: self.opts.sixteen_bit_layers]

    def produce(self, ctx: RecipeContext, rules: list[Rule] | None = None) -> list[Artifact]:
        reference = self.reference(ctx)  # its one-line error: install AEQ, or no reference
        layers = self.chosen_layers(ctx)
        scopes = op_scopes(reference)
        missing = [
            layer for layer in layers if not any(re.search(layer_scope(layer), s) for s in scopes)
        ]
        if missing and self.opts.layers:
            raise RunnerError(
                f"recipe.layers names {missing}, which have no op in none.tflite; "
                "use the names of layer_report.csv (evaluation.layer_report=true)"
            )
        sixteen = [layer for layer in layers if layer not in missing]
        (art,) = super().produce(ctx, self.rules_for(sixteen))
        what = (
            f"int16 activations in {len(sixteen)} layer(s): {', '.join(sixteen)}"
            if sixteen
            else "no layer got int16 activations: this is static int8"
        )
        if missing:  # ranked by the converter's graph, absent from AEQ's (fused away)
            what += f" ({', '.join(missing)} of the layer report: no op in none.tflite)"
        return [dataclasses.replace(art, note=f"{what}; {art.note}")]


def op_scopes(flatbuffer: bytes) -> list[str]:
    """AEQ's scope name (the output tensor's name) of every op of the main graph."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as utils

    from runner import tflite

    sg = tflite.read(flatbuffer).subgraphs[0]
    return [utils.get_op_scope(op, sg.tensors) for op in sg.operators]


class A16W8Files:
    """``auto_int8``'s integer-only candidates: static int8 files of the run's float32 reference
    with int16 activations in given layers, calibrated by ai-edge-quantizer once for them all,
    with the activation range estimator (``ranges``) the converter's candidates use.

    Raises :class:`RunnerError` (its one line says why) when they cannot be made here: no
    ai-edge-quantizer, or no float32 reference.
    """

    def __init__(
        self, ctx: RecipeContext, calibration: CalibrationOptions, ranges: str = "minmax"
    ) -> None:
        self.recipe = MixedA16W8Recipe(
            "auto_int8",
            MixedOptions(
                calibration_samples=calibration.calibration_samples,
                calibration_seed=calibration.calibration_seed,
                sixteen_bit_layers=0,
            ),
        )
        self.reference = self.recipe.reference(ctx)
        self.ctx, self.ranges = ctx, ranges
        self.scopes = op_scopes(self.reference)
        self._calibration = None
        self.failed = ""  # why ai-edge-quantizer could not make a candidate

    def present(self, layers: list[str]) -> list[str]:
        """The ``layers`` that have an op in the reference (the converter's report may name
        layers whose ops were fused away)."""
        return [
            layer for layer in layers if any(re.search(layer_scope(layer), s) for s in self.scopes)
        ]

    def flatbuffer(self, sixteen: list[str]) -> bytes | None:
        """Static int8 with int16 activations in the ops of ``sixteen``; None when
        ai-edge-quantizer fails on this model (its reason in :attr:`failed`; later calls do not
        try again)."""
        if self.failed:
            return None
        try:
            flatbuffer, self._calibration = self.recipe.quantize_calibrated(
                self.reference, self.ctx, self.recipe.rules_for(sixteen), self._calibration,
                self.ranges,
            )  # fmt: skip
        except RunnerError as e:
            self.failed = str(e)
            return None
        return flatbuffer
