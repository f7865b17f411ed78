"""Post-training quantization: one TFLite converter call with the recipe's ``converter`` settings.

``none``, ``dynamic_range``, ``float16``, ``full_integer``, ``full_integer_per_tensor`` and
``int16x8`` are all this class: a new post-training recipe is a new YAML file, nothing else.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
from pydantic import Field

from runner.data import calibration_sample
from runner.recipes.base import (
    PROBE_SAMPLES,
    Artifact,
    LayerRows,
    RecipeBase,
    RecipeContext,
    RecipeMeta,
)
from runner.recipes.conversion import ConverterSettings, convert_checked
from runner.recipes.debugger import Debugger
from runner.recipes.recurrent import has_recurrent
from runner.schema import Options

log = logging.getLogger(__name__)


class PTQOptions(Options):
    """A post-training recipe's options (``conf/recipe/dynamic_range.yaml`` ...)."""

    converter: ConverterSettings = Field(
        default_factory=ConverterSettings, description="the TFLite converter's settings"
    )
    calibration_samples: int = Field(
        200, ge=1, description="training samples that calibrate activation ranges (sweepable)"
    )
    calibration_seed: int = Field(0, ge=0, description="which samples are drawn (sweepable)")


class ConverterRecipe(RecipeBase):
    """A post-training recipe: one TFLite converter call with the recipe's ``converter`` settings."""

    Options = PTQOptions

    def __init__(
        self,
        meta: RecipeMeta | str | None = None,
        converter: ConverterSettings | None = None,
        calibration_samples: int = 200,
        calibration_seed: int = 0,
    ) -> None:
        super().__init__(meta)
        self.options = (converter or ConverterSettings()).to_options()
        self.calibration_samples = int(calibration_samples)
        self.calibration_seed = int(calibration_seed)

    def data_needed(self) -> str | None:
        if self.options.representative_dataset:
            return "calibrates activations on sample inputs"
        return None

    def layer_report(self, ctx: RecipeContext, requested: bool) -> LayerRows | None:
        """Per-layer int8 error of this recipe's conversion, made when ``requested``."""
        if not requested:
            return None
        return Debugger.build(
            ctx.model,
            self.options,
            self.calibration(ctx),
            ctx.dataset.is_text,
            ctx.convert_batch_size,
        ).rows

    def calibration(self, ctx: RecipeContext) -> np.ndarray | None:
        if not self.options.representative_dataset:
            return None
        raw = calibration_sample(ctx.dataset.train, self.calibration_samples, self.calibration_seed)
        return ctx.scaling(raw)

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        """Convert (or reuse this baseline's earlier conversion with the same settings) and write."""
        recurrent = has_recurrent(ctx.model)
        spec = {
            "options": dataclasses.asdict(self.options),
            "calibration": [self.calibration_samples, self.calibration_seed],
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
                self.options,
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
