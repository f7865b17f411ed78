"""``target=tflm``: a microcontroller running TFLite Micro (reference kernels). A file runs when
TFLite Micro prepares it (it refuses hybrid dynamic-range files, float16 and int4 DEQUANTIZE);
its RAM is the arena TFLite Micro recorded, its flash the file, and its accuracy and agreement
with LiteRT are computed in TFLite Micro itself, one sample at a time."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runner.schema import Options
from runner.targets.base import RUNS, TargetMeta, limits, plain, run_child, scores

INSTALL = 'pip install -e ".[targets]"  (or pip install "tflite-micro>=0.dev0" ethos-u-vela)'


def tflm_run(
    path: Path, inputs: np.ndarray, timeout: float
) -> tuple[dict[str, Any], np.ndarray | None]:
    """(runs / refused with the runtime's reason and the arena, its labels) for one file."""
    from runner.targets.tflm_child import ARENA, REFUSED

    with tempfile.TemporaryDirectory(prefix="tflm-") as tmp:
        x, out = Path(tmp) / "inputs.npy", Path(tmp) / "out.npz"
        np.save(x, inputs)
        p = run_child(["-m", "runner.targets.tflm_child", str(path), str(x), str(out)], timeout)
        if isinstance(p, str):
            return {"target_status": "refused", "target_reason": p}, None
        if p.returncode == REFUSED or p.returncode != 0 or not out.is_file():
            return {"target_status": "refused", "target_reason": _reason(p.stderr)}, None
        with np.load(out) as z:
            labels = z["labels"]
    arena = ARENA.search(p.stdout + p.stderr)  # MicroPrintf writes to either, by build
    return {
        "target_status": RUNS,
        "ram_bytes": int(arena.group(1)) if arena else None,
        "flash_bytes": path.stat().st_size,
    }, labels


def _reason(stderr: str) -> str:
    """The runtime's own reason in one line: the line before "failed to prepare"."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "failed to prepare" in line and i > 0:
            why = lines[i - 1].split("/")[-1]
            return f"TFLite Micro refuses it: {why} ({line})"
    tail = next((line for line in reversed(lines) if not line.startswith("Traceback")), "")
    return f"TFLite Micro refuses it: {tail[:200] or 'no reason given'}"


class TFLMOptions(Options):
    """TFLite Micro has no options of its own here: the board's limits are the group's keys."""


class TFLMTarget:
    """TFLite Micro on a microcontroller (see the module)."""

    Options = TFLMOptions
    requires = ("tflite_micro",)
    install = INSTALL

    def __init__(self, meta: TargetMeta | None = None) -> None:
        self.meta = meta or TargetMeta(name="tflm")

    def check(
        self, path: Path, inputs: np.ndarray, truth: np.ndarray, host_labels: np.ndarray
    ) -> dict[str, Any]:
        columns, labels = tflm_run(path, inputs, self.meta.timeout_seconds)
        columns["target"] = self.meta.name
        if labels is not None:
            columns |= scores(labels, truth, host_labels)
        return plain(limits(self.meta, columns))
