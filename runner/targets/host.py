"""``target=host`` (the default): the file runs in LiteRT on this machine, as every row's own
columns measure it; no target columns are added."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runner.schema import Options
from runner.targets.base import TargetMeta


class HostOptions(Options):
    """The host has no options: LiteRT's own columns are the row."""


class HostTarget:
    Options = HostOptions
    requires: tuple[str, ...] = ()  # nothing is checked on a device
    install = ""

    def __init__(self, meta: TargetMeta | None = None) -> None:
        self.meta = meta or TargetMeta()

    def check(
        self, path: Path, inputs: np.ndarray, truth: np.ndarray, host_labels: np.ndarray
    ) -> dict[str, Any]:
        return {}
