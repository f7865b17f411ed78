"""Which code a config may name: the packages a ``_target_`` may come from.

A config is data. A ``_target_`` anywhere in it (a recipe's, a data set's, ``hydra.callbacks``)
is imported and called, so one naming ``os.system`` or ``pathlib.Path.touch`` would run code
from a config file: a team sharing a config folder would share code execution. Only the
runner's packages, Hydra's plugin namespace (launchers and sweepers installed as Hydra plugins)
and Hydra's built-in plugins are allowed, plus the plugin packages a user names in
``$TFQ_RUNNER_PLUGINS``; the check reads the name only, never importing it first.
"""

from __future__ import annotations

import os
import re
from typing import Any

# The packages a config's ``_target_`` may name: the runner's own, Hydra's plugin namespace (the
# launchers and sweepers installed as Hydra plugins) and Hydra's built-in ones. Anything else is
# refused before it is imported: a config is data, and a shared config folder must not be a way
# to run code. A package of your own is named in this environment variable (comma-separated).
PLUGINS_ENV = "TFQ_RUNNER_PLUGINS"
ALLOWED_PACKAGES = ("runner", "hydra_plugins", "hydra._internal.core_plugins")


def allowed_packages() -> tuple[str, ...]:
    """The runner's packages and the plugin packages named in ``$TFQ_RUNNER_PLUGINS``."""
    named = [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]
    return (*ALLOWED_PACKAGES, *named)


def refused_target(target: Any) -> str | None:
    """Why a ``_target_`` may not be used (one phrase), or None; nothing is imported to say it."""
    text = str(target)
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", text):
        return "expected package.module.name"
    allowed = allowed_packages()
    if any(text == p or text.startswith(p + ".") for p in allowed):
        return None
    return (
        f"{text.split('.')[0]} is not a runner package nor a plugin named in ${PLUGINS_ENV} "
        f"(allowed: {', '.join(allowed)}); to use a plugin package of your own, run with "
        f"{PLUGINS_ENV}={text.split('.')[0]}"
    )
