"""Section targets: what checking every file on a device target costs, and what it finds. The
same digits sweep on the host, on TFLite Micro and on an Ethos-U55-128, with each file's status,
RAM, flash, NPU ops and TFLite Micro's agreement with LiteRT; the sweep's wall time on each
target against the host's (the baseline and the conversions are cached by the first sweep)."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import load_rows, sh

RECIPES = "none,dynamic_range,float16,full_integer,int16x8,int8_weight_only,int4_weight_only"
COLUMNS = ("target_status", "ram_bytes", "flash_bytes", "npu_ops", "cpu_ops")
COLUMNS += ("target_latency_ms", "target_accuracy", "target_agreement")


def measure(tmp: Path, quick: bool) -> dict:
    base = [f"cache_dir={tmp / 'targets-cache'}", f"recipe={RECIPES}", "evaluation.progress=false"]
    if quick:
        base += ["dataset.train_size=600", "train.epochs=6", "train.early_stopping_patience=0"]
    sh(["-m", *base, f"hydra.sweep.dir={tmp / 'targets-warm'}"])  # trains, caches conversions
    out: dict = {}
    for target in ("host", "tflm", "ethos_u55_128"):
        folder = tmp / f"targets-{target}"
        seconds, _ = sh(["-m", *base, f"target={target}", f"hydra.sweep.dir={folder}"])
        rows = {r["artifact"]: r for r in load_rows(folder) if r.get("format") == "tflite"}
        out[target] = {
            "seconds": seconds,
            "rows": {a: {c: r.get(c) for c in COLUMNS} for a, r in rows.items()},
        }
    host = out["host"]["seconds"]
    for target in ("tflm", "ethos_u55_128"):
        out[target]["seconds_over_host"] = out[target]["seconds"] / host if host else None
    return {"targets": out}


def render(result: dict) -> None:
    t = result.get("targets")
    if not t:
        return
    print(
        "\n## Device targets: the same sweep on the host, TFLite Micro and Ethos-U55-128",
        file=sys.stderr,
    )
    for target in ("tflm", "ethos_u55_128"):
        r = t[target]
        print(f"\n{target}: sweep {r['seconds']:.1f} s ({r['seconds_over_host']:.2f}x the host's)")
        print("| file | " + " | ".join(COLUMNS) + " |")
        print("|---|" + "---|" * len(COLUMNS))
        for a, row in r["rows"].items():
            print(
                f"| {a} | " + " | ".join("" if v is None else str(v) for v in row.values()) + " |"
            )
