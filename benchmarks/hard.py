"""Section hard: where int8 loses (a tabular model normalizing raw features), and QAT over seeds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from benchmarks.common import load_rows, sh

# --------------------------------------------------------------------------- 8. where int8 loses
HARD_RECIPES = [
    "full_integer",
    "full_integer_per_tensor",
    "selective",
    "auto_int8",
    "qat",
    "qat_mixed",
]


def make_tabular_case(folder: Path) -> tuple[Path, Path]:
    """The hard case: scikit-learn's bundled breast-cancer set (569 biopsies, 30 raw features
    from ~0.001 to ~4,000), 70/30 stratified split, and a Keras model that normalizes its raw
    inputs with a first ``Normalization`` layer (as TensorFlow's structured-data tutorial
    does). Full-integer int8 quantizes that raw input tensor with one scale: step ~16, so every
    feature below ~8 becomes 0."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras
    from sklearn.datasets import load_breast_cancer

    from runner.data import stratified_split

    folder.mkdir(parents=True, exist_ok=True)
    d = load_breast_cancer()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    tr, te = stratified_split(y, 0.3, 0)
    data = folder / "breast_cancer.npz"
    np.savez(
        data,
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        class_names=np.array(["malignant", "benign"]),
    )
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(x[tr])
    inputs = keras.Input((x.shape[1],), name="features")
    h = keras.layers.Dense(32, activation="relu", name="dense1")(norm(inputs))
    h = keras.layers.Dense(16, activation="relu", name="dense2")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(h))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[tr], y[tr], epochs=100, batch_size=32, verbose=0)
    path = folder / "breast_cancer.h5"
    model.save(path)
    return path, data


def hard_case(tmp: Path) -> dict:
    """PTQ's loss on the hard case, and what each recipe wins back."""
    model, data = make_tabular_case(tmp / "hard")
    sweep = tmp / "hard_sweep"
    sh(
        [
            "-m",
            "model=pretrained",
            f"model.path={model}",
            "dataset=arrays",
            f"dataset.path={data}",
            f"recipe={','.join(HARD_RECIPES)}",
            "evaluation.latency_samples=200",
            "evaluation.progress=false",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    rows = load_rows(sweep)
    float_acc = next(
        float(r["accuracy"])
        for r in rows
        if r["artifact"].endswith(".h5") and r["recipe"] == "float"
    )
    ref = next(r for r in rows if r["artifact"] == "none.tflite")
    ptq = next(r for r in rows if r["artifact"] == "full_integer.tflite")
    loss = float_acc - float(ptq["accuracy"])
    out: dict = {
        "float_accuracy": float_acc,
        "ptq_loss_points": 100 * loss,
        "float32_bytes": int(float(ref["size_bytes"])),
        "test_samples": None,
    }
    for r in rows:
        if r["format"] != "tflite" or r["artifact"] == "none.tflite" or r["status"] != "ok":
            continue
        acc = float(r["accuracy"])
        out[r["artifact"].removesuffix(".tflite")] = {
            "accuracy": acc,
            "accuracy_delta": acc - float_acc,
            "agreement": float(r["agreement"]),
            "size_bytes": int(float(r["size_bytes"])),
            "compression": float(ref["size_bytes"]) / float(r["size_bytes"]),
            "latency_ms": float(r["latency_ms"]),
            "recovered": (acc - float(ptq["accuracy"])) / loss if loss > 0 else None,
            "float_layers": r.get("float_layers") or "",
            "note": r.get("note") or "",
        }
    with np.load(data) as npz:
        out["test_samples"] = len(npz["y_test"])
    out["warnings"] = sorted(
        {w for p in sweep.glob("*/results.json") for w in json.loads(p.read_text())["warnings"]}
    )
    return out


def qat_seeds(tmp: Path, seeds: int) -> dict:
    """QAT against full_integer on digits over ``seeds`` baselines: test images apart per seed."""
    sweep = tmp / "qat_seeds"
    sh(
        [
            "-m",
            "+experiment=qat_seeds",
            f"seed=range(0,{seeds})",
            "evaluation.latency_samples=5",
            "evaluation.progress=false",
            f"cache_dir={tmp / 'cache_seeds'}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    per_seed: dict[int, dict] = {}
    for p in sorted(sweep.glob("*/results.json")):
        job = json.loads(p.read_text())
        seed = job["config"]["seed"]
        for r in job["rows"]:
            if r["artifact"] in ("full_integer.tflite", "qat.tflite", "float.h5"):
                per_seed.setdefault(seed, {})[r["artifact"]] = r["accuracy"]
                if r["artifact"] == "qat.tflite":
                    per_seed[seed]["qat_note"] = r.get("note")
    from runner.data.digits import load_digits

    n_test = len(load_digits().test)  # what one image is worth in accuracy
    diffs = {
        s: round((v["qat.tflite"] - v["full_integer.tflite"]) * n_test)
        for s, v in per_seed.items()
        if "qat.tflite" in v and "full_integer.tflite" in v
    }
    return {
        "seeds": seeds,
        "qat_minus_full_integer_images": diffs,
        "worst_images_below_full_integer": -min(diffs.values()) if diffs else None,
        "per_seed": per_seed,
    }


def measure(tmp: Path, quick: bool) -> dict:
    return {"hard_case": hard_case(tmp), "qat_seeds": qat_seeds(tmp, 3 if quick else 9)}


def render(r: dict) -> None:
    h = r.get("hard_case")
    if h:
        print(
            f"\nhard case (breast cancer, raw features, Normalization first): float "
            f"{h['float_accuracy']:.4f}, full_integer loses {h['ptq_loss_points']:.1f} points"
        )
        print(
            "| recipe | accuracy | delta | agreement | size B | compression | latency ms | recovered |"
        )
        for k, v in h.items():
            if isinstance(v, dict):
                rec = "—" if v["recovered"] is None else f"{100 * v['recovered']:.0f} %"
                print(
                    f"| {k} | {v['accuracy']:.4f} | {v['accuracy_delta']:+.4f} | "
                    f"{v['agreement']:.4f} | {v['size_bytes']} | {v['compression']:.2f}x | "
                    f"{v['latency_ms']:.4f} | {rec} |"
                )
    q = r.get("qat_seeds")
    if q:
        print(
            f"\nQAT - full_integer on digits, test images per seed: "
            f"{q['qat_minus_full_integer_images']} (worst: {q['worst_images_below_full_integer']} below)"
        )
