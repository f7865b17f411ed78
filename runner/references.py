"""What a config names besides its own values, checked before any work starts: other configs
(``recipe.export=full_integer`` names ``conf/recipe/full_integer.yaml``), code (every
``_target_``, refused unless :mod:`runner.allowed` allows its package), files and folders (a
model file, the data, the cache). Nothing is imported."""

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


def path_problems(cfg: Any, model: Any) -> list[str]:
    """The files and folders a config names: a user's model file and the data path must exist,
    the folders a run creates must be (or become) folders."""
    return _model_file_problems(model) + _data_path_problems(cfg) + _cache_dir_problems(cfg)


# folder keys a run creates when missing: a file (or a file above it) there stops it mid-way
FOLDER_KEYS = ("cache_dir", "dataset.cache_dir")


def _cache_dir_problems(cfg: Any) -> list[str]:
    out = []
    for key in FOLDER_KEYS:
        try:
            path = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else None
        except Exception:  # noqa: BLE001 - an unresolvable value is reported by its schema
            continue
        why = not_a_folder(path) if isinstance(path, str) and path else None
        if why:
            out.append(f"{key}={path}: {why}")
    return out


def not_a_folder(path: str | Path) -> str | None:
    """Why ``path`` cannot be (or become) a folder: it, or a path above it, is a file."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if q.is_dir():
                return None
            where = "is a file" if q == p else f"{q} above it is a file"
            return f"{where}; expected a folder (created when missing)"
    return None


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


def requirement_problems(group: str, node: Mapping[str, Any]) -> list[str]:
    """A plugin whose runtime needs packages the machine lacks (``requires``: module names, and
    ``install``: the command, on its class; a device target's) is one line naming the missing
    ones and the install command, before any work. The modules are looked up, never imported."""
    import importlib.util

    from runner.schema import resolve

    target = node.get("_target_")
    if not isinstance(target, str) or refused_target(target):
        return []
    try:
        plugin = resolve(target)
    except Exception:  # noqa: BLE001 - the schema check says why the target cannot be used
        return []
    missing = []
    for module in getattr(plugin, "requires", ()) or ():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module.split(".")[0])
    if not missing:
        return []
    name = node.get("name", target)
    return [f"{group}={name} needs {', '.join(missing)}: {getattr(plugin, 'install', '')}"]
