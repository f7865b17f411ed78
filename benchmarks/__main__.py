"""``python -m benchmarks [--out PATH] [--quick]``: speed, size, quality and memory, in one run.

Every figure is a ratio measured inside this one run (these machines are noisy), written as one
JSON object (default ``benchmarks/results/latest.json``) and printed as a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIBO = ROOT.parent / "shared" / "data" / "weibo_rumor" / "weibo_rumor.csv"
RECIPES = ["none", "dynamic_range", "float16", "full_integer", "int16x8", "qat"]


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


# --------------------------------------------------------------------------- 1. sweep cost
def sweep_cost(tmp: Path, base: list[str], recipes: list[str]) -> dict:
    cached_dir = tmp / "cached"
    wall_cached, _ = sh(
        [
            "-m",
            *base,
            f"recipe={','.join(recipes)}",
            f"cache_dir={tmp / 'cache_c'}",
            f"hydra.sweep.dir={cached_dir}",
        ]
    )
    rows = load_rows(cached_dir)
    fit = next(float(r["train_seconds"]) for r in rows if r["recipe"] == "float")
    # Each job's own stage timings (results.json): the baseline stage of the job that trained
    # (framework import, model build, fit, cache store) is "one training"; every job's recipe
    # production (conversion, QAT fine-tuning) and evaluation are "the recipes' own" work. What is
    # left of the wall time is the sweep's overhead: process and Hydra start-up, per-job config
    # composition, data loading, cache reads, the sweep report.
    jobs = [json.loads(p.read_text()) for p in sorted(cached_dir.glob("*/results.json"))]
    train = max(j["timings"]["baseline_seconds"] for j in jobs)
    own = sum(j["timings"]["convert_seconds"] + j["timings"]["evaluate_seconds"] for j in jobs)
    data = sum(j["timings"]["data_seconds"] for j in jobs)
    wall_naive = 0.0
    for i, recipe in enumerate(recipes):  # the naive way: every recipe trains its own baseline
        w, _ = sh(
            [
                *base,
                f"recipe={recipe}",
                f"cache_dir={tmp / f'cache_n{i}'}",
                f"hydra.run.dir={tmp / f'naive{i}'}",
            ]
        )
        wall_naive += w
    return {
        "wall_cached_s": wall_cached,
        "wall_naive_s": wall_naive,
        "train_s": train,
        "fit_s": fit,
        "recipes_convert_eval_s": own,
        "data_loading_s": data,
        "overhead_s": wall_cached - train - own,
        "sweep_cost_ratio": wall_cached / (train + own),
        # stricter: "one training" as Keras fit alone (the one TensorFlow import counts as overhead)
        "sweep_cost_ratio_fit_only": wall_cached / (fit + own),
        "naive_over_cached": wall_naive / wall_cached,
        "rows": rows,
    }


# --------------------------------------------------------------------------- 2. evaluation overhead
def eval_overhead(models_dir: Path, x_raw: np.ndarray, batch_size: int, repeats: int) -> dict:
    """Samples per second of three ways to score the same file; each the best of ``repeats``.

    The three are timed in turn within every round, so a noisy neighbour slows all of them, and
    the best round of each is kept (as ``timeit`` advises): what is compared is the code, not the
    machine's moods.
    """
    from ai_edge_litert.interpreter import Interpreter

    import runner  # noqa: F401
    from runner.data import Scaling
    from runner.evaluate import TFLiteModel

    unit = Scaling("unit")
    out = {}
    for path in sorted(models_dir.glob("*.tflite")):
        model = TFLiteModel(path, num_threads=1)
        model.predict(x_raw[:batch_size], unit, batch_size)  # warm-up
        # raw: the same batches, prepared beforehand; only set_tensor + invoke in the loop
        raw_m = TFLiteModel(path, num_threads=1)
        batches = [
            raw_m.prepare(x_raw[s : s + batch_size], unit) for s in range(0, len(x_raw), batch_size)
        ]
        interp, idx = raw_m._interp, raw_m.input["index"]
        # the seeds' loop: one sample at a time, set_tensor / invoke / get_tensor
        seed = Interpreter(model_path=str(path), num_threads=1)
        seed.allocate_tensors()
        inp, outp = seed.get_input_details()[0], seed.get_output_details()[0]
        xs = [raw_m.prepare(x_raw[i : i + 1], unit) for i in range(len(x_raw))]
        best = {"eval": math.inf, "raw": math.inf, "seed": math.inf}
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.predict(x_raw, unit, batch_size)
            best["eval"] = min(best["eval"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            for b in batches:
                if len(b) != raw_m._batch:
                    raw_m._resize(len(b))
                interp.set_tensor(idx, b)
                interp.invoke()
            best["raw"] = min(best["raw"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            for x in xs:
                seed.set_tensor(inp["index"], x)
                seed.invoke()
                seed.get_tensor(outp["index"])
            best["seed"] = min(best["seed"], time.perf_counter() - t0)
        n = len(x_raw)
        out[path.stem] = {
            "eval_per_s": n / best["eval"],
            "raw_invoke_per_s": n / best["raw"],
            "seed_loop_per_s": n / best["seed"],
            "samples": n,
            "rounds": repeats,
        }
    return out


# --------------------------------------------------------------------------- 3. compression on a >= 1 MB model
def resnet_compression(tmp: Path, quick: bool) -> dict:
    n_train, n_test = (300, 100) if quick else (2000, 500)
    base = [
        "dataset=cifar100",
        f"dataset.path={make_cifar(tmp / 'small_cifar', n_train, n_test)}",
        "model=resnet",
        "model.width=32",  # 1.1 M parameters, 4.3 MB float32 (width 16 is 1.1 MB, where file overhead shows)
        "train.epochs=1",
        f"evaluation.latency_samples={5 if quick else 20}",
        "evaluation.progress=false",
    ]
    recipes = [r for r in RECIPES if r != "qat"] + ["full_integer_per_tensor", "auto_int8"]
    if quick:  # the compression column only: int16x8's reference kernels and the search are slow
        recipes = [r for r in recipes if r not in ("int16x8", "auto_int8")]
    folder = tmp / "resnet"
    sh(
        [
            "-m",
            *base,
            # post-training recipes only: QAT of this model costs minutes; its compression is measured on digits and Weibo
            "recipe=" + ",".join(recipes),
            f"cache_dir={tmp / 'cache_r'}",
            f"hydra.sweep.dir={folder}",
        ]
    )
    return {r["artifact"]: r for r in load_rows(folder)}


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
def peak_memory(tmp: Path, quick: bool) -> float:
    n = 10_000 if quick else 50_000
    path = make_cifar(tmp / "cifar_full", n, n // 5)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    sh(
        [
            "dataset=cifar100",
            f"dataset.path={path}",
            "train.epochs=1",
            "recipe=dynamic_range",
            "evaluation.latency_samples=5",
            "evaluation.progress=false",
            f"cache_dir={tmp / 'cache_m'}",
            f"hydra.run.dir={tmp / 'mem'}",
        ]
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(peak, before) / 1024 / 1024  # KiB -> GiB


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


# --------------------------------------------------------------------------- 9. int4 (AEQ)
AEQ_RECIPES = [
    "dynamic_range",
    "int8_weight_only",
    "int4_weight_only",
    "int4_dynamic",
    "int4_mixed",
    "aeq_static_int8",
]
AEQ_ALGORITHMS = ["min_max_uniform_quantize", "octav", "mse", "gptq", "oscar"]


def int4_backend(tmp: Path, quick: bool) -> dict:
    """The AEQ recipes (and the converter's dynamic_range beside them) on digits, the Weibo
    text CNN and the CIFAR-shaped ResNet-20; AEQ's algorithms on digits int4."""
    latency = [
        "evaluation.latency_samples=" + ("20" if quick else "200"),
        "evaluation.progress=false",
    ]
    settings = {"digits_small_cnn": []}
    if WEIBO.exists() and not quick:
        settings["weibo_text_cnn"] = ["dataset=fake_news", f"dataset.path={WEIBO}"]
    n_train, n_test = (300, 100) if quick else (2000, 500)
    settings["resnet20_cifar_shaped"] = [
        "dataset=cifar100",
        f"dataset.path={make_cifar(tmp / 'aeq_cifar', n_train, n_test)}",
        "model=resnet",
        "model.width=32",
        "train.epochs=1",
    ]
    out: dict = {}
    for name, args in settings.items():
        folder = tmp / f"aeq_{name}"
        sh(
            [
                "-m",
                *args,
                *latency,
                f"recipe={','.join(AEQ_RECIPES)}",
                f"cache_dir={tmp / 'cache_aeq'}",
                f"hydra.sweep.dir={folder}",
            ]
        )
        rows = load_rows(folder)
        out[name] = quality(rows) | {
            "float32_bytes": next(
                int(float(r["size_bytes"])) for r in rows if r["artifact"] == "none.tflite"
            )
        }
    algorithms = {}
    for alg in AEQ_ALGORITHMS:
        folder = tmp / f"aeq_alg_{alg}"
        sh(
            [
                "recipe=int4_weight_only",
                f"recipe.rules=[{{scope: '.*', op: '*', mode: weight_only, bits: 4, algorithm: {alg}}}]",
                *latency,
                f"cache_dir={tmp / 'cache_aeq'}",
                f"hydra.run.dir={folder}",
            ]
        )
        rows = json.loads((folder / "results.json").read_text())["rows"]
        row = next((r for r in rows if r["recipe"] == "int4_weight_only"), {})
        algorithms[alg] = quality(rows).get("int4_weight_only", {}) | {
            "float_layers": row.get("float_layers"),
            "output_sqnr_db": row.get("output_sqnr_db"),
        }
    out["digits_int4_algorithms"] = algorithms
    return out


# --------------------------------------------------------------------------- 7. user image folders
def write_png_folder(root: Path, n: int, size: int, classes: int = 10) -> Path:
    """``n`` PNG images (``size`` x ``size`` RGB) in one folder per class: flat noise-free
    colours with a class-coloured square, so they compress like real photos' flat regions."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        px = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        px[: size // 2, : size // 2] = (c * 25, 255 - c * 25, 128)
        Image.fromarray(px).save(root / f"class{c:02d}" / f"{i:06d}.png")
    return root


def child_peak_rss_gb(args: list[str]) -> tuple[float, float]:
    """(peak RSS in GiB, wall seconds) of ``python -m runner ARGS`` measured by a fresh parent
    process, so no earlier section's children count."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "p = subprocess.run([sys.executable, '-m', 'runner', *sys.argv[1:]], capture_output=True, text=True); "
        "w = time.perf_counter() - t; "
        "sys.stderr.write(p.stderr[-3000:] if p.returncode else ''); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, w, p.returncode)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    kib, wall, rc = p.stdout.split()
    if rc not in ("0", "1"):
        raise SystemExit(f"benchmark run failed ({rc}): {' '.join(args)}\n{p.stderr}")
    return int(kib) / 1024 / 1024, float(wall)


def image_folders(tmp: Path, quick: bool) -> dict:
    """Decode throughput and data-stage time (first run, cache hit) of generated PNG folders,
    and the peak RSS of a whole run on 50,000 64x64x3 images."""
    from runner.data.images import load_image_folder

    out: dict = {}
    n_small, n_big = (2_000, 10_000) if quick else (10_000, 50_000)
    for n in (n_small, n_big):
        root = write_png_folder(tmp / f"png32_{n}", n, 32)
        for workers in (1, None):
            cache = tmp / f"img_cache_{n}_{workers}"
            t0 = time.perf_counter()
            load_image_folder(path=str(root), image_size=32, cache_dir=str(cache), workers=workers)
            first = time.perf_counter() - t0
            hits = []
            for _ in range(3):
                t0 = time.perf_counter()
                load_image_folder(path=str(root), image_size=32, cache_dir=str(cache))
                hits.append(time.perf_counter() - t0)
            key = f"{n}x32x32_{'1_worker' if workers == 1 else f'{os.cpu_count()}_workers'}"
            out[key] = {
                "images": n,
                "first_run_seconds": first,
                "decode_images_per_s": n / first,
                "cache_hit_seconds": min(hits),
            }
    n_mem = 10_000 if quick else 50_000
    root = write_png_folder(tmp / "png64", n_mem, 64)
    peak, wall = child_peak_rss_gb(
        [
            "dataset=image_folder",
            f"dataset.path={root}",
            "dataset.image_size=64",
            "train.epochs=1",
            "recipe=dynamic_range",
            "evaluation.latency_samples=5",
            "evaluation.progress=false",
            f"cache_dir={tmp / 'cache_img64'}",
            f"hydra.run.dir={tmp / 'img64'}",
        ]
    )
    timings = json.loads((tmp / "img64" / "results.json").read_text())["timings"]
    out[f"run_{n_mem}x64x64x3"] = {
        "peak_rss_gb": peak,
        "wall_seconds": wall,
        "data_seconds": timings["data_seconds"],
        "array_gb": n_mem * 64 * 64 * 3 / 1024**3,
    }
    return out


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
        )
    from runner.results import versions  # what every results.json records

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
        if r["recipe"] in ("float", "none") or r["status"] != "ok" or r["format"] != "tflite":
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


