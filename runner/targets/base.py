"""What every target shares: the board's limits (the ``target`` group's keys), the columns a
check adds to a row, and the protocol each runtime implements."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import Field

from runner.schema import Options

# The columns a target check adds to a .tflite row (None where not measured).
TARGET_COLUMNS = (
    "target",
    "target_status",  # runs | refused | over_ram | over_flash
    "target_reason",
    "ram_bytes",
    "flash_bytes",
    "npu_ops",
    "cpu_ops",
    "target_latency_ms",
    "target_accuracy",
    "target_agreement",
    "target_samples",
    "target_path",  # the file the board loads, where it differs from the row's (Vela's output)
)
RUNS = "runs"


class TargetMeta(Options):
    """The runner's keys of every ``conf/target/*.yaml``: the board's name and limits."""

    name: str = Field("host", min_length=1, description="the target's name (table and verdict)")
    ram_kb: float | None = Field(
        None,
        gt=0,
        description="RAM the model may use (KiB): TFLite Micro's arena plus the NPU's SRAM; "
        "null: not checked",
    )
    flash_kb: float | None = Field(
        None, gt=0, description="flash the model file may use (KiB); null: not checked"
    )
    eval_samples: int = Field(
        1000,
        ge=1,
        description="test samples scored in the target's interpreter, one at a time (its cost); "
        "the row says how many",
    )
    timeout_seconds: float = Field(
        600, gt=0, description="a target check that runs longer is a refused row"
    )


class Target(Protocol):
    """One runtime: checks a written ``.tflite`` file and returns its :data:`TARGET_COLUMNS`."""

    meta: TargetMeta
    # the modules its runtime needs (looked up before any work; empty: the host, nothing to
    # check on a device) and the command that installs them
    requires: tuple[str, ...]
    install: str

    def check(
        self, path: Path, inputs: np.ndarray, truth: np.ndarray, host_labels: np.ndarray
    ) -> dict[str, Any]:
        """``inputs``: test samples ready for the file's input (its dtype and scale);
        ``truth`` and ``host_labels`` (LiteRT's labels) on the same samples."""
        ...


def limits(meta: TargetMeta, columns: dict[str, Any]) -> dict[str, Any]:
    """``columns`` with the board's limits applied: a file that runs but needs more RAM or
    flash than ``target.ram_kb`` / ``target.flash_kb`` is ``over_ram`` / ``over_flash``."""
    if columns.get("target_status") != RUNS:
        return columns
    for key, limit, status in (
        ("ram_bytes", meta.ram_kb, "over_ram"),
        ("flash_bytes", meta.flash_kb, "over_flash"),
    ):
        need = columns.get(key)
        if limit is not None and need is not None and need > limit * 1024:
            what = key.split("_")[0].upper() if key == "ram_bytes" else "flash"
            return columns | {
                "target_status": status,
                "target_reason": f"needs {need / 1024:.1f} KiB of {what}, the board has "
                f"{limit:g} KiB (target.{key.replace('_bytes', '_kb')})",
            }
    return columns


def run_child(args: Sequence[str], timeout: float) -> subprocess.CompletedProcess | str:
    """Run a runtime in a child process (it may abort: SIGFPE, an assert in C++); its result,
    or why it died, in one line."""
    try:
        p = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no answer in {timeout:g} s (target.timeout_seconds)"
    if p.returncode < 0:
        import signal

        name = signal.Signals(-p.returncode).name if -p.returncode in signal.valid_signals() else ""
        return f"the runtime crashed ({name or 'signal ' + str(-p.returncode)})"
    return p


def scores(labels: np.ndarray, truth: np.ndarray, host_labels: np.ndarray) -> dict[str, Any]:
    """Accuracy in the target's interpreter and its agreement with LiteRT's labels."""
    n = len(labels)
    out = {
        "target_accuracy": float(np.mean(labels == truth[:n])) if n else None,
        "target_agreement": float(np.mean(labels == host_labels[:n])) if n else None,
        "target_samples": n,
    }
    differ = int(np.sum(labels != host_labels[:n]))
    if differ:  # the same file, other labels: what the board computes is not what LiteRT did
        out["target_reason"] = f"its labels differ from LiteRT's on {differ} of {n} test samples"
    return out


def plain(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Every target column, None where not set."""
    return {c: columns.get(c) for c in TARGET_COLUMNS}


def on_target(
    target: Target, art: Any, m: Any, test: Any, scaling: Any, memo: Path | None = None
) -> dict[str, Any]:
    """The target's columns of one scored artifact (none for the host or a Keras file): its
    first ``target.eval_samples`` test samples, prepared for the file's input as LiteRT's were,
    with LiteRT's labels on the same samples. ``memo``: a folder (the baseline's cache entry)
    where a file's check is kept by its hash, the target's settings and the samples, so every
    job of a sweep checks the shared float32 reference once."""
    from runner.evaluation.interpreter import TFLiteModel

    if art.format != "tflite" or not target.requires:
        return {}
    n = min(target.meta.eval_samples, len(test.y))
    raw = np.asarray(test.x[:n])
    host = np.asarray(m.labels[:n]) if m.labels is not None else np.full(n, -1)
    truth = np.asarray(test.y[:n])

    def check() -> dict[str, Any]:  # inputs prepared for the file only when it is checked
        inputs = TFLiteModel(art.path).prepare(raw, scaling)
        return target.check(art.path, inputs, truth, host)

    spec = _check_spec(target, art.path, raw, scaling, truth, host)
    columns = memo_check(memo, spec, check, art.path.parent / target.meta.name)
    accuracy = columns.get("target_accuracy")
    if n < len(test.y) and accuracy is not None:
        note = cut_split_note(accuracy, n, len(test.y))
        columns["target_reason"] = "; ".join(filter(None, [columns.get("target_reason"), note]))
    return columns


def cut_split_note(accuracy: float, n: int, total: int) -> str:
    """What scoring ``n`` of ``total`` test samples on the target costs in certainty: the 95 %
    interval half-width of an accuracy measured on ``n`` samples (normal approximation)."""
    half = 1.96 * float(np.sqrt(max(accuracy * (1 - accuracy), 0.25 / n) / n))
    return (
        f"scored there on {n} of {total} test samples (target.eval_samples): its accuracy "
        f"{accuracy:.4f} is known to +-{half:.3f} (95 %)"
    )


def _check_spec(target: Target, path: Path, raw, scaling, truth, host) -> dict[str, Any]:
    from runner.cache import package_versions
    from runner.evaluation.memo import fingerprint
    from runner.files import sha256_file

    return {
        "file": sha256_file(path),
        "target": type(target).__name__,
        "settings": {**target.meta.model_dump(), **_options(target)},
        "samples": fingerprint(raw, truth, host),
        "scaling": scaling.as_dict(),
        "versions": package_versions(["tflite-micro", "ethos-u-vela"]),
        "memo_version": 2,  # 2: keyed by the raw samples and their scaling
    }


def _options(target: Target) -> dict[str, Any]:
    opts = getattr(target, "opts", None)
    return opts.model_dump() if opts is not None else {}


def memo_check(folder: Path | None, spec: dict[str, Any], check: Any, keep: Path) -> dict[str, Any]:
    """``check()``'s columns, kept in ``folder`` under ``spec`` (with the file the board loads,
    restored into ``keep`` on a hit); computed when ``folder`` is None or holds none."""
    import contextlib
    import json

    from runner.cache import cache_key
    from runner.files import atomic_write_bytes, atomic_write_text

    if folder is None:
        return check()
    stem = Path(folder) / f"target-{cache_key(spec)}"
    try:
        columns = json.loads(stem.with_suffix(".json").read_text())
        if columns.get("target_path"):
            name = Path(columns["target_path"]).name
            columns["target_path"] = str(
                atomic_write_bytes(keep / name, stem.with_suffix(".tflite").read_bytes())
            )
        return columns
    except (OSError, ValueError):
        pass
    columns = check()
    with contextlib.suppress(OSError):  # a read-only cache only costs the speed-up
        if columns.get("target_path"):
            atomic_write_bytes(
                stem.with_suffix(".tflite"), Path(columns["target_path"]).read_bytes()
            )
        atomic_write_text(stem.with_suffix(".json"), json.dumps(columns))
    return columns
