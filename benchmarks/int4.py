"""Section int4: the ai-edge-quantizer recipes on digits, the Weibo text CNN and a ResNet-20."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import WEIBO, load_rows, make_cifar, quality, sh

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


def measure(tmp: Path, quick: bool) -> dict:
    return {"int4": int4_backend(tmp, quick)}


def render(r: dict) -> None:
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
