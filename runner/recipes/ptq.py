"""Post-training quantization: one TFLite converter call with the recipe's ``converter`` settings.

``none``, ``dynamic_range``, ``float16``, ``full_integer``, ``full_integer_per_tensor`` and
``int16x8`` are all this class: a new post-training recipe is a new YAML file, nothing else.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from pydantic import Field

from runner.artifacts import Artifact, LayerRows
from runner.recipes.base import PROBE_SAMPLES, CalibrationOptions, RecipeBase, RecipeContext
from runner.recipes.conversion import ConverterOptions
from runner.recipes.layer_report import Debugger
from runner.recipes.recurrent import has_recurrent
from runner.recipes.routes import convert_checked

log = logging.getLogger(__name__)


class PTQOptions(CalibrationOptions):
    """A post-training recipe's options (``conf/recipe/dynamic_range.yaml`` ...)."""

    converter: ConverterOptions = Field(
        default_factory=ConverterOptions, description="the TFLite converter's settings"
    )


class ConverterRecipe(RecipeBase):
    """A post-training recipe: one TFLite converter call with the recipe's ``converter`` settings."""

    Options = PTQOptions
    opts: PTQOptions

    @property
    def converter(self) -> ConverterOptions:
        """The converter settings as the conversion code takes them."""
        return self.opts.converter

    def data_needed(self) -> str | None:
        if self.converter.representative_dataset:
            return "calibrates activations on sample inputs"
        return None

    def layer_report(self, ctx: RecipeContext, requested: bool) -> LayerRows | None:
        """Per-layer int8 error of this recipe's conversion, made when ``requested``."""
        if not requested:
            return None
        return Debugger.build(
            ctx.model,
            self.converter,
            self.calibration(ctx),
            ctx.dataset.is_text,
            ctx.convert_batch_size,
        ).rows

    def calibration(self, ctx: RecipeContext) -> np.ndarray | None:
        """The representative data, when the converter settings ask for it."""
        return self.opts.draw(ctx) if self.converter.representative_dataset else None

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        """Convert (or reuse this baseline's earlier conversion with the same settings) and write."""
        recurrent = has_recurrent(ctx.model)
        spec = {
            "options": self.converter.model_dump(),
            "calibration": self.opts.draw_key,
            "batch": ctx.convert_batch_size,
        } | ({"recurrent": ctx.recurrent, "probe": PROBE_SAMPLES} if recurrent else {})
        t0 = time.perf_counter()
        stored = ctx.store.get(self.name, spec) if ctx.store is not None else None
        if stored is not None:
            flatbuffer, meta = stored
            conversion = meta.get("conversion")
            log.info("recipe %s: reusing the conversion cached with the baseline", self.name)
        else:
            done = convert_checked(
                ctx.model,
                self.converter,
                self.calibration(ctx),
                token_ids=ctx.dataset.is_text,
                batch_size=ctx.convert_batch_size,
                recurrent=ctx.recurrent,
                probe=ctx.probe() if recurrent else None,
                quantized=self.quantized,
            )
            flatbuffer = done.flatbuffer
            conversion = done.as_dict() if done.route else None
            if ctx.store is not None:
                ctx.store.put(self.name, spec, flatbuffer, {"conversion": conversion})
        seconds = time.perf_counter() - t0
        return [self.write_tflite(ctx, flatbuffer, seconds, conversion=conversion)]
