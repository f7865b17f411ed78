"""The recipe protocol: what every recipe family receives, returns and offers.

A recipe is built from ``conf/recipe/<name>.yaml`` by its ``_target_`` and called by the pipeline
through :class:`Recipe` alone, never probed: ``produce`` writes its artifacts; ``layer_report``
gives the per-layer int8 error of its conversion when it has one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
from pydantic import Field

from runner.artifacts import Artifact, LayerRows
from runner.data import Dataset, Scaling, Split, calibration_sample
from runner.errors import RunnerError
from runner.schema import Options, tags

log = logging.getLogger(__name__)

# Inputs the fidelity check of a recurrent conversion runs on (real training samples).
PROBE_SAMPLES = 256


# What making a recipe's file costs, cheapest first.
Cost = Literal["conversion", "calibration", "search", "fine_tuning"]
COSTS: tuple[str, ...] = get_args(Cost)


class RecipeMeta(Options):
    """The runner's keys of every ``conf/recipe/*.yaml`` (the recipe family's own are its Options)."""

    name: str = Field(min_length=1, description="the recipe's name: its row and file name")
    description: str = Field("", description="what the recipe does (one line)")
    use_case: str = Field("", description="when to ship it (the table's use_case column)")
    quantized: bool = Field(True, description="false: a float conversion, held to float fidelity")
    cost: Cost = Field(
        "conversion",
        description="what making the file costs, cheapest first (hydra/sweeper=search runs "
        "recipes in this order): conversion, calibration, search (gradient or per-layer PTQ), "
        "fine_tuning",
    )
    weight_bits: int | None = Field(
        None,
        ge=1,
        le=32,
        description="the fewest bits any weight of its file takes (the search's size estimate: "
        "a lower bound); null: unknown",
    )


class ArtifactStore(Protocol):
    """Where the deterministic conversions of one float baseline are kept (its cache entry)."""

    def get(self, name: str, spec: Mapping[str, Any]) -> tuple[bytes, dict[str, Any]] | None:
        """The flatbuffer and metadata stored for ``name`` under ``spec``, or None."""

    def put(self, name: str, spec: Mapping[str, Any], data: bytes, meta: dict[str, Any]) -> None:
        """Keep ``data`` (and ``meta``) for ``name`` under ``spec``."""


@dataclass
class RecipeContext:
    """What a recipe may use: the trained float model, the data and where to write."""

    model: Any
    dataset: Dataset
    scaling: Scaling
    models_dir: Path
    train_cfg: Any = None
    convert_batch_size: int | None = None  # fixed batch for conversion (recurrent models: 1)
    # Where deterministic conversions of this baseline are kept (its cache entry), or None
    # (a user's pretrained file): recipes reach the cache only through this object.
    store: ArtifactStore | None = None
    recurrent: str = "auto"  # conversion route for recurrent layers: auto | fused | unrolled
    output_dir: Path | None = None  # the run's folder (reports a recipe writes beside the table)
    pretrained: bool = False  # the model is a user's file (it may have been trained on any split)
    # the float32 reference .tflite of this run, once made (backends that start from a .tflite)
    reference_path: Path | None = None
    # builds another recipe of conf/recipe by name (a recipe that exports through another,
    # as prune and cluster do); given by the caller, which knows the config
    recipes: Callable[[str], Any] | None = None
    # what a recipe wants said on its rows (a clamped calibration size ...), added by write_tflite
    notes: list[str] = field(default_factory=list)

    def recipe(self, name: str) -> Any:
        """Another recipe of ``conf/recipe`` by name.

        Raises:
            RunnerError: the caller gave no way to build one, or there is no such recipe.
        """
        if self.recipes is None:
            raise RunnerError(f"recipe {name!r} cannot be built here (no recipe loader given)")
        return self.recipes(name)

    def probe(self) -> np.ndarray:
        """Model-ready real inputs (training samples) that conversion fidelity is measured on."""
        return self.scaling(calibration_sample(self.dataset.train, PROBE_SAMPLES, 0))

    @property
    def run_dir(self) -> Path:
        return self.output_dir or self.models_dir.parent

    def held_out(self) -> tuple[Split, Split | None, str]:
        """(samples to fit on, samples to judge on, what the judged samples are).

        The data set's own validation split when it ships one (``x_val``/``y_val``: never
        trained on, even by a pretrained model; all of train is fitted on), else the baseline's
        validation split of train (``train.validation_split``, same seed: never fitted on by the
        runner's baseline, but a pretrained model may have trained on it). None to judge on when
        ``train.validation_split`` is 0.
        """
        from runner.train import TrainConfig, split_validation

        if self.dataset.validation is not None and len(self.dataset.validation):
            where = "the data set's validation split (disjoint from training and test)"
            return self.dataset.train, self.dataset.validation, where
        cfg = TrainConfig.from_mapping(self.train_cfg or {})
        fit, val = split_validation(self.dataset.train, cfg.validation_split, cfg.seed)
        where = (
            "the training split's validation part, which a pretrained model may have trained "
            "on (ship x_val/y_val with dataset=arrays for data it never saw)"
            if self.pretrained
            else "the baseline's validation split (never fitted on)"
        )
        return fit, val, where


class Recipe(Protocol):
    """Every recipe family (``ConverterRecipe``, ``QATRecipe``, ``SelectiveRecipe`` ...)."""

    name: str
    use_case: str
    quantized: bool
    # produce() starts from the float32 reference .tflite (ctx.reference_path), made first
    needs_reference: bool

    def data_needed(self) -> str | None:
        """What real data :meth:`produce` reads from ``ctx.dataset`` (one line), or None: a
        caller without data (the Python API) refuses with this line instead of inventing some."""

    def produce(self, ctx: RecipeContext) -> list[Artifact]:
        """Make the recipe's artifacts (written under ``ctx.models_dir``)."""

    def layer_report(self, ctx: RecipeContext, requested: bool) -> LayerRows | None:
        """Per-layer int8 error of this recipe's conversion, worst first.

        A recipe that makes one while producing (selective, auto_int8) returns it whether or not
        it was ``requested``; another makes one only when ``requested``
        (``evaluation.layer_report=true``) and returns None otherwise.

        Raises:
            RunnerError: one was requested, but this recipe cannot have one (it says why).
        """


class CalibrationOptions(Options):
    """The options of every recipe that draws training samples to calibrate on (one mixin)."""

    calibration_samples: int = Field(
        200, ge=1, description="training samples drawn to calibrate ranges (sweepable)"
    )
    calibration_seed: int = Field(
        0,
        ge=0,
        description="which samples are drawn (sweepable)",
        **tags(follows="seed", seed=True),
    )

    def draw(self, ctx: RecipeContext) -> np.ndarray:
        """Model-ready calibration inputs: ``calibration_samples`` training samples drawn with
        ``calibration_seed`` (all of them when the split is smaller)."""
        have = len(ctx.dataset.train)
        if self.calibration_samples > have:
            note = (
                f"recipe.calibration_samples={self.calibration_samples} is more than the "
                f"{have} training samples: calibrated on all {have}"
            )
            if note not in ctx.notes:
                log.warning(note)
                ctx.notes.append(note)
        raw = calibration_sample(ctx.dataset.train, self.calibration_samples, self.calibration_seed)
        return ctx.scaling(raw)

    @property
    def draw_key(self) -> list[int]:
        """What identifies the draw in a cache key."""
        return [self.calibration_samples, self.calibration_seed]


class RecipeBase:
    """A recipe family: its runner keys (``meta``) and its validated options (``opts``).

    The options object is the recipe's only configuration: no option is copied onto the
    object, and no default is restated outside its schema. A recipe keeps no state between
    calls of :meth:`produce` (what one run learns is in the artifacts it returns), so one
    object can serve many runs.
    """

    Options: type[Options] = Options
    needs_reference = False

    def __init__(self, meta: RecipeMeta | str | None = None, opts: Options | None = None) -> None:
        """``meta``: the runner's keys of the recipe (from Python, a name is enough);
        ``opts``: its options (None: every default of its schema)."""
        if not isinstance(meta, RecipeMeta):
            meta = RecipeMeta(name=meta or type(self).__name__)
        self.meta = meta
        self.opts = opts if opts is not None else type(self).Options()

    @classmethod
    def with_options(cls, name: str | None = None, **values: Any) -> RecipeBase:
        """A recipe from Python: ``QATRecipe.with_options(epochs=1)`` (checked by its schema)."""
        from runner.schema import parse

        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return cls(name, parse(plain, cls.Options, "recipe", strict=True))

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def description(self) -> str:
        return self.meta.description

    @property
    def use_case(self) -> str:
        return self.meta.use_case

    @property
    def quantized(self) -> bool:
        return self.meta.quantized

    def data_needed(self) -> str | None:
        return None

    def write_tflite(
        self, ctx: RecipeContext, flatbuffer: bytes, seconds: float, **kw: Any
    ) -> Artifact:
        """Write ``<name>.tflite`` atomically and describe it (``kw``: the other Artifact fields)."""
        from runner.files import atomic_write_bytes

        path = atomic_write_bytes(ctx.models_dir / f"{self.name}.tflite", flatbuffer)
        if ctx.notes:  # said in the row's note, and among the run's warnings
            kw["warnings"] = (*kw.get("warnings", ()), *ctx.notes)
            kw["note"] = "; ".join(n for n in (kw.get("note"), *ctx.notes) if n)
        log.info(
            "recipe %s: wrote %s (%d bytes) in %.1fs", self.name, path, len(flatbuffer), seconds
        )
        return Artifact(
            path.name, self.name, path, "tflite", self.quantized, convert_seconds=seconds, **kw
        )

    def layer_report(self, ctx: RecipeContext, requested: bool) -> LayerRows | None:
        if requested:
            raise RunnerError(
                f"recipe {self.name} has no per-layer int8 report: only post-training int8 recipes have one"
            )
        return None


def float_layers_text(names: Iterable[str]) -> str:
    """The ``float_layers`` column: how many layers a quantized file keeps float, and which."""
    names = list(names)
    return f"{len(names)}: {', '.join(names)}" if names else "0"


def check_layer_names(model: Any, names: Sequence[str], key: str) -> None:
    """Every name in ``names`` (the value of config key ``key``) is a layer of ``model``.

    Raises:
        RunnerError: one line naming the unknown names, the closest layer of each, and the key.
    """
    import difflib

    layers = [layer.name for layer in model.layers]
    unknown = [n for n in names if n not in layers]
    if not unknown:
        return
    hints = []
    for n in unknown:
        close = difflib.get_close_matches(n, layers, n=1, cutoff=0.6)
        hints.append(f"{n} (did you mean {close[0]}?)" if close else n)
    raise RunnerError(
        f"{key} names {', '.join(hints)}, which the model does not have; its layers: "
        f"{', '.join(layers)}"
    )
