"""Collaborative optimization (tfmot's guide): pruning and/or clustering, each fine-tuned, then
quantization-aware training with the scheme that preserves them (PQAT, CQAT, PCQAT).

``prune_qat``, ``cluster_qat`` and ``prune_cluster_qat`` are this one recipe with ``steps`` set;
the compression steps are :mod:`runner.recipes.prune`'s, narrowed to the layer kinds the
preserving schemes keep (:data:`PRESERVED_BY_QAT`); the QAT part is :mod:`runner.recipes.qat`'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from runner.recipes.base import RecipeContext
from runner.recipes.compressible import known_layers_only
from runner.recipes.conversion import ConverterOptions, full_integer_settings
from runner.recipes.prune import ClusterOptions, ClusterRecipe, PruneOptions, PruneRecipe
from runner.recipes.qat import QATOptions, QATRecipe

# tfmot's collaborative schemes keep zeros and clusters in Conv2D and Dense only: QAT moves a
# DepthwiseConv2D's weights off them, so the collaborative recipes leave it dense
PRESERVED_BY_QAT = ("Conv1D", "Conv2D", "Dense")

Steps = Literal["prune", "cluster", "prune_cluster"]


class CollaborativeOptions(QATOptions):
    """``prune_qat`` / ``cluster_qat`` / ``prune_cluster_qat``: compress, then QAT that keeps it."""

    steps: Steps = Field("prune", description="what is done before QAT: prune, cluster or both")
    sparsity: float = Field(0.5, gt=0, lt=1, description="pruning: share of weights set to zero")
    clusters: int = Field(16, ge=2, le=256, description="clustering: distinct values per layer")
    compress_epochs: int = Field(2, ge=1, description="fine-tuning epochs of each compression step")
    compress_learning_rate_scale: float = Field(
        0.1,
        gt=0,
        description="each compression step's fine-tuning rate = train.learning_rate x this (the "
        "prune and cluster recipes' own default); QAT then runs at learning_rate_scale",
    )
    fold_batch_norm: bool = Field(
        True,
        description="fold each BatchNorm into the conv/dense before it first (QAT's measured "
        "default); steps with clustering must set false: folding scales each output channel of "
        "the clustered kernels, so the clusters would no longer share values",
    )
    converter: ConverterOptions = Field(
        default_factory=full_integer_settings,
        description="the export's TFLite converter settings (full integer, int8 I/O)",
    )

    @model_validator(mode="after")
    def _clusters_unfolded(self) -> CollaborativeOptions:
        if self.fold_batch_norm and self.steps != "prune":
            raise ValueError(
                f"recipe.fold_batch_norm=true with steps={self.steps}: folding scales each output "
                "channel of the clustered kernels, so the clusters would no longer share values; "
                "set recipe.fold_batch_norm=false"
            )
        return self


class CollaborativeRecipe(QATRecipe):
    """The guide's collaborative optimization: pruning and/or clustering, each fine-tuned, then
    quantization-aware training with the scheme that preserves them (PQAT, CQAT, PCQAT), the
    best epoch kept on the real int8 file as ``qat`` does."""

    Options = CollaborativeOptions
    opts: CollaborativeOptions
    # the cluster-preserving scheme's extra quantizer weights do not load back into a .h5
    # (tfmot's quantize_scope does not know them): the .tflite is the artifact
    keras_file = False

    def start_model(self, ctx: RecipeContext, calib) -> tuple[Any, float, str]:
        from runner.recipes.qat.wrap import qat_ready

        o, model, seconds, done = self.opts, qat_ready(ctx.model, calib), 0.0, []
        common: dict[str, Any] = {
            "epochs": o.compress_epochs,
            "learning_rate_scale": o.compress_learning_rate_scale,
        }
        common |= {"skip_layers": list(o.skip_layers), "calibration_seed": o.calibration_seed}
        if o.steps in ("prune", "prune_cluster"):
            step = PruneRecipe(self.meta, PruneOptions(sparsity=o.sparsity, **common))
            step.kinds = PRESERVED_BY_QAT
            model, s, scores = step.fine_tune(model, ctx)
            seconds += s
            done.append(f"{step.describe()} (validation {scores[0]:.4f} -> {scores[1]:.4f})")
        if o.steps in ("cluster", "prune_cluster"):
            keep = o.steps == "prune_cluster"
            step = ClusterRecipe(
                self.meta, ClusterOptions(clusters=o.clusters, preserve_sparsity=keep, **common)
            )
            step.kinds = PRESERVED_BY_QAT
            step.check(model)
            model, s, scores = step.fine_tune(model, ctx)
            seconds += s
            done.append(f"{step.describe()} (validation {scores[0]:.4f} -> {scores[1]:.4f})")
        return model, seconds, ", then ".join(done) + ", then QAT preserving it"

    def scheme(self) -> Any:
        import tensorflow_model_optimization as tfmot

        combine = tfmot.experimental.combine
        if self.opts.steps == "prune":
            return known_layers_only(combine.Default8BitPrunePreserveQuantizeScheme())
        return known_layers_only(
            combine.Default8BitClusterPreserveQuantizeScheme(
                preserve_sparsity=self.opts.steps == "prune_cluster"
            )
        )
