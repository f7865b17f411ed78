"""Shared by every section: where the data is, running the CLI, reading its rows."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from runner.config import sweep_values

ROOT = Path(__file__).resolve().parents[1]
WEIBO = ROOT.parent / "shared" / "data" / "weibo_rumor" / "weibo_rumor.csv"
# the recipes of the main job (+experiment=core_recipes), less the ai-edge-quantizer one (its
# own section: --only int4)
RECIPES = [r for r in sweep_values("core_recipes") if r != "int4_weight_only"]


def sh(args: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        **kw,
    )
    if p.returncode not in (0, 1):
        raise SystemExit(
            f"benchmark run failed ({p.returncode}): {' '.join(args)}\n{p.stderr[-3000:]}"
        )
    return time.perf_counter() - t0, p


def load_rows(folder: Path) -> list[dict]:
    return json.loads((folder / "comparison.json").read_text())


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
        )
    from runner.report.results import versions  # what every results.json records

    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "libraries": versions(),
        "num_threads": 1,
    }


def quality(rows: list[dict]) -> dict:
    ref = next(r for r in rows if r["artifact"] == "none.tflite")
    out = {}
    for r in rows:
        if (
            r.get("role", r["recipe"]) in ("float", "none", "reference")
            or r["status"] != "ok"
            or r["format"] != "tflite"
        ):
            continue
        out[r["recipe"]] = {
            "compression": r["compression"],
            "accuracy_delta": r["accuracy_delta"],
            "agreement": r["agreement"],
            "latency_ratio": r["latency_ms"] / ref["latency_ms"],
            "latency_ms": r["latency_ms"],
        }
    for r in rows:
        if r["status"] != "ok" and r["recipe"] not in out:
            out[r["recipe"]] = {"failed": r["error"]}
    return out


def fallback(rows: list[dict]) -> dict:
    """Full int8 against auto_int8: accuracy, size and how many layers it left in float."""
    out = {}
    for r in rows:
        if r["recipe"] in ("full_integer", "auto_int8"):
            out[r["recipe"]] = (
                {
                    "accuracy": r["accuracy"],
                    "accuracy_delta": r["accuracy_delta"],
                    "size_mb": r["size_mb"],
                    "float_layers": int(str(r.get("float_layers") or "0").split(":")[0]),
                    "which": r.get("float_layers"),
                    "note": r.get("note"),
                }
                if r["status"] == "ok"
                else {"failed": r["error"]}
            )
    return out


def make_cifar(folder: Path, n_train: int, n_test: int) -> Path:
    """A generated data set in the real ``cifar-100-python`` layout (uint8 noise, 100 classes)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data[:, :100] = (labels[:, None] * 2).astype(
            np.uint8
        )  # a learnable signal in the first pixels
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    b"data": data,
                    b"fine_labels": labels.tolist(),
                    b"coarse_labels": (labels // 5).tolist(),
                },
                f,
                protocol=4,
            )
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"s{i}".encode() for i in range(20)],
            },
            f,
        )
    return folder


# --------------------------------------------------------------------------- 4. memory


def pretrained_sweep(recipes: list[str], path: Path, data: Path, scaling: str, run_dir: Path):
    """Sweep ``recipes`` over a user's model file on a ``dataset=arrays`` file (as a user runs
    it), into ``run_dir``; returns :func:`sh`'s (seconds, process)."""
    return sh(
        [
            "-m",
            f"recipe={','.join(recipes)}",
            "model=pretrained",
            f"model.path={path}",
            f"model.input_scaling={scaling}",
            "dataset=arrays",
            f"dataset.path={data}",
            "evaluation.latency_samples=20",
            "evaluation.progress=false",
            f"hydra.sweep.dir={run_dir}",
        ],
        timeout=7200,
    )


def child_peak_rss_gb(args: list[str]) -> tuple[float, float, str]:
    """(peak RSS in GiB, wall seconds, stderr) of ``python -m runner ARGS``, measured by a fresh
    parent process, so no earlier section's children count."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run([sys.executable, '-m', 'runner', *sys.argv[1:]], capture_output=True, text=True); "
        "w = time.perf_counter() - t; sys.stderr.write(p.stderr); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, w, p.returncode)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    kib, wall, rc = p.stdout.split()
    if rc not in ("0", "1"):
        raise SystemExit(f"benchmark run failed ({rc}): {' '.join(args)}\n{p.stderr[-3000:]}")
    return int(kib) / 2**20, float(wall), p.stderr
