"""The runner's keys of every ``conf/model/*.yaml``, apart from the builder's own options."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from runner.data.base import InputScaling
from runner.schema import Options, follows, tags

# How recurrent layers convert: auto (the faithful one, measured) | fused kernel | unrolled graph
Route = Literal["auto", "fused", "unrolled"]
ROUTES = get_args(Route)


class ModelMeta(Options):
    """What the runner reads of a model node (a builder's arguments are its Options)."""

    name: str = Field(min_length=1, description="the model's name in the table")
    needs_training: bool = Field(
        True,
        description="false: the file at model.path is the baseline (no training; its conversions are "
        "cached by the file's content)",
    )
    input_scaling: InputScaling = Field(
        "unit",
        description="unit / symmetric / standardize (input_mean, input_std) / none / auto; "
        "in a config, the data set's",
        **follows("dataset.input_scaling"),
    )
    input_mean: Annotated[list[float], Field(min_length=1)] = Field(
        [0.0], description="per-channel mean for input_scaling=standardize"
    )
    input_std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = Field(
        [1.0], description="per-channel std for input_scaling=standardize"
    )
    recurrent: Route = Field(
        "auto",
        description="LSTM/GRU models: auto measures the fused kernel, unrolls on drift",
        **tags(trains=False),
    )
    convert_batch_size: int | None = Field(
        None,
        ge=1,
        description="recurrent models: the batch the TFLite file is converted at",
        **tags(trains=False),
    )
