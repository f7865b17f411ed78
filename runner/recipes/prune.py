"""Weight compression beyond int8 (tensorflow-model-optimization's other half), as recipes.

``prune`` sets the smallest weights to exactly zero (magnitude pruning to ``sparsity``, or
structured ``m_by_n`` = 2:4) while fine-tuning; ``cluster`` shares ``clusters`` values per
layer (k-means++). Both fine-tune the cached float baseline, strip the wrappers, and write the
file with a post-training recipe of ``conf/recipe`` (``export``: full_integer by default), so the
zeros and the shared values survive into int8 weights. The raw flatbuffer does not shrink: the
gain is in the size a user downloads (the ``size_gzip_bytes`` column); ``sparsity`` and
``max_unique_per_channel`` are read back from the written file. Keras 3 models enter through the
same tf_keras rebuild as QAT. tfmot's registries leave DepthwiseConv2D dense (MobileNets' and
EfficientNets' depthwise kernels): the recipes swap it for a subclass that declares its kernel
prunable and clusterable, and back after stripping. Layers left dense (``skip_layers``, any
other weighted layer) are named in the row's note.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from runner.artifacts import Artifact
from runner.console import check_interrupt
from runner.errors import RunnerError, summarize_error
from runner.recipes.base import CalibrationOptions, RecipeBase, RecipeContext, check_layer_names
from runner.recipes.compressible import kind, swap_depthwise
from runner.recipes.routes import convert_checked
from runner.schema import tags

log = logging.getLogger(__name__)

# the layers the recipes prune and cluster (by class name); any other keeps its weights dense
SUPPORTED = ("Conv1D", "Conv2D", "Dense", "DepthwiseConv2D")
# fine-tuning that ends below this share of the float model's validation accuracy collapsed
COLLAPSE = 0.5


class FineTuneOptions(CalibrationOptions):
    """What ``prune`` and ``cluster`` share: fine-tuning, then a post-training export."""

    epochs: int = Field(2, ge=1, description="fine-tuning epochs")
    learning_rate_scale: float = Field(
        0.1, gt=0, description="fine-tuning learning rate = train.learning_rate x this"
    )
    batch_size: int | None = Field(None, ge=1, description="null: train.batch_size")
    skip_layers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        **tags(names="layer"),
        description="layer names left dense (the guide: the first conv, the head)",
    )
    export: str = Field(
        "full_integer",
        **tags(names="recipe"),
        min_length=1,
        description="the post-training recipe (conf/recipe) that writes the file: none, float16, "
        "dynamic_range, full_integer ...",
    )
    storage: Literal["dense", "sparse"] = Field(
        "dense",
        description="sparse: the converter's EXPERIMENTAL_SPARSITY storage, kept only when LiteRT's "
        "default interpreter runs the file (else the dense file, said in the note)",
    )


class PruneOptions(FineTuneOptions):
    sparsity: float = Field(
        0.5, gt=0, lt=1, description="share of each layer's weights set to zero"
    )
    m_by_n: list[int] | None = Field(
        None, description="structured sparsity [m, n]: m zeros in every n weights (e.g. [2, 4])"
    )

    @field_validator("m_by_n")
    @classmethod
    def _pair(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 2 or not 0 < v[0] < v[1]):
            raise ValueError("expected [m, n] with 0 < m < n, e.g. [2, 4]")
        return v


class ClusterOptions(FineTuneOptions):
    clusters: int = Field(16, ge=2, le=256, description="distinct values each layer keeps")
    preserve_sparsity: bool = Field(
        False, description="keep a sparse model's zeros while clustering"
    )


class _FineTuneRecipe(RecipeBase):
    """Wrap, fine-tune, strip, export with a post-training recipe; verify in the file."""

    opts: FineTuneOptions
    # the layer kinds compressed (a collaborative chain narrows them to what QAT preserves)
    kinds: tuple[str, ...] = SUPPORTED

    def compresses(self, layer) -> bool:
        return kind(layer) in self.kinds and layer.name not in self.opts.skip_layers

    def data_needed(self) -> str | None:
        return "fine-tunes on labelled training samples"

    def wrap(self, model, total_steps: int):  # -> (wrapped model, its callbacks)
        raise NotImplementedError

    def check(self, model) -> None:
        """Raise a RunnerError for an option this model cannot take (before fine-tuning)."""

    def strip(self, model):
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        from runner.recipes.qat.wrap import qat_ready

        check_layer_names(ctx.model, self.opts.skip_layers, "recipe.skip_layers")
        self._export_recipe(ctx)  # a bad export is said before fine-tuning, not after
        calib = self.opts.draw(ctx)
        model = qat_ready(ctx.model, calib)
        self.check(model)
        dense = [
            f"{layer.name} ({type(layer).__name__})"
            for layer in model.layers
            if layer.get_weights()
            and not self.compresses(layer)
            and len(layer.get_weights()[0].shape) >= 2
        ]
        t0 = time.perf_counter()
        tuned, seconds, scores = self.fine_tune(model, ctx)
        export = self._export_recipe(ctx)
        t1 = time.perf_counter()
        flatbuffer, stored = self._convert(tuned, export, ctx)
        note = f"{self.describe()}, fine-tuned {self.opts.epochs} epoch(s), written by {self.opts.export}"
        note += f"; {stored}" if stored else ""
        note += f"; validation accuracy {scores[0]:.4f} float -> {scores[1]:.4f} after"
        if dense:
            note += f"; {len(dense)} layer(s) left dense: {', '.join(dense[:6])}"
            note += f" and {len(dense) - 6} more" if len(dense) > 6 else ""
        log.info("recipe %s: %s (%.1fs)", self.name, note, time.perf_counter() - t0)
        return [
            self.write_tflite(
                ctx, flatbuffer, time.perf_counter() - t1, train_seconds=seconds, note=note
            )
        ]

    def _convert(self, model, export, ctx: RecipeContext) -> tuple[bytes, str]:
        """(the file, what its storage note says): sparse storage only where LiteRT runs it."""

        from runner.evaluation.interpreter import TFLiteModel

        calib = export.opts.draw(ctx) if export.converter.representative_dataset else None
        kw = {"token_ids": ctx.dataset.is_text, "batch_size": ctx.convert_batch_size}
        kw |= {"recurrent": ctx.recurrent, "quantized": True}
        if self.opts.storage == "sparse":
            settings = export.converter
            sparse = settings.replace(
                optimizations=(*settings.optimizations, "EXPERIMENTAL_SPARSITY")
            )
            data = convert_checked(model, sparse, calib, **kw).flatbuffer
            try:  # what a phone's default interpreter does with it: load, allocate, run
                TFLiteModel(content=data).predict(ctx.dataset.test.x[:2], ctx.scaling)
                return data, "stored sparse (EXPERIMENTAL_SPARSITY)"
            except (RuntimeError, ValueError) as e:
                refused = summarize_error(e).splitlines()[0][:160]
                log.warning("recipe %s: sparse storage refused by LiteRT (%s)", self.name, refused)
                stored = (
                    "sparse storage refused by LiteRT's default interpreter "
                    f"({refused}): the dense file is shipped"
                )
                return convert_checked(model, settings, calib, **kw).flatbuffer, stored
        return convert_checked(model, export.converter, calib, **kw).flatbuffer, ""

    def _export_recipe(self, ctx: RecipeContext):
        try:
            export = ctx.recipe(self.opts.export)
        except RunnerError:
            raise
        except Exception:  # noqa: BLE001 - Hydra names the valid choices
            raise RunnerError(
                f"recipe.export={self.opts.export}: not a recipe of conf/recipe "
                "(none, float16, dynamic_range, full_integer, int16x8 ...)"
            ) from None
        if not hasattr(export, "converter"):
            raise RunnerError(
                f"recipe.export={self.opts.export}: expected a post-training converter recipe "
                "(none, float16, dynamic_range, full_integer, int16x8)"
            )
        return export

    def fine_tune(self, model, ctx: RecipeContext):
        """(stripped model, seconds, (float val accuracy, tuned val accuracy))."""
        import tf_keras as keras

        from runner.evaluation.metrics import labels_from_outputs, predict_keras
        from runner.train import TrainConfig, batch_sequence, loss_for, make_optimizer

        cfg = TrainConfig.from_mapping(ctx.train_cfg or {})
        fit, val, _ = ctx.held_out()
        val = val if val is not None else fit
        batch = int(self.opts.batch_size or cfg.batch_size)
        steps = max(1, math.ceil(len(fit) / batch))
        keras.utils.set_random_seed(cfg.seed)
        own = swap_depthwise(model, True)  # the wrappers train this copy, never the baseline
        wrapped, callbacks = self.wrap(own, steps * self.opts.epochs)
        for layer in wrapped.layers:  # few steps cannot settle BatchNorm statistics
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        wrapped.compile(
            optimizer=make_optimizer(
                cfg.optimizer, cfg.learning_rate * self.opts.learning_rate_scale
            ),
            loss=loss_for(wrapped),
        )
        seq = batch_sequence(fit, batch, ctx.scaling, True, cfg.seed, steps=steps)
        stop = keras.callbacks.LambdaCallback(on_train_batch_end=check_interrupt)
        t0 = time.perf_counter()
        wrapped.fit(seq, epochs=self.opts.epochs, verbose=0, callbacks=[*callbacks, stop])
        seconds = time.perf_counter() - t0
        stripped = self.strip(wrapped)
        # a fresh graph: the stripped model shares its layers with the wrapped one, and a later
        # clone (QAT's annotation) of a layer with two graphs' nodes comes out disconnected
        tuned = swap_depthwise(stripped, False)

        def accuracy(m) -> float:
            import numpy as np

            return float(
                np.mean(labels_from_outputs(predict_keras(m, val.x, ctx.scaling)) == val.y)
            )

        before, after = accuracy(model), accuracy(tuned)
        chance = 1.0 / max(ctx.dataset.num_classes, 2)
        if after < max(COLLAPSE * before, chance * 1.5) and before > chance * 1.5:
            raise RunnerError(
                f"{self.describe()} collapsed the model: validation accuracy {after:.4f} after "
                f"fine-tuning (float {before:.4f}); lower the compression, or raise recipe.epochs"
            )
        return tuned, seconds, (before, after)


class PruneRecipe(_FineTuneRecipe):
    """Magnitude pruning to ``sparsity`` (or ``m_by_n``), fine-tuned, exported."""

    Options = PruneOptions
    opts: PruneOptions

    def describe(self) -> str:
        if self.opts.m_by_n:
            m, n = self.opts.m_by_n
            return f"{m}:{n} structured pruning"
        return f"pruning to {self.opts.sparsity:g} sparsity"

    def wrap(self, model, total_steps: int):
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras

        s = tfmot.sparsity.keras
        freq = max(1, total_steps // 10)
        schedule = (
            s.ConstantSparsity(0.5, begin_step=0, frequency=freq)
            if self.opts.m_by_n
            else s.PolynomialDecay(0.0, self.opts.sparsity, 0, end_step=freq * 6, frequency=freq)
        )
        kw: dict[str, Any] = {"pruning_schedule": schedule}
        if self.opts.m_by_n:
            kw["sparsity_m_by_n"] = tuple(self.opts.m_by_n)

        def clone(layer):
            if self.compresses(layer):
                return s.prune_low_magnitude(layer, **kw)
            return layer

        return keras.models.clone_model(model, clone_function=clone), [s.UpdatePruningStep()]

    def strip(self, model):
        import tensorflow_model_optimization as tfmot

        return tfmot.sparsity.keras.strip_pruning(model)


class ClusterRecipe(_FineTuneRecipe):
    """Weight clustering to ``clusters`` shared values per layer, fine-tuned, exported."""

    Options = ClusterOptions
    opts: ClusterOptions

    def check(self, model) -> None:
        small = [
            (layer.name, layer.get_weights()[0].size)
            for layer in model.layers
            if self.compresses(layer)
            and layer.get_weights()
            and layer.get_weights()[0].size < self.opts.clusters
        ]
        if small:
            fewest = min(n for _, n in small)
            names = ", ".join(f"{name} ({n} weights)" for name, n in small)
            raise RunnerError(
                f"recipe.clusters={self.opts.clusters}: more clusters than weights in {names}; "
                f"set recipe.clusters<={fewest} or leave them dense with "
                f"recipe.skip_layers=[{','.join(name for name, _ in small)}]"
            )

    def describe(self) -> str:
        return f"clustering to {self.opts.clusters} values" + (
            " (zeros kept)" if self.opts.preserve_sparsity else ""
        )

    def wrap(self, model, total_steps: int):
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras

        c = tfmot.clustering.keras
        kw = {
            "number_of_clusters": self.opts.clusters,
            "cluster_centroids_init": c.CentroidInitialization.KMEANS_PLUS_PLUS,
        }
        if self.opts.preserve_sparsity:
            kw["preserve_sparsity"] = True

        def clone(layer):
            if self.compresses(layer):
                wrapped = c.cluster_weights(layer, **kw)
                if wrapped is None:  # tfmot returns None for objects it cannot cluster
                    raise RunnerError(
                        f"tfmot could not cluster layer {layer.name} ({type(layer).__name__})"
                    )
                return wrapped
            return layer

        return keras.models.clone_model(model, clone_function=clone), []

    def strip(self, model):
        import tensorflow_model_optimization as tfmot

        return tfmot.clustering.keras.strip_clustering(model)
