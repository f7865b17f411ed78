"""Section families: the keras.applications families through full int8, QAT and auto_int8.

Each family is built (its generic builder at its smallest: tests/applications_fixtures.py), fitted
3 epochs on digits upscaled to 32x32 RGB by Keras 3 or tf_keras in a subprocess, saved, and run
through the runner as a user's pretrained file: ``full_integer``, ``qat`` and ``auto_int8``
(holdout: the data set's own validation split). Agreement with the float model and size come
from the ``.tflite`` files in LiteRT. ``--quick`` runs the test suite's subset of families.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import ROOT, load_rows, pretrained_sweep

RECIPES = ["full_integer", "qat", "auto_int8"]


def _fixtures():
    sys.path.insert(0, str(ROOT / "tests"))
    import applications_fixtures  # noqa: PLC0415 - the tests' generator, not a package

    return applications_fixtures


def measure(tmp: Path, quick: bool) -> dict:
    af = _fixtures()
    cases = af.CI_SUBSET if quick else [(k, f) for k in ("3", "2") for f in af.FAMILIES]
    data = af.write_digits32(tmp / "digits32.npz", n_train=1100, n_val=297)
    out: dict[str, dict] = {}
    for keras in ("3", "2"):
        families = [f for k, f in cases if k == keras]
        if not families:
            continue
        folder = af.make(tmp / f"keras{keras}", data, keras, families)
        for family in families:
            path = folder / f"{family}.{'keras' if keras == '3' else 'h5'}"
            run_dir = tmp / f"{family}-k{keras}"
            pretrained_sweep(RECIPES, path, data, af.input_scaling(family), run_dir)
            rows = {r["artifact"]: r for r in load_rows(run_dir)}
            key = f"{family} (Keras {keras if keras == '3' else '2: tf_keras'})"
            entry: dict[str, dict] = {}
            float_row = rows.get(path.name, {})
            entry["float"] = {"accuracy": float_row.get("accuracy")}
            none = rows.get("none.tflite", {})  # the reference: float32, every job's first row
            entry["none"] = {"agreement": none.get("agreement"), "size_mb": _mb(none)}
            for recipe in RECIPES:
                r = rows.get(f"{recipe}.tflite", {})
                entry[recipe] = {
                    "status": r.get("status", "missing"),
                    "agreement": r.get("agreement"),
                    "accuracy": r.get("accuracy"),
                    "size_mb": _mb(r),
                    "float_layers": r.get("float_layers"),
                    "note": (r.get("note") or r.get("error") or "")[:300],
                }
            out[key] = entry
    return {"families": out}


def _mb(row: dict) -> float:
    return (row.get("size_bytes") or 0) / 1e6


def render(r: dict) -> None:
    print(
        "\nfamilies | float acc | float32 agr / MB | full int8 agr / MB | qat agr / MB | "
        "auto_int8 agr / MB (float layers) |"
    )
    print("|---|---|---|---|---|---|")
    for family, e in r.get("families", {}).items():
        cells = []
        for recipe in RECIPES:
            v = e[recipe]
            if v["status"] != "ok":
                cells.append(f"{v['status']}: {v['note'][:50]}")
                continue
            extra = f" ({v['float_layers']})" if recipe == "auto_int8" else ""
            cells.append(f"{v['agreement']:.3f} / {v['size_mb']:.3f}{extra}")
        acc, none = e["float"]["accuracy"], e.get("none", {})
        if none.get("agreement") is not None:
            cells.insert(0, f"{none['agreement']:.3f} / {none['size_mb']:.3f}")
        else:
            cells.insert(0, "-")
        print(f"| {family} | {acc if acc is None else f'{acc:.3f}'} | " + " | ".join(cells) + " |")
