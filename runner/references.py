"""What a config names besides its own values, checked before any work starts: other configs
(``recipe.export=full_integer`` names ``conf/recipe/full_integer.yaml``) and code (every
``_target_``, refused unless :mod:`runner.allowed` allows its package). Nothing is imported."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.allowed import refused_target
from runner.schema import Options

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def config_folders(cfg: Any) -> list[Path]:
    """The runner's ``conf/`` and the folders a run's ``hydra.searchpath`` adds."""
    folders = [CONF_DIR]
    try:
        extra = OmegaConf.select(cfg, "hydra.searchpath") if isinstance(cfg, DictConfig) else None
    except Exception:  # noqa: BLE001 - no hydra node (a config composed for the API)
        extra = None
    for entry in extra or []:
        if str(entry).startswith("file://"):
            folders.append(Path(str(entry).removeprefix("file://")))
    return folders


def group_options(group: str, folders: Sequence[Path] = (CONF_DIR,)) -> list[str]:
    """The options of a config group: the YAML files in ``<folder>/<group>/``."""
    return sorted({f.stem for d in folders for f in (Path(d) / group).glob("*.yaml")})


def reference_problems(
    node: Mapping[str, Any], schema: type[Options], group: str, folders: Sequence[Path]
) -> list[str]:
    """One line per value that names an option of another config group (a field tagged
    ``names=...``, e.g. ``recipe.export``) that does not exist, with the closest one."""
    out = []
    for name, field in schema.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        target_group = extra.get("names")
        if not target_group or target_group == "layer" or name not in node:  # layers: per model
            continue
        value = node[name]
        options = group_options(str(target_group), folders)
        for v in value if isinstance(value, list) else [value]:
            if v is None or str(v) in options:
                continue
            close = difflib.get_close_matches(str(v), options, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"options: {', '.join(options)}"
            out.append(f"{group}.{name}={v}: no such {target_group} in conf/{target_group}; {hint}")
    return out


def target_problems(node: Any, prefix: str = "") -> list[str]:
    """One line per ``_target_`` anywhere in ``node`` (``hydra.callbacks`` included) that names
    a package the runner does not allow (:func:`runner.schema.refused_target`); nothing is
    imported to say it."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    out = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            if key == "_target_":
                why = refused_target(value)
                if why:
                    out.append(f"{full}={value}: {why}")
            else:
                out += target_problems(value, full)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += target_problems(value, f"{prefix}[{i}]")
    return out
