"""Section scale: a user's full-size model at the cost of its own work.

1. A Keras 3 ``keras.applications.MobileNetV2`` at 224x224x3 (``weights=None``: no hub here),
   saved as ``.keras``, swept over six recipes on a 1,000-image folder (scikit-learn's digits
   upscaled to 224x224 RGB PNGs), the basic launcher, one process: each job's wall time and the
   share of it not spent in the recipe's own conversion (``overhead``), the sweep's peak RSS
   against job 0 run alone, and a second sweep in a new process (conversions of the reference
   it had to make: 0 when the model's cache entry serves it).
2. CIFAR-100-shaped evaluation: 10,000 32x32x3 images through a ResNet-20 int8 file, the runner's
   scoring path (raw pixels scaled and quantized per batch) against raw LiteRT ``invoke`` on
   inputs already prepared, both with every core.

Run with ``--only scale`` (about 8 minutes here; 40 before issue #50); ``--quick`` uses 300 images and 2,000
evaluation samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import child_peak_rss_gb

RECIPES = ["none", "dynamic_range", "full_integer", "float16", "int16x8", "int8_weight_only"]
# the rows' own-work seconds: what a recipe spends making its file
OWN = ("convert_seconds", "train_seconds")


def build_mobilenet(path: Path) -> Path:
    """MobileNetV2 224x224x3, 10 classes, saved by Keras 3 (a subprocess without the legacy flag)."""
    code = (
        "import sys, keras; m = keras.applications.MobileNetV2(input_shape=(224, 224, 3), "
        "weights=None, classes=10); m.save(sys.argv[1])"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, timeout=600)
    return path


def write_digit_folder(root: Path, n: int, size: int = 224) -> Path:
    """``n`` of scikit-learn's digits, upscaled to ``size`` x ``size`` RGB PNGs, a folder per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(n):
        c = int(d.target[i])
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        px = (d.images[i] * (255.0 / 16.0)).astype(np.uint8)
        img = Image.fromarray(px).resize((size, size), Image.BILINEAR).convert("RGB")
        img.save(root / str(c) / f"{i:05d}.png")
    return root


def jobs(sweep: Path) -> list[dict]:
    """Each job's wall time (its ``.hydra`` folder made -> its results.json last written), its
    recipe's own seconds and what converting the reference cost it (0: read from the cache)."""
    out = []
    for d in sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        res = json.loads((d / "results.json").read_text())
        wall = (d / "results.json").stat().st_mtime - (d / ".hydra" / "hydra.yaml").stat().st_mtime
        rows = res["rows"]
        mine = [r for r in rows if r.get("role") == "recipe"] or [
            r for r in rows if r.get("role") == "reference"
        ]
        own = sum(float(r.get(k) or 0) for r in mine for k in OWN)
        ref = next((r for r in rows if r.get("role") == "reference"), {})
        out.append(
            {
                "job": int(d.name),
                "recipe": res["config"]["recipe"]["name"],
                "wall_seconds": wall,
                "own_seconds": own,
                "overhead_share": (wall - own) / wall if wall > 0 else None,
                "reference_convert_seconds": ref.get("convert_seconds"),
                "timings": res.get("timings", {}),
            }
        )
    return out


def sweep_case(tmp: Path, quick: bool) -> dict:
    model = build_mobilenet(tmp / "mnv2.keras")
    images = write_digit_folder(tmp / "digits224", 300 if quick else 1000)
    base = [
        "model=pretrained",
        f"model.path={model}",
        "dataset=image_folder",
        f"dataset.path={images}",
        "evaluation.progress=false",
    ]
    out: dict = {"model_mb": model.stat().st_size / 2**20, "images": 300 if quick else 1000}
    # job 0 alone, then the sweep, then the sweep again in a new process: each a fresh cache but
    # the last (the image cache is made first, so no run pays the decoding)
    warm = tmp / "scale-cache-images"
    child_peak_rss_gb(
        ["recipe=none", *base, f"cache_dir={warm}", f"hydra.run.dir={tmp / 'scale-warm'}"]
    )
    for name, cache, recipes in (
        ("job0", "scale-cache-0", RECIPES[:1]),
        ("sweep", "scale-cache-1", RECIPES),
        ("again", "scale-cache-1", RECIPES),
    ):
        cache_dir = tmp / cache
        if not cache_dir.exists():  # the decoded images only, not the model's entry
            cache_dir.mkdir()
            os.symlink(warm / "images", cache_dir / "images")
        folder = tmp / f"scale-{name}"
        peak, wall, err = child_peak_rss_gb(
            ["-m", f"recipe={','.join(recipes)}", *base, f"cache_dir={cache_dir}"]
            + [f"hydra.sweep.dir={folder}"]
        )
        js = jobs(folder)
        out[name] = {"peak_rss_gb": peak, "wall_seconds": wall, "jobs": js}
        out[name]["reference_conversions"] = sum(
            1 for j in js if (j["reference_convert_seconds"] or 0) > 1.0
        )
    out["peak_over_job0"] = out["sweep"]["peak_rss_gb"] / out["job0"]["peak_rss_gb"]
    shares = [j["overhead_share"] for j in out["sweep"]["jobs"] if j["overhead_share"] is not None]
    out["max_overhead_share"] = max(shares) if shares else None
    return out


