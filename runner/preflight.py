"""What the command line checks while Hydra composes, before Hydra instantiates anything.

Hydra composes the config, configures logging from it, and instantiates ``hydra.callbacks``, the
sweeper and the launcher before any callback of ours runs; and it reports a bad override with
its own multi-line message and exit 1. :func:`install` wraps Hydra's config loader so that every
composition (the run's, the sweep's and each job's) is checked as it is made:

- every ``_target_`` (``hydra.callbacks`` included) and every logging factory names a package the
  runner allows (:func:`runner.schema.refused_target`), checked without importing it;
- an override Hydra cannot apply is one line with the runner's "did you mean" (an unknown key, an
  unknown option of a group), exit 2;
- in a sweep over a config group (``recipe=prune_qat,cluster_qat``), an option of that group
  (``recipe.epochs=3``) is applied to each job's own choice, not to the group's default: the
  sweeper checks every job's config before any job starts (``hydra_plugins.tfq_runner``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from runner.config import problems, target_problems

# Logging factories (Python's dictConfig imports ``class`` and calls ``()``): only these packages.
LOGGING_PACKAGES = ("logging", "colorlog", "runner", "hydra")


class ConfigProblems(SystemExit):
    """Bad config found while composing: one line each. A ``SystemExit`` (exit 2), so that
    Hydra's own error report (which catches ``Exception``) lets it through to the command line's
    edge (:func:`runner.cli.guarded`), which prints the lines."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__(2)
        self.lines = list(lines)


def report(lines: Sequence[str]) -> NoReturn:
    raise ConfigProblems(lines)


def install() -> None:
    """Wrap Hydra's ``ConfigLoaderImpl.load_configuration`` so that every composition is checked
    (raises :class:`ConfigProblems`)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    original = ConfigLoaderImpl.load_configuration
    if getattr(original, "runner_checked", False):
        return

    def load_configuration(self, config_name, overrides, run_mode, *args, **kwargs):
        def compose(given: Sequence[str]) -> Any:
            return original(self, config_name, list(given), run_mode, *args, **kwargs)

        cfg = compose_checked(compose, list(overrides))
        bad = target_problems(cfg) + logging_problems(cfg)
        if bad:
            report(bad)
        return cfg

    load_configuration.runner_checked = True  # type: ignore[attr-defined]
    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]


def compose_checked(compose: Callable[[Sequence[str]], Any], overrides: list[str]) -> Any:
    """``compose(overrides)``; a Hydra composition error becomes the runner's lines.

    A plain override of a key the composed node lacks (``recipe.epochs=3``) is retried as
    ``++key=value``: under a swept group the common config holds the group's default, and each
    job's own config is checked by the sweeper; in a single run the retried config is checked
    here, which names the closest valid key.
    """
    from hydra.errors import HydraException, MissingConfigException

    swept = swept_groups(overrides)
    forced: list[str] = []
    while True:  # ends: each retry turns one plain override into ++, which is never retried
        try:
            cfg = compose(overrides)
        except MissingConfigException as e:
            report([missing_option(e)])
        except HydraException as e:
            key = unknown_override_key(e)
            i = next((j for j, o in enumerate(overrides) if _plain_key(o) == key), None)
            if key is None or i is None:
                report([_one_line(e)])
            forced.append(key)
            overrides = [*overrides[:i], "++" + overrides[i], *overrides[i + 1 :]]
            continue
        break
    loose = [k for k in forced if k.split(".")[0] not in swept]
    if loose:  # not under a swept group: an unknown key, said with the closest valid one
        lines = [line for line in problems(cfg) if line.split(":")[0].split("=")[0] in loose]
        report(lines or [f"{k}: unknown key" for k in loose])
    return cfg


def swept_groups(overrides: Sequence[str]) -> frozenset[str]:
    """The config groups a multirun sweeps over (``recipe=a,b``, ``recipe=glob(*)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - Hydra reports a malformed override itself
        return frozenset()
    return frozenset(
        o.key_or_group.split("@")[0]
        for o in parsed
        if o.is_sweep_override() and "." not in o.key_or_group
    )


def unknown_override_key(e: Exception) -> str | None:
    """The dotted key of "Could not override 'KEY'" (a key the composed node does not have)."""
    text = str(e)
    marker = "Could not override '"
    if marker not in text:
        return None
    return text.split(marker, 1)[1].split("'", 1)[0]


def missing_option(e: Any) -> str:
    """``recipe=ful_integer``: one line naming the group, the closest option and the others."""
    missing = str(getattr(e, "missing_cfg_file", "") or "")
    options = sorted(str(o) for o in (getattr(e, "options", None) or []))
    group, _, name = missing.rpartition("/")
    if not group or not options:
        return _one_line(e)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return f"{group}={name}: no such option; {hint}options: {', '.join(options)}"


def logging_problems(cfg: Any) -> list[str]:
    """Python logging's ``class`` and ``()`` keys under ``hydra.*_logging`` import and call what
    they name: only logging's own packages are allowed there."""
    from omegaconf import OmegaConf

    out = []
    for node_key in ("hydra.hydra_logging", "hydra.job_logging"):
        node = OmegaConf.select(cfg, node_key)
        if node is None:
            continue
        container = OmegaConf.to_container(node, resolve=False)
        for key, value in _factories(container, node_key):
            if not str(value).startswith(tuple(p + "." for p in LOGGING_PACKAGES)):
                out.append(
                    f"{key}={value}: a logging factory must come from {', '.join(LOGGING_PACKAGES)}"
                )
    return out


def _factories(node: Any, prefix: str):
    if isinstance(node, Mapping):
        for k, v in node.items():
            full = f"{prefix}.{k}"
            if k in ("class", "()") and isinstance(v, str):
                yield full, v
            else:
                yield from _factories(v, full)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _factories(v, f"{prefix}[{i}]")


def _plain_key(override: str) -> str | None:
    """The key of a plain ``key=value`` override (None for ``+``/``++``/``~`` and groups)."""
    if override.startswith(("+", "~")) or "=" not in override:
        return None
    return override.split("=", 1)[0]


def _one_line(e: Exception) -> str:
    first = [line.strip() for line in str(e).splitlines() if line.strip()]
    return first[0] if first else type(e).__name__
