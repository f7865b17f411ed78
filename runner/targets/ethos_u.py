"""``target=ethos_u55_128`` (and the other Ethos-U presets): Arm's Vela compiles the file for the
NPU; its operators run on the NPU or fall back to the Cortex-M CPU (TFLite Micro). Vela runs in a
child process (it dies with SIGFPE on int4 files): a file it cannot compile is refused with its
reason. The row gets the NPU and CPU operator counts, Vela's estimated inference time and
cycles, RAM (TFLite Micro's arena for the file plus Vela's SRAM) and flash (the compiled file);
the labels are TFLite Micro's on the original file (the CPU reference the NPU's int8 kernels
follow)."""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from runner.files import atomic_copy
from runner.schema import Options
from runner.targets.base import RUNS, TargetMeta, limits, plain, run_child, scores
from runner.targets.tflm import INSTALL, tflm_run

OPS = re.compile(r"^(CPU|NPU) operators = (\d+)", re.M)


class EthosUOptions(Options):
    """Vela's presets for the NPU (``vela --help``)."""

    accelerator_config: Literal[
        "ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
        "ethos-u65-512",
    ] = Field("ethos-u55-128", description="the NPU and its MACs per cycle")  # fmt: skip
    system_config: str | None = Field(
        None, description="Vela's system preset (null: its default, Ethos_U55_High_End_Embedded)"
    )
    memory_mode: str | None = Field(
        None, description="Vela's memory mode (null: its default, Shared_Sram)"
    )


def vela(
    path: Path, opts: EthosUOptions, timeout: float, keep: Path | None = None
) -> dict[str, Any]:
    """Compile ``path`` with Vela in a child process; its columns, or refused with the reason.
    ``keep``: a folder the compiled file and Vela's summary CSV are kept in."""
    with tempfile.TemporaryDirectory(prefix="vela-") as tmp:
        args = ["-m", "ethosu.vela", "--accelerator-config", opts.accelerator_config]
        args += ["--output-dir", tmp, str(path)]
        if opts.system_config:
            args += ["--system-config", opts.system_config]
        if opts.memory_mode:
            args += ["--memory-mode", opts.memory_mode]
        p = run_child(args, timeout)
        if isinstance(p, str):
            return {"target_status": "refused", "target_reason": f"Vela: {p}"}
        compiled = next(Path(tmp).glob("*_vela.tflite"), None)
        summary = next(Path(tmp).glob("*_summary_*.csv"), None)
        if p.returncode != 0 or compiled is None or summary is None:
            lines = [line for line in (p.stderr + p.stdout).splitlines() if line.strip()]
            return {
                "target_status": "refused",
                "target_reason": f"Vela cannot compile it: {(lines or ['no reason'])[-1][:200]}",
            }
        with open(summary, newline="") as f:
            row = next(csv.DictReader(f))
        ops = dict(OPS.findall(p.stdout))
        flash = compiled.stat().st_size
        if keep is not None:  # the file to flash, and Vela's own figures, beside the model
            keep.mkdir(parents=True, exist_ok=True)
            compiled = Path(atomic_copy(compiled, keep / compiled.name))
            atomic_copy(summary, keep / summary.name)
        return {
            "target_status": RUNS,
            "npu_ops": int(ops.get("NPU", 0)),
            "cpu_ops": int(ops.get("CPU", 0)),
            "target_latency_ms": float(row["inference_time"]) * 1e3,
            "sram_bytes": float(row["sram_memory_used"]) * 1024,
            "flash_bytes": flash,
            "npu_cycles": int(float(row.get("cycles_npu") or 0)),
            "target_path": str(compiled) if keep is not None else None,
        }


class EthosUTarget:
    """An Ethos-U NPU beside a Cortex-M CPU (see the module)."""

    Options = EthosUOptions
    requires = ("ethosu.vela", "tflite_micro")  # Vela, and TFLite Micro for the CPU part
    install = INSTALL

    def __init__(self, meta: TargetMeta | None = None, **options: Any) -> None:
        self.meta = meta or TargetMeta(name="ethos_u55_128")
        self.opts = EthosUOptions(**options)

    def check(
        self, path: Path, inputs: np.ndarray, truth: np.ndarray, host_labels: np.ndarray
    ) -> dict[str, Any]:
        cpu, labels = tflm_run(path, inputs, self.meta.timeout_seconds)
        keep = path.parent / self.meta.name  # <run>/models/<target>/<stem>_vela.tflite
        npu = vela(path, self.opts, self.meta.timeout_seconds, keep)
        columns: dict[str, Any] = {"target": self.meta.name}
        if cpu["target_status"] != RUNS:  # the CPU part cannot run what Vela leaves it
            columns |= cpu
        elif npu["target_status"] != RUNS:
            columns |= npu
        else:
            sram = npu.pop("sram_bytes", 0) or 0
            npu.pop("npu_cycles", None)
            columns |= npu | {"ram_bytes": (cpu.get("ram_bytes") or 0) + int(sram)}
            columns["target_reason"] = (
                f"{columns['npu_ops']} ops on the NPU, {columns['cpu_ops']} on the CPU"
            )
            if not columns["npu_ops"]:  # Vela estimates the NPU's part only: there is none
                columns["target_latency_ms"] = None
            elif columns["cpu_ops"]:
                columns["target_reason"] += " (the estimated time is the NPU's part only)"
        if labels is not None and columns["target_status"] == RUNS:
            found = scores(labels, truth, host_labels)
            if "target_reason" in found:
                found["target_reason"] = f"{columns['target_reason']}; {found['target_reason']}"
            columns |= found
        return plain(limits(self.meta, columns))
