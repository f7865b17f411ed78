"""The project's ``conf/``: composed outside a Hydra app (for the Python API), and validated.

:func:`validate` checks every value of a composed config against the rules below before any data
is loaded or any model trained: each bad value is one line naming the key, the value and what is
allowed. ``python -m runner`` runs it from a Hydra callback before the run folder exists (so a
bad value writes nothing and exits 2), and :func:`runner.pipeline.run` runs it at its door.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.errors import RunnerError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides``, as ``python -m runner`` would.

    Works inside a running Hydra app too: its global state is put back afterwards.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """What one config key accepts: ``allowed`` is the text the error shows."""

    allowed: str
    check: Callable[[Any], bool]
    nullable: bool = False

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        try:
            return bool(self.check(value))
        except (TypeError, ValueError):
            return False

    def text(self) -> str:
        return self.allowed + (" or null" if self.nullable else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def integer(low: int = 0, high: int | None = None, nullable: bool = False) -> Rule:
    text = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    return Rule(text, lambda v: _is_int(v) and v >= low and (high is None or v <= high), nullable)


def number(
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    nullable: bool = False,
) -> Rule:
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    if low is not None and high is not None:
        text = f"a number in {lo}, {hi}"
    elif low is not None:
        text = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        text = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        text = "a number"

    def check(v: Any) -> bool:
        if not _is_num(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return not (high is not None and (v >= high if high_open else v > high))

    return Rule(text, check, nullable)


def choice(*options: str, nullable: bool = False, case: bool = True) -> Rule:
    norm = (lambda v: v) if case else (lambda v: v.lower())
    return Rule(
        f"one of {', '.join(options)}",
        lambda v: isinstance(v, str) and norm(v) in options,
        nullable,
    )


def text(nullable: bool = False) -> Rule:
    return Rule("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()), nullable)


def any_text(nullable: bool = False) -> Rule:
    return Rule("a string", lambda v: isinstance(v, str), nullable)


BOOL = Rule("true or false", lambda v: isinstance(v, bool))


def list_of(rule: Rule, nullable: bool = False, empty: bool = True) -> Rule:
    return Rule(
        f"a list of {rule.allowed.removeprefix('a ').removeprefix('an ')}s",
        lambda v: (
            isinstance(v, (list, tuple)) and (empty or bool(v)) and all(rule.ok(x) for x in v)
        ),
        nullable,
    )


def either(a: Rule, b: Rule) -> Rule:
    return Rule(
        f"{a.allowed}, or {b.allowed}", lambda v: a.ok(v) or b.ok(v), a.nullable or b.nullable
    )


def resnet_depth() -> Rule:
    return Rule(
        "an integer 6n+2 (8, 14, 20, 32, 44, 56 ...)",
        lambda v: _is_int(v) and v >= 8 and (v - 2) % 6 == 0,
    )


# An ai-edge-quantizer rule (runner.recipes.aeq.Rule reads its values from these).
AEQ_RULE_KEYS = ("scope", "op", "mode", "bits", "granularity", "activation_bits", "algorithm")
AEQ_MODES = ("weight_only", "dynamic", "static", "none")
AEQ_GRANULARITIES = ("channelwise", "tensorwise", *(f"blockwise_{n}" for n in (32, 64, 128, 256)))


def _aeq_rule_ok(v: Any) -> bool:
    if not isinstance(v, Mapping) or not set(v) <= set(AEQ_RULE_KEYS):
        return False
    return (
        v.get("mode", "weight_only") in AEQ_MODES
        and v.get("bits", 8) in (4, 8)
        and v.get("activation_bits", 8) in (8, 16)
        and v.get("granularity", "channelwise") in AEQ_GRANULARITIES
        and all(isinstance(v.get(k, "x"), str) for k in ("scope", "op", "algorithm"))
    )


SCALINGS = ("unit", "symmetric", "standardize", "none")
OPTIMIZERS = ("adadelta", "adagrad", "adam", "adamax", "ftrl", "nadam", "rmsprop", "sgd")
DTYPES = ("float32", "float16", "int8", "uint8", "int16")
COUNT = integer(1)  # something to have at least one of
SEED = integer(0)  # NumPy and Keras seeds are non-negative
FRACTION = number(0, 1, high_open=True)  # [0, 1)
PROBABILITY = number(0, 1)  # [0, 1]

# The top-level keys, then every group's keys (recipe rules also cover recipe@reference).
TOP: dict[str, Rule] = {"seed": SEED, "cache_dir": text(), "verbose": BOOL}
GROUPS: dict[str, dict[str, Rule]] = {
    "dataset": {
        "_target_": text(),
        "name": text(),
        "path": text(nullable=True),
        "test_fraction": number(0, 1, low_open=True, high_open=True),
        "split_seed": SEED,
        "subset_seed": SEED,
        "train_size": integer(1, nullable=True),
        "test_size": integer(1, nullable=True),
        "input_scaling": choice(*SCALINGS, "auto"),
        "label_mode": choice("fine", "coarse"),
        "extract_dir": text(nullable=True),
        "text_column": text(),
        "label_column": text(),
        "split_column": text(nullable=True),
        "segment": choice("auto", "jieba", "none"),
        "word_index": text(nullable=True),
        "num_words": integer(2, nullable=True),
        "maxlen": COUNT,
        "image_size": Rule(
            "an integer >= 1, or [height, width]",
            lambda v: (
                COUNT.ok(v)
                or (isinstance(v, (list, tuple)) and len(v) == 2 and all(COUNT.ok(d) for d in v))
            ),
            nullable=True,
        ),
        "color_mode": choice("rgb", "grayscale", nullable=True),
        "on_bad_file": choice("skip", "error"),
        "workers": integer(1, nullable=True),
        "cache_dir": text(nullable=True),
    },
    "model": {
        "_target_": text(),
        "_partial_": BOOL,
        "name": text(),
        "needs_training": BOOL,
        "input_scaling": choice(*SCALINGS, "auto"),
        "input_mean": list_of(number(), empty=False),
        "input_std": list_of(number(0, low_open=True), empty=False),
        "path": text(nullable=True),
        "safe_mode": BOOL,
        "custom_objects": text(nullable=True),
        "filters": either(COUNT, list_of(COUNT, empty=False)),
        "dense_units": integer(0),
        "dropout": FRACTION,
        "bn_momentum": FRACTION,
        "depth": resnet_depth(),
        "width": COUNT,
        "embedding_dim": COUNT,
        "kernel_size": COUNT,
        "units": either(COUNT, list_of(COUNT, empty=False)),
        "bidirectional": BOOL,
        "convert_batch_size": integer(1, nullable=True),
        "recurrent": choice("auto", "fused", "unrolled"),
        "blocks": list_of(
            Rule(
                "[filters, stride] with filters >= 1 and stride 1 or 2",
                lambda v: (
                    isinstance(v, (list, tuple))
                    and len(v) == 2
                    and COUNT.ok(v[0])
                    and v[1] in (1, 2)
                    and _is_int(v[1])
                ),
            ),
            empty=False,
        ),
        "activation": choice("relu", "relu6"),
        "batch_norm": BOOL,
    },
    "train": {
        "epochs": COUNT,
        "batch_size": COUNT,
        "optimizer": choice(*OPTIMIZERS, case=False),
        "learning_rate": number(0, low_open=True),
        "seed": SEED,
        "validation_split": FRACTION,
        "early_stopping_patience": integer(0),
        "verbose": integer(0, 2),
    },
    "evaluation": {
        "batch_size": COUNT,
        "num_threads": COUNT,
        "latency_warmup": integer(0),
        "latency_samples": integer(0),
        "progress": BOOL,
        "min_agreement": PROBABILITY,
        "min_agreement_quantized": PROBABILITY,
        "min_output_sqnr_db": number(0, nullable=True),
        "layer_report": BOOL,
    },
    "recipe": {
        "_target_": text(),
        "name": text(),
        "description": any_text(),
        "use_case": any_text(),
        "quantized": BOOL,
        "calibration_samples": COUNT,
        "calibration_seed": SEED,
        # QAT
        "epochs": COUNT,
        "learning_rate_scale": number(0, low_open=True),
        "batch_size": integer(1, nullable=True),
        "steps_per_epoch": integer(1, nullable=True),
        "skip_layers": list_of(text()),
        "fallback": BOOL,
        "freeze_batch_norm": BOOL,
        "distill": BOOL,
        "restore_best": BOOL,
        # selective / auto_int8
        "keep_float": integer(0),
        "denylist": list_of(text()),
        "max_accuracy_drop": PROBABILITY,
        "max_float_layers": integer(0),
        "holdout_samples": COUNT,
        "holdout_seed": SEED,
        "budget": choice("auto", "accuracy", "agreement"),
        # ai-edge-quantizer recipes
        "rules": list_of(
            Rule(
                "{scope, op, mode: weight_only|dynamic|static|none, bits: 4|8, granularity: "
                "channelwise|tensorwise|blockwise_32|64|128|256, activation_bits: 8|16, algorithm}",
                lambda v: _aeq_rule_ok(v),
            ),
            empty=False,
        ),
        "validation_samples": COUNT,
        "embedding_lookup": BOOL,
        "min_agreement": PROBABILITY,
    },
}
GROUPS["logger"] = {
    "name": choice("none", "mlflow"),
    "tracking_uri": text(),
    "experiment": text(),
    "log_models": BOOL,
}
# recipe.converter: the TFLite converter settings (attributes are set verbatim, unchecked)
CONVERTER: dict[str, Rule] = {
    "optimizations": list_of(choice("DEFAULT", "OPTIMIZE_FOR_SIZE", "OPTIMIZE_FOR_LATENCY")),
    "supported_types": list_of(choice(*DTYPES)),
    "supported_ops": list_of(text()),
    "inference_input_type": choice(*DTYPES, nullable=True),
    "inference_output_type": choice(*DTYPES, nullable=True),
    "representative_dataset": BOOL,
}
# The composed config's groups, and which rules each uses.
RULE_SETS = {"dataset": "dataset", "model": "model", "train": "train", "evaluation": "evaluation"}
RULE_SETS |= {"logger": "logger"}
RULE_SETS |= {"recipe": "recipe", "reference": "recipe"}


def rule_for(key: str) -> Rule | None:
    """The rule of a dotted key (``train.epochs``, ``recipe.converter.supported_types``)."""
    parts = key.split(".")
    if len(parts) == 1:
        return TOP.get(key)
    group = RULE_SETS.get(parts[0])
    if group is None:
        return None
    if parts[1] == "converter" and group == "recipe":
        return CONVERTER.get(parts[2]) if len(parts) == 3 else None
    return GROUPS[group].get(parts[1]) if len(parts) == 2 else None


def problems(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """One line per bad value: the key, the value, what is allowed. Empty when all is well."""
    container = (
        OmegaConf.to_container(cfg, resolve=False)
        if isinstance(cfg, (DictConfig, ListConfig))
        else dict(cfg)
    )
    out = []
    for key, value in _leaves(container):
        rule = rule_for(key)
        if rule is None:
            continue  # keys of a user's own builder or recipe: theirs to check
        resolved = _resolved(cfg, key, value)
        if isinstance(resolved, _Unresolvable):
            out.append(f"{key}={value}: cannot be resolved ({resolved.why})")
        elif not rule.ok(resolved):
            out.append(f"{key}={_show(resolved)}: expected {rule.text()}")
    return out + _model_file_problems(container.get("model")) + _data_path_problems(cfg)


def _data_path_problems(cfg: Any) -> list[str]:
    """A named data file or folder must exist: said here, before anything loads."""
    try:
        path = OmegaConf.select(cfg, "dataset.path") if isinstance(cfg, DictConfig) else None
    except Exception:  # noqa: BLE001 - an unresolvable value is reported by its rule
        return []
    if isinstance(path, str) and path and not Path(path).expanduser().exists():
        return [f"dataset.path={path}: {path} does not exist"]
    return []


def _model_file_problems(model: Any) -> list[str]:
    """A user's model file must be named and exist: checked here, before the data set loads."""
    if not isinstance(model, dict) or model.get("needs_training", True) is not False:
        return []
    path = model.get("path")
    if not path:
        return [
            "model.path=null: model=pretrained needs model.path=/path/to/model.keras "
            "(or .h5, or a SavedModel folder)"
        ]
    if not Path(str(path)).expanduser().exists():
        return [
            f"model.path={path}: {path} does not exist; expected a .keras/.h5 file or a "
            "SavedModel folder"
        ]
    return []


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise one :class:`RunnerError` listing every bad value, one line each.

    Raises:
        RunnerError: at least one value breaks its rule (see :data:`GROUPS`).
    """
    bad = problems(cfg)
    if bad:
        raise RunnerError("bad config value: " + "\nbad config value: ".join(bad))


class _Unresolvable:
    def __init__(self, why: str) -> None:
        self.why = why


def _resolved(cfg: Any, key: str, value: Any) -> Any:
    if not (isinstance(value, str) and "${" in value) or not isinstance(cfg, DictConfig):
        return value
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve
        return _Unresolvable(" ".join(str(e).split())[:120])


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; a list is one leaf (its rule checks the items)."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if key == "hydra":
                continue
            if isinstance(v, dict) and (rule_for(key) is None or not v):
                yield from _leaves(v, key)
            else:
                yield key, v
    else:
        yield prefix, node


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


# --------------------------------------------------------------------------- Hydra callback
def _callback_base() -> type:
    from hydra.experimental.callback import Callback

    return Callback


class ValidateConfigCallback(_callback_base()):
    """Hydra callback: check the composed config before the run folder exists.

    A single run with a bad value prints one line per value and exits 2, writing nothing. A
    multirun checks its common config the same way before any job starts; a bad value that only
    some jobs sweep over fails those jobs (their rows say why), through :func:`validate` at
    :func:`runner.pipeline.run`'s door.
    """

    def on_run_start(self, config: DictConfig, **_: Any) -> None:
        _exit_on_problems(config)

    def on_multirun_start(self, config: DictConfig, **_: Any) -> None:
        _exit_on_problems(config)


def _exit_on_problems(config: DictConfig) -> None:
    import sys

    bad = problems(config)
    if bad:
        for line in bad:
            print(f"error: bad config value: {line}", file=sys.stderr)
        sys.exit(2)
