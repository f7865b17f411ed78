"""The options of the QAT family (``qat``, ``qat_mixed`` and the collaborative recipes), with
the defaults measured on the recovery benchmark in one place: a recipe that differs says why in
its YAML (and in its own schema's field description)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from runner.recipes.base import CalibrationOptions
from runner.recipes.conversion import ConverterOptions, full_integer_settings
from runner.recipes.ranges import RangeEstimator, one_knob
from runner.schema import tags
from runner.train import Optimizer


class QATOptions(CalibrationOptions):
    """``recipe=qat`` / ``qat_mixed``: fine-tuning with fake quantization, then the export.

    ``calibration_samples``: training samples that start the quantizers' ranges and are the
    export's representative data.
    """

    # The measured defaults (docs/recipes.md, the recovery benchmark): BatchNorm folded first and
    # plain SGD at train.learning_rate made the int8 validation curve rise on MobileNetV2 and
    # EfficientNetV2B0; Adam with the rate trial picked rates too small to move anything (3e-6);
    # the gains came after the second epoch (MobileNetV2: epoch 3 kept), and the judge keeps the
    # best epoch, so more epochs cost time only.
    epochs: int = Field(4, ge=1, description="fine-tuning epochs (the best one is kept)")
    learning_rate_scale: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        1.0,
        description="fine-tuning learning rate = train.learning_rate x this; auto: the best of "
        "0.1, 0.01, 0.001 after a short trial of each (runner.recipes.qat.lr)",
    )
    optimizer: Optimizer | None = Field(
        "sgd", description="the fine-tuning optimizer (any case); null: train.optimizer"
    )

    _lower = field_validator("optimizer", mode="before")(
        classmethod(lambda cls, v: v.lower() if isinstance(v, str) else v)
    )
    batch_size: int | None = Field(None, ge=1, description="null: train.batch_size")
    steps_per_epoch: int | None = Field(None, ge=1, description="null: the whole training split")
    skip_layers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        **tags(names="layer"),
        description="layer names left unannotated (float)",
    )
    fallback: bool = Field(
        True, description="leave layers tfmot cannot annotate float (false: stop, naming them)"
    )
    fold_batch_norm: bool = Field(
        True,
        description="fold each BatchNorm into the conv/dense before it first, as the converter "
        "does (fine-tuning through a frozen BatchNorm is ill-conditioned: see the recipes page)",
    )
    freeze_batch_norm: bool = Field(
        True, description="BatchNorm moving statistics stay the float model's while fine-tuning"
    )
    distill: bool = Field(
        True, description="targets are the float model's outputs (keeps QAT faithful to it)"
    )
    distill_temperature: float = Field(
        1.0,
        ge=1,
        description="distill: soften both models' outputs by this temperature (Hinton et al.) "
        "so the samples both already label alike still teach; 1: plain cross-entropy",
    )
    freeze_ranges: bool = Field(
        False,
        description="activation ranges stay where calibration_ranges started them while the "
        "weights fine-tune (false: tfmot's moving average of each batch's min and max)",
    )
    restore_best: bool = Field(
        True, description="score every epoch's int8 file on held-out data; keep the best"
    )
    backoffs: int = Field(
        2,
        ge=0,
        description="restore_best: when an epoch's int8 file falls below the best one beyond "
        "the noise, put the best epoch's weights back and cut the learning rate by 10, at most "
        "this many times (0: never)",
    )
    converter: ConverterOptions = Field(
        default_factory=full_integer_settings,
        description="the export's TFLite converter settings (full int8, int8 I/O)",
    )
    calibration_ranges: Annotated[list[RangeEstimator], Field(min_length=1)] = Field(
        default_factory=lambda: ["minmax", "mean"],
        description="activation range estimators the quantizers start from; with several, "
        "each start's int8 file is scored (epoch 0) and the best kept",
    )

    _one_knob = field_validator("calibration_ranges")(classmethod(lambda cls, v, i: one_knob(v, i)))
