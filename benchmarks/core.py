"""Section core: what a sweep costs, what the evaluator adds, what each recipe is worth
(compression, accuracy, agreement, latency) and the peak memory of a CIFAR-100-sized run."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RECIPES, WEIBO, fallback, load_rows, make_cifar, quality, sh


def measure(tmp: Path, quick: bool) -> dict:
    """Sweep cost, evaluator overhead, quality per recipe (digits, Weibo, a ResNet-20), memory."""
    tiny = (
        ["dataset.train_size=600", "train.epochs=6", "train.early_stopping_patience=0"]
        if quick
        else []
    )
    base = [
        *tiny,
        "evaluation.latency_samples=200",
        "evaluation.latency_warmup=20",
        "evaluation.progress=false",
    ]
    result: dict = {}
    step("sweep cost (cached sweep vs one training per recipe)")
    sc = sweep_cost(tmp, base, RECIPES[:3] if quick else RECIPES)
    digits_rows = sc.pop("rows")
    result["sweep_cost_ratio"] = sc["sweep_cost_ratio"]
    result["sweep_cost_ratio_fit_only"] = sc["sweep_cost_ratio_fit_only"]
    result["naive_over_cached"] = sc["naive_over_cached"]
    result["sweep_cost"] = sc
    step("evaluation overhead")
    result.update(evaluation_overhead(tmp, quick))
    step(
        "model quality on the default data"
        + (", then the Weibo set" if WEIBO.exists() and not quick else "")
    )
    q = {"digits": quality(digits_rows)}
    if WEIBO.exists() and not quick:
        weibo_rows = weibo_sweep(tmp)
        q["weibo"] = quality(weibo_rows)
        result["fallback"] = {"weibo_text_cnn": fallback(weibo_rows)}
    step("compression on a CIFAR-shaped ResNet-20 (> 1 MB)")
    res = resnet_compression(tmp, quick)
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
    step("peak memory of a CIFAR-100-shaped run")
    result["peak_rss_gb"] = peak_memory(tmp, quick)
    return result


def evaluation_overhead(tmp: Path, quick: bool) -> dict:
    """The evaluator's images/s over a raw interpreter loop and a seed-style loop, per file of
    the cached sweep."""
    from runner.data.digits import load_digits

    # the test split tiled to 2,048 images (16 full batches): long enough to time
    x = np.resize(load_digits().test.x, (2048, 8, 8, 1))
    ev = {}
    for m in sorted((tmp / "cached").glob("*/models")):
        ev.update(eval_overhead(m, x, 128, 3 if quick else 7))
    return {
        "evaluation": ev,
        "eval_over_raw_invoke": {k: v["eval_per_s"] / v["raw_invoke_per_s"] for k, v in ev.items()},
        "eval_over_seed_loop": {k: v["eval_per_s"] / v["seed_loop_per_s"] for k, v in ev.items()},
    }


def weibo_sweep(tmp: Path) -> list[dict]:
    """Every recipe and auto_int8 on the Weibo rumour set: the sweep's rows."""
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
    return load_rows(folder)


def step(what: str) -> None:
    print(f"    {what} ...", file=sys.stderr)


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
    # the job that trained: its baseline stage and the framework import before it (a job that
    # only loads the cached baseline pays the import too when it is a process's first)
    trainer = max(jobs, key=lambda j: j["timings"]["baseline_seconds"])
    train = trainer["timings"]["baseline_seconds"] + trainer["timings"].get("framework_seconds", 0)
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
    from runner.evaluation.interpreter import TFLiteModel

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


def render(r: dict) -> None:
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
