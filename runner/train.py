"""Train stage: Keras ``fit`` on uint8 data scaled one batch at a time."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from runner.console import check_interrupt
from runner.data import Dataset, Rows, Scaling, Split
from runner.errors import RunnerError
from runner.schema import Options, tags

log = logging.getLogger(__name__)


Optimizer = Literal["adadelta", "adagrad", "adam", "adamax", "ftrl", "nadam", "rmsprop", "sgd"]


class TrainConfig(Options):
    """``conf/train/*.yaml``: how the float baseline is fitted."""

    epochs: int = Field(
        40, ge=1, description="at most this many epochs (early stopping ends sooner)"
    )
    batch_size: int = Field(32, ge=1, description="samples per step")
    optimizer: Optimizer = Field("adam", description="a Keras optimizer (any case)")
    learning_rate: float = Field(3e-3, gt=0, description="the optimizer's learning rate")
    seed: int = Field(
        0,
        ge=0,
        description="weights, shuffles and the validation split",
        **tags(follows="seed", seed=True),
    )
    validation_split: float = Field(
        0.1, ge=0, lt=1, description="training share held out for early stopping"
    )
    early_stopping_patience: int = Field(
        8,
        ge=0,
        description="epochs without val_loss improvement before stopping; the best weights are "
        "restored (0: never stop early)",
    )
    verbose: int = Field(0, ge=0, le=2, description="Keras fit verbosity")

    @field_validator("optimizer", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @classmethod
    def from_mapping(cls, cfg: Any) -> TrainConfig:
        """A config node's keys of this schema (validated)."""
        known = set(cls.model_fields)
        return cls.model_validate({k: v for k, v in dict(cfg).items() if k in known})


@dataclass
class TrainResult:
    model: Any
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)


def batch_sequence(
    split: Split,
    batch_size: int,
    scaling: Scaling,
    shuffle: bool,
    seed: int,
    steps: int | None = None,
):
    """A ``keras.utils.Sequence`` over ``split`` that scales each batch as it is served.

    With ``steps`` larger than one pass, indices wrap around, so a fit that asks for
    ``steps_per_epoch * epochs`` batches never runs dry, however small the data.
    """
    import tf_keras as keras

    class _Seq(keras.utils.Sequence):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(split))
            self.per_pass = max(1, math.ceil(len(split) / batch_size))
            self.steps = steps or self.per_pass
            self.on_epoch_end()

        def __len__(self) -> int:
            return self.steps

        def __getitem__(self, i: int):
            start = (i % self.per_pass) * batch_size
            idx = self.order[start : start + batch_size]
            return scaling(split.x[idx]), split.y[idx]

        def on_epoch_end(self) -> None:
            if shuffle:
                self.rng.shuffle(self.order)

    return _Seq()


def loss_for(model) -> str:
    """One sigmoid unit means binary labels; otherwise integer labels over a softmax."""
    return (
        "binary_crossentropy"
        if int(model.output_shape[-1]) == 1
        else "sparse_categorical_crossentropy"
    )


def make_optimizer(name: str, learning_rate: float):
    import tf_keras as keras

    try:
        return keras.optimizers.get(
            {"class_name": name, "config": {"learning_rate": float(learning_rate)}}
        )
    except ValueError:
        raise RunnerError(
            f"unknown train.optimizer {name!r}; use a Keras optimizer name such as adam, sgd, rmsprop"
        ) from None


def split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """(fit, validation) splits of ``train``: views (:class:`runner.data.base.Rows`) that read
    their rows one batch at a time, so a memory-mapped data set is never copied whole."""
    if not fraction:
        return train, None
    n_val = max(1, int(round(len(train) * fraction)))
    perm = np.random.default_rng(seed).permutation(len(train))
    val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return Split(Rows(train.x, tr), train.y[tr]), Split(Rows(train.x, val), train.y[val])


def train(model, data: Dataset, cfg: TrainConfig, scaling: Scaling) -> TrainResult:
    """Fit ``model`` on ``data.train``; returns the model with its best validation weights."""
    import tf_keras as keras

    keras.utils.set_random_seed(cfg.seed)
    fit_split, val_split = split_validation(data.train, cfg.validation_split, cfg.seed)
    model.compile(
        optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate),
        loss=loss_for(model),
        metrics=["accuracy"],
    )
    callbacks = [keras.callbacks.LambdaCallback(on_train_batch_end=check_interrupt)]
    if val_split is not None and cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True
            )
        )
    val = (
        batch_sequence(val_split, cfg.batch_size, scaling, False, cfg.seed)
        if val_split is not None
        else None
    )
    t0 = time.perf_counter()
    hist = model.fit(
        batch_sequence(fit_split, cfg.batch_size, scaling, True, cfg.seed),
        validation_data=val,
        epochs=cfg.epochs,
        callbacks=callbacks,
        verbose=cfg.verbose,
    )
    seconds = time.perf_counter() - t0
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        raise RunnerError(  # raised before the cache stores it: never a cached NaN baseline
            f"training {model.name} diverged: its weights hold NaN or infinite values; lower "
            "train.learning_rate or check the data"
        )
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    log.info(
        "trained %s for %d epochs in %.1fs (best val_accuracy %s)",
        model.name,
        len(history.get("loss", [])),
        seconds,
        f"{max(history['val_accuracy']):.4f}" if history.get("val_accuracy") else "n/a",
    )
    return TrainResult(model=model, seconds=seconds, history=history)
