"""ai-edge-quantizer (AEQ) as a second backend: int4/int8 weights, weight-only, dynamic, static
and mixed precision, applied to the float32 reference ``.tflite`` every run already makes.

The AEQ recipe is data in our YAML (``rules``), each rule one scope::

    rules:
      - scope: ".*"            # regex over op names (the Keras layer path in the op's output
                               #   tensor name), or first / last: the first / last op with weights
        op: "*"                # a TFLite op (CONV_2D, FULLY_CONNECTED, ...) or * (all AEQ supports)
        mode: weight_only      # weight_only | dynamic | static | none (leave float)
        bits: 4                # weight bits: 4 or 8
        granularity: channelwise   # channelwise | tensorwise | blockwise_32|64|128|256
        activation_bits: 8     # static only: 8 or 16
        algorithm: min_max_uniform_quantize   # or octav, mse, ... (AEQ's AlgorithmName values)

Later rules win where scopes overlap (AEQ's own order). The reference is never converted again;
what AEQ writes is scored in LiteRT like every other artifact. Ops AEQ leaves with float weights
(an Embedding's GATHER in weight-only/dynamic modes, a fused LSTM) are named in ``float_layers``.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from runner import tflite
from runner.artifacts import Artifact, LayerRows
from runner.errors import RunnerError
from runner.recipes.aeq_rules import (
    Rule,
    add_rule,
    scope_regex,
    tensor_results,
    weight_ops,
)
from runner.recipes.base import CalibrationOptions, RecipeBase, RecipeContext, float_layers_text
from runner.recipes.ranges import aeq_calibration

log = logging.getLogger(__name__)

INSTALL = (
    "recipe {name} needs ai-edge-quantizer, which is not installed: "
    'pip install -e ".[aeq]"  (or pip install ai-edge-quantizer==0.10.0)'
)
# Part of every cached result's key: bumped when the same rules would give another file.
SPEC_VERSION = 5


class AEQOptions(CalibrationOptions):
    """An ai-edge-quantizer recipe's options (``conf/recipe/int4_weight_only.yaml`` ...);
    the calibration draw is used by ``mode: static`` rules only."""

    rules: Annotated[list[Rule], Field(min_length=1)] = Field(
        description="scopes and their quantization, later rules win (see the recipes page)"
    )
    validation_samples: int = Field(32, ge=1, description="samples of the per-tensor report")
    embedding_lookup: bool = Field(
        True, description="weight-only/dynamic: quantize Embedding tables (as EMBEDDING_LOOKUP)"
    )


def _aeq():
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    except ImportError:
        return None
    return quantizer, recipe_manager, qtyping


def aeq_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-quantizer")
    except metadata.PackageNotFoundError:
        return "not installed"


class AEQRecipe(RecipeBase):
    """Quantize the float32 reference ``.tflite`` with ai-edge-quantizer's rules (see module)."""

    Options = AEQOptions
    needs_reference = True

    opts: AEQOptions

    @property
    def rules(self) -> list[Rule]:
        return self.opts.rules

    @property
    def embedding_lookup(self) -> bool:
        """Weight-only / dynamic rules: Embedding GATHERs become EMBEDDING_LOOKUPs AEQ quantizes."""
        return self.opts.embedding_lookup and not self.static

    def data_needed(self) -> str | None:
        if self.static:
            return "calibrates activations on sample inputs"
        return None

    @property
    def static(self) -> bool:
        return any(r.mode == "static" for r in self.rules)

    def reference(self, ctx: RecipeContext) -> bytes:
        """The run's float32 reference ``.tflite``; a :class:`RunnerError` saying why when
        ai-edge-quantizer is not installed or the run has no float32 reference."""
        if _aeq() is None:
            raise RunnerError(INSTALL.format(name=self.name))
        if ctx.reference_path is None or not ctx.reference_path.is_file():
            raise RunnerError(
                f"recipe {self.name} quantizes the float32 reference .tflite, which this run "
                "could not make (see the none.tflite row)"
            )
        reference = ctx.reference_path.read_bytes()
        if not tflite.all_float32(reference):
            raise RunnerError(
                f"recipe {self.name} quantizes a float32 reference, but this run's reference "
                f"{ctx.reference_path.name} holds quantized or float16 tensors: use "
                "recipe@reference=none with it"
            )
        return reference

    def produce(self, ctx: RecipeContext, rules: list[Rule] | None = None) -> list[Artifact]:
        """Quantize the reference with ``rules`` (default: the recipe's own) and write it."""
        reference = self.reference(ctx)
        rules = self.rules if rules is None else rules
        spec = {
            "backend": "ai-edge-quantizer",
            "spec_version": SPEC_VERSION,
            "version": aeq_version(),
            "reference": _sha(reference),
            "rules": [r.model_dump() for r in rules],
            "embedding_lookup": self.embedding_lookup,
            "calibration": self.opts.draw_key if self.static else None,
        }
        t0 = time.perf_counter()
        stored = ctx.store.get(self.name, spec) if ctx.store is not None else None
        if stored is not None:
            flatbuffer, meta = stored
            log.info("recipe %s: reusing the AEQ result cached with the baseline", self.name)
        else:
            source, rewritten = (
                tflite.gather_as_embedding_lookup(reference)
                if self.embedding_lookup
                else (reference, [])
            )
            flatbuffer = self.quantize(source, ctx, rules)
            meta = {"float_layers": tflite.float_weight_ops(flatbuffer), "lookups": rewritten}
            if ctx.store is not None:
                ctx.store.put(self.name, spec, flatbuffer, meta)
        seconds = time.perf_counter() - t0
        floats = list(meta.get("float_layers") or [])
        note = f"ai-edge-quantizer {aeq_version()} on none.tflite"
        if meta.get("lookups"):
            note += (
                f"; {', '.join(meta['lookups'])} GATHER run as EMBEDDING_LOOKUP (same numbers) "
                "so its table is quantized"
            )
        if floats:
            note += f"; it left float weights in {', '.join(floats)}"
            log.info("recipe %s: float weights left in %s", self.name, ", ".join(floats))
        return [
            self.write_tflite(
                ctx, flatbuffer, seconds, float_layers=float_layers_text(floats), note=note
            )
        ]

    def quantize(
        self, reference: bytes, ctx: RecipeContext, rules: list[Rule] | None = None
    ) -> bytes:
        """The AEQ result for ``reference`` (calibrated on our representative data if static);
        its progress bar and INFO lines are held back like TensorFlow's (``verbose=true``)."""
        return self.quantize_calibrated(reference, ctx, self.rules if rules is None else rules)[0]

    def quantize_calibrated(
        self,
        reference: bytes,
        ctx: RecipeContext,
        rules: list[Rule],
        calibration: Any = None,
        ranges: str | None = None,
    ) -> tuple[bytes, Any]:
        """(the AEQ result, its calibration): ``calibration`` from an earlier call on the same
        reference and draw is reused (AEQ records each tensor's min/max whatever the bits, so
        one calibration serves every mix of int8 and int16 activations). ``ranges``: calibrate
        with this estimator (``minmax`` or ``mean`` of the samples' own, as the converter's
        ``calibration_ranges``) instead of AEQ's moving average."""
        from runner.console import filtered

        quantizer, recipe_manager, qtyping = _aeq()  # type: ignore[misc]
        manager = recipe_manager.RecipeManager()
        ops = weight_ops(reference)
        try:
            for i, rule in enumerate(rules):
                try:
                    add_rule(manager, rule, scope_regex(rule.scope, ops), qtyping)
                except (ValueError, KeyError) as e:
                    raise RunnerError(
                        f"recipe.rules[{i}]: {' '.join(str(e).split())[:200]}"
                    ) from None
            q = quantizer.Quantizer(bytearray(reference), manager.get_quantization_recipe())
            with filtered():  # AEQ's progress bar and INFO lines, held back like TensorFlow's
                if q.need_calibration and calibration is None:
                    data = self._signature_data(reference, ctx, self.opts.calibration_samples)
                    calibration = (
                        q.calibrate(data, num_threads=1)
                        if ranges is None
                        else aeq_calibration(reference, manager, data, ranges)
                    )
                result = q.quantize(
                    calibration if q.need_calibration else None, enable_progress_report=False
                )
        except RunnerError:
            raise
        except Exception as e:  # noqa: BLE001 - AEQ's own reason, in one line, is the row's error
            raise RunnerError(
                f"ai-edge-quantizer failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
            ) from None
        flatbuffer = bytes(result.quantized_model)
        custom = tflite.custom_ops(flatbuffer)
        if custom:  # LiteRT has no kernel for them: running the file would crash the process
            raise RunnerError(
                f"ai-edge-quantizer wrote custom op(s) {', '.join(custom)}, which LiteRT cannot run "
                "here; pick another recipe.rules[].algorithm (e.g. min_max_uniform_quantize, octav)"
            )
        return flatbuffer, calibration

    def layer_report(self, ctx: RecipeContext, requested: bool) -> LayerRows | None:
        """Per-tensor error of the AEQ file against the reference (AEQ's own validation), worst
        first, on ``validation_samples`` calibration inputs; made when ``requested``."""
        if not requested or _aeq() is None or ctx.reference_path is None:
            return None
        quantizer, _, _ = _aeq()  # type: ignore[misc]
        reference = ctx.reference_path.read_bytes()
        if self.embedding_lookup:  # the graph AEQ quantized, op for op
            reference, _ = tflite.gather_as_embedding_lookup(reference)
        quantized = (ctx.models_dir / f"{self.name}.tflite").read_bytes()
        q = quantizer.Quantizer(bytearray(reference), previous_quantized_model=bytearray(quantized))
        from ai_edge_quantizer.utils import validation_utils

        result = q.validate(
            self._signature_data(reference, ctx, self.opts.validation_samples),
            error_metrics=[
                validation_utils.ValidationErrorMetric.MSE,
                validation_utils.ValidationErrorMetric.SNR,
            ],
            num_threads=1,
        )
        producers = tflite.tensor_producers(reference)
        rows = []
        for name, metrics in tensor_results(result).items():
            snr = metrics.get("snr", 0.0)
            rows.append(
                {
                    "layer": tflite.layer_name(name),
                    "op": producers.get(name, "?"),
                    # SNR is signal power / noise power: RMSE over the float tensor's RMS
                    "relative_rmse": float(1 / np.sqrt(snr)) if snr > 0 else float("inf"),
                    "rmse": float(np.sqrt(metrics.get("mse", 0.0))),
                    "tensor_name": name,
                }
            )
        rows.sort(key=lambda r: -r["relative_rmse"])
        for i, r in enumerate(rows):
            r["rank"] = i + 1
        return rows

    def _signature_data(self, reference: bytes, ctx: RecipeContext, n: int) -> dict[str, list]:
        """Representative inputs as AEQ takes them: {signature: [{input name: one sample}]}."""
        from ai_edge_litert.interpreter import Interpreter

        from runner.data import calibration_sample

        interp = Interpreter(model_content=reference)
        signatures = interp.get_signature_list()
        if not signatures:
            raise RunnerError("the float32 reference has no signature; AEQ needs one")
        key, sig = next(iter(signatures.items()))
        (input_name,) = sig["inputs"]
        runner = interp.get_signature_runner(key)
        dtype = runner.get_input_details()[input_name]["dtype"]
        raw = calibration_sample(ctx.dataset.train, n, self.opts.calibration_seed)
        x = np.asarray(ctx.scaling(raw)).astype(dtype)
        return {key: [{input_name: x[i : i + 1]} for i in range(len(x))]}


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