def evaluation_throughput(tmp: Path, quick: bool) -> dict:
    """ResNet-20 int8 on CIFAR-100-shaped inputs: the runner's scoring against raw invoke."""
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter

    from runner.data import Scaling
    from runner.evaluation.metrics import EvalConfig, evaluate_tflite
    from runner.models.builders import resnet
    from runner.recipes.conversion import ConverterOptions
    from runner.recipes.routes import convert_checked

    n = 2_000 if quick else 10_000
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 100, n)
    scaling = Scaling("unit")
    keras.utils.set_random_seed(0)
    model = resnet(input_shape=(32, 32, 3), num_classes=100, depth=20, width=16, bn_momentum=0.9)
    calib = scaling(x[:100])
    opts = ConverterOptions(
        optimizations=["DEFAULT"],
        representative_dataset=True,
        supported_ops=["TFLITE_BUILTINS_INT8"],
        inference_input_type="int8",
        inference_output_type="int8",
    )
    path = tmp / "resnet20_int8.tflite"
    path.write_bytes(convert_checked(model, opts, calib).flatbuffer)
    cores = os.cpu_count() or 1
    cfg = EvalConfig(latency_samples=0, progress=False)
    t0 = time.perf_counter()
    m = evaluate_tflite(path, x, y, scaling, None, 100, cfg)
    runner_s = time.perf_counter() - t0
    # raw: the same file, every core, the inputs prepared beforehand, batch 128, invoke alone
    interp = Interpreter(model_path=str(path), num_threads=cores)
    inp = interp.get_input_details()[0]
    scale, zp = inp["quantization"]
    q = np.clip(np.rint(scaling(x) / scale + zp), -128, 127).astype(np.int8)
    bs = 128
    interp.resize_tensor_input(inp["index"], [bs, 32, 32, 3], strict=True)
    interp.allocate_tensors()
    batches = [q[s : s + bs] for s in range(0, n - n % bs, bs)]
    t0 = time.perf_counter()
    for b in batches:
        interp.set_tensor(inp["index"], b)
        interp.invoke()
    raw_s = (time.perf_counter() - t0) * n / (len(batches) * bs)
    return {
        "images": n,
        "cores": cores,
        "runner_seconds": runner_s,
        "raw_invoke_seconds": raw_s,
        "throughput_ratio": raw_s / runner_s,
        "runner_images_per_s": n / runner_s,
        "accuracy": m.accuracy,
    }


def measure(tmp: Path, quick: bool) -> dict:
    return {"scale": {"evaluation": evaluation_throughput(tmp, quick), **sweep_case(tmp, quick)}}


def render(result: dict) -> None:
    r = result.get("scale")
    if not r:
        return
    print(
        "\n## Scale: MobileNetV2 224x224 (Keras 3 file), six recipes, one process", file=sys.stderr
    )
    print(f"model {r['model_mb']:.1f} MB, {r['images']} images")
    for name in ("job0", "sweep", "again"):
        s = r[name]
        print(
            f"{name}: {s['wall_seconds']:.0f} s, peak RSS {s['peak_rss_gb']:.2f} GiB, "
            f"reference conversions {s['reference_conversions']}"
        )
    print(f"peak RSS sweep / job 0: {r['peak_over_job0']:.2f}   (goal <= 1.3, and < 4 GiB)")
    print("| sweep | job | recipe | wall s | own s | overhead | reference convert s |")
    print("|---|---|---|---|---|---|---|")
    for name in ("sweep", "again"):
        for j in r[name]["jobs"]:
            print(
                f"| {name} | {j['job']} | {j['recipe']} | {j['wall_seconds']:.1f} | "
                f"{j['own_seconds']:.1f} | {j['overhead_share']:.0%} | "
                f"{j['reference_convert_seconds'] or 0:.1f} |"
            )
    e = r["evaluation"]
    print(
        f"\nevaluation: {e['images']} CIFAR-shaped images through ResNet-20 int8 on "
        f"{e['cores']} cores: {e['runner_images_per_s']:.0f} images/s, "
        f"{e['throughput_ratio']:.2f}x raw invoke throughput (goal >= 0.8)"
    )
