"""Section recovery: of what full int8 loses against the float model, the share each recovery
recipe wins back, on real architectures and the hard case.

Each case is a keras.applications model built with ``weights=None`` at 32x32 (the full-size
builder: EfficientNetB0 has 4.06 M parameters), fitted 3 epochs on digits upscaled to RGB by
Keras 3 or tf_keras in a subprocess, saved, and run through the runner as a user's file; the
hard case is the breast-cancer model of section ``hard``. Every accuracy is the ``.tflite`` in
LiteRT on the test split. A case where ``full_integer`` loses under 1 point is listed with its
loss and no shares (a share of nothing is noise). ``recovered = (recipe - full_integer) /
(float - full_integer)``; ``seconds`` is the recipe's own CPU time (fine-tuning or search plus
conversion). Run with ``--only recovery`` (about 75 minutes here); ``--quick`` runs EfficientNetB0
alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import ROOT, load_rows, pretrained_sweep

RECIPES = [
    "full_integer",
    "full_integer_mean_ranges",
    "adaround",
    "mixed_a16w8",
    "auto_int8",
    "qat",
    "int16x8",
]
# (Keras, family): the architectures users ship whose full int8 loses on this data
CASES = [
    ("3", "efficientnet_b0"),
    ("3", "mobilenet_v3_small"),
    ("2", "mobilenet_v2"),
    ("2", "efficientnet_v2_b0"),
]
MIN_LOSS = 0.01


def _fixtures():
    sys.path.insert(0, str(ROOT / "tests"))
    import applications_fixtures  # noqa: PLC0415 - the tests' generator, not a package

    return applications_fixtures


def _build(af, folder: Path, data: Path, keras: str, family: str) -> Path:
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, af.__file__, str(folder), str(data), "--keras", keras]
    args += ["--families", family, "--size", "full", "--epochs", "3"]
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_USE_LEGACY_KERAS"}
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return folder / f"{family}.{'keras' if keras == '3' else 'h5'}"


def _case(path: Path, data: Path, scaling: str, run_dir: Path) -> dict:
    pretrained_sweep(RECIPES, path, data, scaling, run_dir)
    rows = {r["artifact"]: r for r in load_rows(run_dir)}
    float_acc = rows.get(path.name, {}).get("accuracy")
    full = rows.get("full_integer.tflite", {}).get("accuracy")
    loss = None if float_acc is None or full is None else float_acc - full
    out: dict = {"float_accuracy": float_acc, "loss": loss, "recipes": {}}
    for recipe in RECIPES:
        r = rows.get(f"{recipe}.tflite", {})
        acc = r.get("accuracy")
        share = None
        if acc is not None and loss is not None and loss >= MIN_LOSS:
            share = (acc - full) / loss
        out["recipes"][recipe] = {
            "status": r.get("status", "missing"),
            "accuracy": acc,
            "agreement": r.get("agreement"),
            "recovered": share,
            "size_mb": (r.get("size_bytes") or 0) / 1e6,
            "seconds": (r.get("train_seconds") or 0) + (r.get("convert_seconds") or 0),
            "note": (r.get("note") or r.get("error") or "")[:300],
        }
    return out


def measure(tmp: Path, quick: bool) -> dict:
    af = _fixtures()
    data = af.write_digits32(tmp / "digits32.npz", n_train=1100, n_val=297)
    out: dict[str, dict] = {}
    for keras, family in CASES[:1] if quick else CASES:
        path = _build(af, tmp / f"keras{keras}", data, keras, family)
        key = f"{family} (Keras {keras if keras == '3' else '2: tf_keras'}, full size)"
        out[key] = _case(path, data, af.input_scaling(family), tmp / f"{family}-k{keras}")
    if not quick:
        from benchmarks.hard import make_tabular_case

        model, tab = make_tabular_case(tmp / "hard")
        out["hard case (breast cancer)"] = _case(model, tab, "none", tmp / "hard-run")
    return {"recovery": out}


def render(r: dict) -> None:
    print(
        "\nrecovery | float | full int8 loss | "
        + " | ".join(RECIPES[1:])
        + " |\n|---|---|---|"
        + "---|" * (len(RECIPES) - 1)
    )
    for case, e in r.get("recovery", {}).items():
        cells = []
        for recipe in RECIPES[1:]:
            v = e["recipes"][recipe]
            if v["status"] != "ok":
                cells.append(f"{v['status']}: {v['note'][:40]}")
                continue
            share = "-" if v["recovered"] is None else f"{100 * v['recovered']:.0f} %"
            cells.append(
                f"{share} ({v['accuracy']:.3f}, {v['size_mb']:.2f} MB, {v['seconds']:.0f} s)"
            )
        fa, loss = e["float_accuracy"], e["loss"]
        print(
            f"| {case} | {'-' if fa is None else f'{fa:.3f}'} | "
            f"{'-' if loss is None else f'{100 * loss:.1f} pt'} | " + " | ".join(cells) + " |"
        )