def _routes(tmp: Path, quick: bool) -> dict:
    if not WEIBO.exists():
        raise SystemExit(f"the routes section needs the Weibo set at {WEIBO}")
    return {"recurrent_routes": recurrent_routes(tmp)}


# --only NAME: (what it measures -> its part of the result, how it prints, its JSON file)
SECTIONS = {
    "routes": (_routes, lambda r: print_routes(r), "routes.json"),
    "data": (
        lambda t, q: {"image_folders": image_folders(t, q)},
        lambda r: print_data(r),
        "data.json",
    ),
    "hard": (
        lambda t, q: {"hard_case": hard_case(t), "qat_seeds": qat_seeds(t, 3 if q else 9)},
        lambda r: print_hard(r),
        "hard.json",
    ),
    "int4": (lambda t, q: {"int4": int4_backend(t, q)}, lambda r: print_int4(r), "int4.json"),
}


def run_section(name: str, out: Path, quick: bool, t_start: float) -> int:
    """One section alone, written beside ``out`` as its own JSON file."""
    measure, show, filename = SECTIONS[name]
    with tempfile.TemporaryDirectory(prefix="tfq-bench-") as tmpdir:
        part = {"machine": machine(), **measure(Path(tmpdir), quick)}
    part["benchmark_seconds"] = time.perf_counter() - t_start
    path = out.with_name(filename)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(part, indent=2) + "\n")
    show(part)
    print(f"\nwritten: {path}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    ap.add_argument("--quick", action="store_true", help="tiny data and fewer repeats (< 5 min)")
    ap.add_argument(
        "--only",
        choices=sorted(SECTIONS),
        help="run one section alone: routes = both conversion routes of the Weibo LSTM; "
        "data = decoding and memory of user image folders; hard = where int8 loses and QAT over "
        "seeds; int4 = the ai-edge-quantizer recipes",
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.only:
        return run_section(args.only, Path(args.out), args.quick, t_start)
    tiny = (
        ["dataset.train_size=600", "train.epochs=6", "train.early_stopping_patience=0"]
        if args.quick
        else []
    )
    base = [
        *tiny,
        "evaluation.latency_samples=200",
        "evaluation.latency_warmup=20",
        "evaluation.progress=false",
    ]
    result: dict = {
        "machine": machine(),
        "quick": args.quick,
        "command": "python -m benchmarks" + (" --quick" if args.quick else ""),
    }
    with tempfile.TemporaryDirectory(prefix="tfq-bench-") as tmpdir:
        tmp = Path(tmpdir)
        print("1/5 sweep cost (cached sweep vs one training per recipe) ...", file=sys.stderr)
        sc = sweep_cost(tmp, base, RECIPES[:3] if args.quick else RECIPES)
        digits_rows = sc.pop("rows")
        result["sweep_cost_ratio"] = sc["sweep_cost_ratio"]
        result["sweep_cost_ratio_fit_only"] = sc["sweep_cost_ratio_fit_only"]
        result["naive_over_cached"] = sc["naive_over_cached"]
        result["sweep_cost"] = sc
        print("2/5 evaluation overhead ...", file=sys.stderr)
        from runner.data.digits import load_digits

        # the test split tiled to 2,048 images (16 full batches): long enough to time
        x = np.resize(load_digits().test.x, (2048, 8, 8, 1))
        models = sorted((tmp / "cached").glob("*/models"))
        ev = {}
        for m in models:
            ev.update(eval_overhead(m, x, 128, 3 if args.quick else 7))
        result["evaluation"] = ev
        result["eval_over_raw_invoke"] = {
            k: v["eval_per_s"] / v["raw_invoke_per_s"] for k, v in ev.items()
        }
        result["eval_over_seed_loop"] = {
            k: v["eval_per_s"] / v["seed_loop_per_s"] for k, v in ev.items()
        }
        print("3/5 model quality on the default data ...", file=sys.stderr)
        q = {"digits": quality(digits_rows)}
        if WEIBO.exists() and not args.quick:
            print("    ... and on the Weibo set", file=sys.stderr)
            folder = tmp / "weibo"
            sh(
                [
                    "-m",
                    "dataset=fake_news",
                    f"dataset.path={WEIBO}",
                    f"recipe={','.join([*RECIPES, 'auto_int8'])}",
                    "evaluation.latency_samples=200",
                    "evaluation.progress=false",
                    f"cache_dir={tmp / 'cache_w'}",
                    f"hydra.sweep.dir={folder}",
                ]
            )
            weibo_rows = load_rows(folder)
            q["weibo"] = quality(weibo_rows)
            result["fallback"] = {"weibo_text_cnn": fallback(weibo_rows)}
        print("4/5 compression on a CIFAR-shaped ResNet-20 (> 1 MB) ...", file=sys.stderr)
        res = resnet_compression(tmp, args.quick)
        q["resnet20_cifar_shaped"] = quality(list(res.values()))
        result.setdefault("fallback", {})["resnet20_cifar_shaped"] = fallback(list(res.values()))
        result["quality"] = q
        result["compression"] = {
            k: v["compression"] for k, v in q["resnet20_cifar_shaped"].items() if "compression" in v
        }
        result["compression_size_mb"] = {k: v["size_mb"] for k, v in res.items()}
        result["accuracy_delta"] = {
            k: v["accuracy_delta"] for k, v in q["digits"].items() if "accuracy_delta" in v
        }
        result["latency_ratio"] = {
            k: v["latency_ratio"] for k, v in q["digits"].items() if "latency_ratio" in v
        }
        print("5/5 peak memory of a CIFAR-100-shaped run ...", file=sys.stderr)
        result["peak_rss_gb"] = peak_memory(tmp, args.quick)
        print("    int4 through ai-edge-quantizer ...", file=sys.stderr)
        result["int4"] = int4_backend(tmp, args.quick)
        print("    where int8 loses: the hard case, QAT over seeds ...", file=sys.stderr)
        result["hard_case"] = hard_case(tmp)
        result["qat_seeds"] = qat_seeds(tmp, 3 if args.quick else 9)
        print("    image folders: decode once, cache hits, memory ...", file=sys.stderr)
        result["image_folders"] = image_folders(tmp, args.quick)
        if WEIBO.exists() and not args.quick:
            print("    recurrent conversion routes on the Weibo LSTM ...", file=sys.stderr)
            result["recurrent_routes"] = recurrent_routes(tmp)
    result["benchmark_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- 6. recurrent routes
def recurrent_routes(tmp: Path) -> dict:
    """Both conversion routes of the Weibo text LSTM (and its bidirectional form), per recipe:
    agreement and output SQNR against the Keras model on the test split, size, latency."""
    out: dict = {}
    for bidi in (False, True):
        folder = tmp / f"routes_{'bilstm' if bidi else 'lstm'}"
        sh(
            [
                "-m",
                "dataset=fake_news",
                f"dataset.path={WEIBO}",
                "model=text_lstm",
                f"model.bidirectional={str(bidi).lower()}",
                "model.recurrent=fused,unrolled,auto",
                "recipe=float16,dynamic_range,full_integer",
                "evaluation.latency_samples=200",
                "evaluation.progress=false",
                f"cache_dir={tmp / 'cache_routes'}",
                f"hydra.sweep.dir={folder}",
            ]
        )
        per = {}
        for job in sorted(folder.glob("*/results.json")):
            res = json.loads(job.read_text())
            route = res["config"]["model"]["recurrent"]
            for r in res["rows"]:
                if r["format"] != "tflite" or r["status"] != "ok":
                    if r["status"] != "ok":
                        per[f"{r['artifact']}@{route}"] = {"error": r["error"]}
                    continue
                per[f"{r['artifact'].removesuffix('.tflite')}@{route}"] = {
                    "route": r["route"],
                    "agreement": r["agreement"],
                    "output_sqnr_db": r["output_sqnr_db"],
                    "output_max_abs_error": r["output_max_abs_error"],
                    "accuracy": r["accuracy"],
                    "size_mb": r["size_mb"],
                    "latency_ms": r["latency_ms"],
                    "convert_seconds": r["convert_seconds"],
                }
        out["bilstm" if bidi else "lstm"] = per
    return out


def print_table(r: dict) -> None:
    print(f"sweep_cost_ratio   {r['sweep_cost_ratio']:.2f}   (goal <= 1.10)")
    print(f"  fit-only          {r['sweep_cost_ratio_fit_only']:.2f}")
    print(f"naive_over_cached  {r['naive_over_cached']:.2f}")
    print(f"peak_rss_gb        {r['peak_rss_gb']:.2f}   (goal < 2)")
    print(
        "\n| recipe | compression (ResNet-20) | accuracy_delta (digits) | latency_ratio (digits) | eval/raw invoke | eval/seed loop |"
    )
    print("|---|---|---|---|---|---|")
    for k in [*RECIPES, "full_integer_per_tensor"]:
        c = r["compression"].get(k)
        a = r["accuracy_delta"].get(k)
        lr = r["latency_ratio"].get(k)
        er = r["eval_over_raw_invoke"].get(k)
        es = r["eval_over_seed_loop"].get(k)
        f = lambda v, spec: format(v, spec) if v is not None else "—"  # noqa: E731
        print(
            f"| {k} | {f(c, '.2f')} | {f(a, '+.4f')} | {f(lr, '.2f')} | {f(er, '.3f')} | {f(es, '.1f')} |"
        )
    print_routes(r)
    print_data(r)
    print_hard(r)
    print_int4(r)


def print_int4(r: dict) -> None:
    for model, per in r.get("int4", {}).items():
        if model == "digits_int4_algorithms":
            print(
                "\nint4 weight-only on digits by AEQ algorithm | compression | accuracy_delta | agreement | SQNR dB | float layers |"
            )
            for alg, v in per.items():
                if "failed" in v or "compression" not in v:
                    print(f"| {alg} | failed: {str(v.get('failed', v))[:80]} |")
                    continue
                print(
                    f"| {alg} | {v['compression']:.2f} | {v['accuracy_delta']:+.4f} | "
                    f"{v['agreement']:.4f} | {v['output_sqnr_db']:.1f} | {v['float_layers']} |"
                )
            continue
        print(
            f"\n{model} (float32 {per['float32_bytes']:,} B) | compression | accuracy_delta | agreement | latency ratio |"
        )
        for k in AEQ_RECIPES:
            v = per.get(k, {})
            if "compression" not in v:
                print(f"| {k} | failed: {str(v.get('failed', 'missing'))[:80]} |")
                continue
            print(
                f"| {k} | {v['compression']:.2f} | {v['accuracy_delta']:+.4f} | "
                f"{v['agreement']:.4f} | {v['latency_ratio']:.2f} |"
            )


def print_hard(r: dict) -> None:
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


def print_data(r: dict) -> None:
    print("\nimage folder | first run s | decode img/s | cache hit s |")
    for k, v in r.get("image_folders", {}).items():
        if "decode_images_per_s" in v:
            print(
                f"| {k} | {v['first_run_seconds']:.2f} | {v['decode_images_per_s']:.0f} | "
                f"{v['cache_hit_seconds']:.3f} |"
            )
        else:
            print(
                f"| {k} | peak RSS {v['peak_rss_gb']:.2f} GiB (goal < 2) for a "
                f"{v['array_gb']:.2f} GiB array; data stage {v['data_seconds']:.1f} s, "
                f"run {v['wall_seconds']:.0f} s |"
            )


def print_routes(r: dict) -> None:
    for model, per in r.get("recurrent_routes", {}).items():
        print(f"\n{model} routes | route | agreement | SQNR dB | size MB | latency ms |")
        for k, v in per.items():
            if "error" in v:
                print(f"| {k} | failed: {v['error'][:60]} |")
                continue
            print(
                f"| {k} | {v['route']} | {v['agreement']:.4f} | {v['output_sqnr_db']:.1f} | "
                f"{v['size_mb']:.3f} | {v['latency_ms']:.3f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
