"""The project's ``conf/``: composed outside a Hydra app (for the Python API), and validated.

Every config group is checked against typed schemas that live beside the code reading them:
a plugin group (``dataset``, ``model``, ``recipe``, ``recipe@reference``) against the runner's
own keys of the group (:data:`GROUP_META`) plus the options its ``_target_`` declares
(:mod:`runner.schema`); ``train``, ``evaluation`` and ``logger`` against their fixed schemas; the
top level against :class:`RunOptions`. :func:`validate` runs before any data is loaded or any
model trained: each bad value is one line naming the key, the value and what is allowed, and an
unknown key names the closest valid one. ``python -m runner`` runs it from a Hydra callback
before the run folder exists (so a bad value writes nothing and exits 2), and
:func:`runner.pipeline.run` runs it at its door. Nothing here imports TensorFlow (a plugin
module keeps its TensorFlow imports inside its functions).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import Field

from runner.data.base import DatasetMeta
from runner.errors import RunnerError
from runner.evaluation.metrics import EvalConfig
from runner.models.meta import ModelMeta
from runner.recipes.base import RecipeMeta
from runner.references import (
    CONF_DIR,
    config_folders,
    path_problems,
    reference_problems,
    requirement_problems,
    target_problems,
)
from runner.report.search import SearchOptions
from runner.report.select import SelectOptions
from runner.schema import Options, combined, config_node, options_of, parse, resolve, tagged
from runner.schema import problems as schema_problems
from runner.targets.base import TargetMeta
from runner.tracking import LoggerOptions
from runner.train import TrainConfig


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides``, as ``python -m runner`` would.

    Works inside a running Hydra app too: its global state is put back afterwards.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_bases()
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        if saved is not None:
            GlobalHydra.instance().initialize(saved)


# --------------------------------------------------------------------------- schemas
class RunOptions(Options):
    """The top level of ``conf/config.yaml`` (besides the groups)."""

    seed: int = Field(0, ge=0, description="seeds the split subsets, training and calibration")
    cache_dir: str = Field(
        "outputs/cache", min_length=1, description="trained baselines and conversions, shared"
    )
    verbose: bool = Field(False, description="TensorFlow's and the converter's own logs too")


# Plugin groups: the runner's keys of the group; the rest are the ``_target_``'s own Options.
GROUP_META: dict[str, type[Options]] = {
    "dataset": DatasetMeta,
    "model": ModelMeta,
    "recipe": RecipeMeta,
    "reference": RecipeMeta,
    "target": TargetMeta,
}
# Groups without a ``_target_``: one schema each.
FIXED: dict[str, type[Options]] = {
    "train": TrainConfig,
    "evaluation": EvalConfig,
    "select": SelectOptions,
    "search": SearchOptions,
    "logger": LoggerOptions,
}
TOP_KEYS = (*RunOptions.model_fields, *GROUP_META, *FIXED)


class Plugin(NamedTuple):
    """A plugin group's node, split: what ``_target_`` names, the runner's keys, its options."""

    target: Any
    meta: Any
    options: Options


def plugin(group: str, node: DictConfig | Mapping[str, Any]) -> Plugin:
    """Resolve ``node``'s ``_target_`` and parse its keys (``group`` is its config group).

    Raises:
        RunnerError: the target cannot be imported, declares no schema, or a value is bad.
    """
    values = _container(node)
    target = resolve(values.get("_target_", ""))
    schema = options_of(target, str(values.get("_target_")))
    return Plugin(target, parse(values, GROUP_META[group], group), parse(values, schema, group))


def schema_of(group: str, node: Mapping[str, Any]) -> type[Options]:
    """The whole schema of a group's node (raises RunnerError when its target cannot be used)."""
    if group in FIXED:
        return FIXED[group]
    target = node.get("_target_")
    if not isinstance(target, str) or not target:
        raise RunnerError(f"{group}._target_={target}: expected package.module.name")
    return combined(GROUP_META[group], options_of(resolve(target), target))


# --------------------------------------------------------------------------- one source per option
# A YAML file extends its schema's node: ``defaults: [/base/<_target_>@_here_, _self_]`` (or
# ``/base/train@_here_`` for a group without a ``_target_``), and sets only what differs.
BASE = "base"
_BASE_ENTRY = re.compile(r"^\s*-\s*/" + BASE + r"/([\w.]+)@", re.M)


def base_node(group: str, name: str) -> dict[str, Any]:
    """The config node a YAML file of ``group`` extends: its schema's defaults (``???`` where a
    value is required); ``name`` is a ``_target_``, or the group itself for a fixed group."""
    if name in FIXED:
        return config_node(FIXED[name])
    if name == "run":
        return config_node(RunOptions)
    schema = combined(GROUP_META[group], options_of(resolve(name), name))
    return {"_target_": name, **config_node(schema)}


def base_entries(conf_dir: Path = CONF_DIR) -> dict[str, str]:
    """``{base name: group}`` for every ``/base/...`` entry of the YAML files under ``conf_dir``."""
    found: dict[str, str] = {}
    for f in sorted(conf_dir.rglob("*.yaml")):
        group = f.parent.name if f.parent != conf_dir else ""
        for name in _BASE_ENTRY.findall(f.read_text(encoding="utf-8")):
            found.setdefault(name, group)
    return found


