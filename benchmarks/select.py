"""Section select: can the verdict trust latency? The same artifacts timed in a serial sweep and
in a 2-job joblib sweep on the same cores (the machine-wide latency lock keeps the timings of
the two jobs apart), with their spread, and the verdict of each sweep."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.common import load_rows, sh

# QAT fine-tunes with every core (TensorFlow's thread pool) while the other job times: the load a
# parallel sweep puts beside a timing
RECIPES = ["qat", "dynamic_range", "float16", "full_integer", "int16x8", "qat_mixed"]


def measure(tmp: Path, quick: bool) -> dict:
    base = [
        "evaluation.latency_samples=2000",
        "evaluation.latency_warmup=50",
        "evaluation.progress=false",
        f"cache_dir={tmp / 'select-cache'}",
        f"recipe={','.join(RECIPES)}",
    ]
    if quick:
        base += ["dataset.train_size=600", "train.epochs=6", "train.early_stopping_patience=0"]
    sh(["-m", *base, f"hydra.sweep.dir={tmp / 'warm'}"])  # trains and caches the baseline
    runs = {}
    for name, extra in (
        ("serial", []),
        ("joblib_2", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]),
        (
            "joblib_2_no_lock",
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "evaluation.latency_lock=false"],
        ),
    ):
        folder = tmp / f"select-{name}"
        seconds, _ = sh(["-m", *base, *extra, f"hydra.sweep.dir={folder}"])
        rows = {r["artifact"]: r for r in load_rows(folder) if r.get("format") == "tflite"}
        verdict = json.loads((folder / "recommendation.json").read_text())["verdicts"][0]
        runs[name] = {
            "seconds": seconds,
            "p50_ms": {a: r.get("latency_p50_ms") for a, r in rows.items()},
            "spread": {a: r.get("latency_spread") for a, r in rows.items()},
            "notes": {a: r.get("latency_note") for a, r in rows.items() if r.get("latency_note")},
            "chosen": (verdict.get("chosen") or {}).get("artifact"),
        }

    def ratio(name: str) -> dict:
        return {
            a: runs[name]["p50_ms"][a] / runs["serial"]["p50_ms"][a]
            for a in runs["serial"]["p50_ms"]
            if runs["serial"]["p50_ms"].get(a) and runs[name]["p50_ms"].get(a)
        }

    return {
        "select": {
            "runs": runs,
            "p50_parallel_over_serial": ratio("joblib_2"),
            "p50_parallel_no_lock_over_serial": ratio("joblib_2_no_lock"),
        }
    }


def render(result: dict) -> None:
    s = result.get("select")
    if not s:
        return
    print(
        "\n## Latency alone: serial sweep vs 2-job joblib sweep (same artifacts)", file=sys.stderr
    )
    print(
        "| artifact | p50 serial (ms) | p50 joblib x2, lock (ms) | ratio | p50 joblib x2, "
        "no lock (ms) | ratio | spread serial / lock / no lock |"
    )
    print("|---|---|---|---|---|---|---|")
    runs = s["runs"]
    free = s.get("p50_parallel_no_lock_over_serial", {})
    for a, ratio in s["p50_parallel_over_serial"].items():
        spreads = " / ".join(
            f"{runs[n]['spread'][a]:.2f}" for n in ("serial", "joblib_2", "joblib_2_no_lock")
        )
        print(
            f"| {a} | {runs['serial']['p50_ms'][a]:.4f} | {runs['joblib_2']['p50_ms'][a]:.4f} "
            f"| {ratio:.2f} | {runs['joblib_2_no_lock']['p50_ms'][a]:.4f} | "
            f"{free.get(a, float('nan')):.2f} | {spreads} |"
        )
    print(
        f"\nchosen: serial {runs['serial']['chosen']}, joblib {runs['joblib_2']['chosen']}; "
        f"sweep seconds: serial {runs['serial']['seconds']:.1f}, joblib {runs['joblib_2']['seconds']:.1f}"
    )