def register_bases(conf_dir: Path = CONF_DIR) -> None:
    """Put every schema node the YAML files under ``conf_dir`` extend into Hydra's ConfigStore.

    ``python -m runner`` and :func:`compose` call it before Hydra composes anything; a config
    folder of your own (``--config-dir``) that extends a plugin's schema calls it with its
    folder (``runner.config.register_bases(Path("my_conf"))``) before composing.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, group in base_entries(conf_dir).items():
        store.store(group=BASE, name=name, node=base_node(group, name), provider="runner")
    store.store(group="hydra/help", name="runner", node=help_node(conf_dir), provider="runner")
    from runner.launcher_configs import register_launchers, register_ray

    register_ray(store)
    register_launchers(store, BASE)


HELP = """tfq-runner: which TFLite file should I ship?

Trains (or loads) a float Keras model, converts it with a quantization recipe, runs every
.tflite in the LiteRT interpreter and writes a size / accuracy / fidelity / latency table
(outputs/runs/...), or one table for a whole sweep (-m).

Examples:
  python -m runner recipe=full_integer                      one recipe on the bundled digits
  python -m runner model=pretrained model.path=cnn.keras dataset=image_folder \\
      dataset.path=/data/images recipe=float16              your model and your images
  python -m runner -m recipe=none,float16,full_integer,qat  a sweep: one table for all jobs

Config groups (group=option):
{groups}

Any key can be set (recipe.calibration_samples=100) or swept (train.seed=0,1,2); every key,
its default and what it does: docs/options.md. The composed config: python -m runner --cfg job.
Hydra's own flags: python -m runner --hydra-help.
"""


def help_node(conf_dir: Path = CONF_DIR) -> dict[str, Any]:
    """``python -m runner --help``: what the tool does, examples, the groups and their options."""
    groups = []
    for folder in sorted(p for p in conf_dir.iterdir() if p.is_dir() and p.name != "hydra"):
        names = sorted(f.stem for f in folder.glob("*.yaml"))
        groups.append(f"  {folder.name}: {', '.join(names)}")
    return {
        "app_name": "tfq-runner",
        "header": "",
        "footer": "",
        "template": HELP.format(groups="\n".join(groups)).replace("$", "$$"),
    }


def sweep_values(experiment: str, key: str = "recipe") -> list[str]:
    """The values ``conf/experiment/<experiment>.yaml`` sweeps ``key`` over: the one list of
    recipes that the main job, the tests and the benchmark share."""
    node = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")
    value = OmegaConf.select(node, f"hydra.sweeper.params.{key}")
    if value is None:
        raise RunnerError(f"+experiment={experiment} does not sweep {key}")
    return [v.strip() for v in str(value).split(",")]


# --------------------------------------------------------------------------- checking
def problems(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """One line per bad value: the key, the value, what is allowed. Empty when all is well."""
    raw = _container(cfg, resolve=False)
    out = []
    for key in raw:
        if key != "hydra" and key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"valid keys: {', '.join(TOP_KEYS)}"
            out.append(f"{key}: unknown key; {hint}")
    top, bad = _resolved(cfg, raw, [k for k in RunOptions.model_fields if k in raw])
    out += bad + schema_problems(top, RunOptions, "")
    for group in (*GROUP_META, *FIXED):
        if not isinstance(raw.get(group), dict):
            continue
        node, bad = _resolved(cfg, raw[group], None, group)
        out += bad
        try:
            schema = schema_of(group, node)
        except RunnerError as e:
            out.append(str(e))
            continue
        out += schema_problems(node, schema, group)
        out += reference_problems(node, schema, group, config_folders(cfg))
        out += requirement_problems(group, node)
    return (
        out
        + [line for line in target_problems(raw) if not line.startswith(TOP_GROUP_TARGETS)]
        + path_problems(cfg, raw.get("model"))
    )


# a plugin group's own ``_target_`` is reported by its schema check above
TOP_GROUP_TARGETS = tuple(f"{g}._target_=" for g in GROUP_META)


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise one :class:`RunnerError` listing every bad value, one line each.

    Raises:
        RunnerError: at least one value breaks its schema.
    """
    bad = problems(cfg)
    if bad:
        raise RunnerError("bad config value: " + "\nbad config value: ".join(bad))


def _container(node: Any, resolve: bool = True) -> dict[str, Any]:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=resolve)  # type: ignore[return-value]
    return dict(node)


def _resolved(
    cfg: Any, raw: dict[str, Any], keys: list[str] | None, prefix: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """``raw`` with its interpolations resolved; a key that does not resolve is one line."""
    node: dict[str, Any] = {}
    bad: list[str] = []
    for key, value in raw.items():
        if keys is not None and key not in keys:
            continue
        full = f"{prefix}.{key}" if prefix else str(key)
        if not _has_interpolation(value) or not isinstance(cfg, DictConfig):
            node[key] = value
            continue
        try:
            got = OmegaConf.select(cfg, full, throw_on_missing=True)
            node[key] = _container(got) if isinstance(got, (DictConfig, ListConfig)) else got
        except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve
            bad.append(f"{full}={value}: cannot be resolved ({' '.join(str(e).split())[:120]})")
    return node, bad


def _has_interpolation(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_has_interpolation(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_interpolation(v) for v in value)
    return False


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf (lists are leaves)."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def seeds(cfg: DictConfig) -> dict[str, Any]:
    """Every seed of the run: ``seed``, and each key a group's schema tags as a seed
    (``train.seed``, ``dataset.split_seed``, ``recipe.calibration_seed`` ...)."""
    out: dict[str, Any] = {"seed": cfg.seed}
    for group in ("dataset", "model", "train", "recipe"):
        node = OmegaConf.to_container(cfg[group], resolve=True)
        try:
            keys = tagged(schema_of(group, node), "seed", True)
        except RunnerError:
            continue
        out |= {f"{group}.{k}": node[k] for k in keys if k in node}
    return out
