"""Section compression: pruning, clustering, the collaborative recipes and int4 QAT against
full int8, QAT and post-training int4, at the size users download (gzip) and the raw size.

Cases: the default digits run (``small_cnn``), and keras.applications families (tf_keras, their
generic builders at the families' small size, fitted 3 epochs on digits upscaled to 32x32 RGB:
tests/applications_fixtures.py) run as a user's pretrained file. Every case sweeps
``+experiment=compression``; every figure comes from the written ``.tflite`` in LiteRT.
``--quick``: the digits case alone on a 600-image slice.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import ROOT, load_rows, sh
from runner.config import sweep_values

RECIPES = sweep_values("compression")
FAMILIES = ["mobilenet_v2", "resnet50", "efficientnet_b0"]
FIELDS = [
    "status",
    "size_bytes",
    "size_gzip_bytes",
    "compression_gzip",
    "accuracy",
    "accuracy_delta",
    "agreement",
    "sparsity",
    "max_unique_per_channel",
    "train_seconds",
]


def _fixtures():
    sys.path.insert(0, str(ROOT / "tests"))
    import applications_fixtures  # noqa: PLC0415 - the tests' generator, not a package

    return applications_fixtures


def _case(run_dir: Path) -> dict:
    rows = {r["artifact"]: r for r in load_rows(run_dir)}
    out = {}
    for recipe in ["none", *RECIPES]:
        r = rows.get(f"{recipe}.tflite", {"status": "missing"})
        out[recipe] = {k: r.get(k) for k in FIELDS}
        out[recipe]["note"] = (r.get("note") or r.get("error") or "")[:300]
    return out


def measure(tmp: Path, quick: bool) -> dict:
    tiny = ["dataset.train_size=600", "train.epochs=6"] if quick else []
    base = ["+experiment=compression", "evaluation.latency_samples=20", "evaluation.progress=false"]
    cases: dict[str, dict] = {}
    run_dir = tmp / "compression-digits"
    sh(["-m", *base, *tiny, f"cache_dir={tmp / 'cc'}", f"hydra.sweep.dir={run_dir}"], timeout=3600)
    cases["digits (small_cnn)"] = _case(run_dir)
    if quick:
        return {"compression": cases}
    af = _fixtures()
    data = af.write_digits32(tmp / "digits32-c.npz", n_train=1100, n_val=297)
    folder = af.make(tmp / "compression-k2", data, "2", FAMILIES)
    for family in FAMILIES:
        run_dir = tmp / f"compression-{family}"
        sh(
            [
                "-m",
                *base,
                "model=pretrained",
                f"model.path={folder / f'{family}.h5'}",
                f"model.input_scaling={af.input_scaling(family)}",
                "dataset=arrays",
                f"dataset.path={data}",
                f"cache_dir={tmp / 'cc'}",
                f"hydra.sweep.dir={run_dir}",
            ],
            timeout=7200,
        )
        cases[f"{family} (tf_keras)"] = _case(run_dir)
    return {"compression": cases}


def render(r: dict) -> None:
    print(
        "\ncompression | recipe | raw bytes | gzip bytes | gzip compression | accuracy delta "
        "| agreement | sparsity | max unique/channel |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case, rows in r.get("compression", {}).items():
        for recipe, v in rows.items():
            if v["status"] != "ok":
                print(f"| {case} | {recipe} | {v['status']}: {v['note'][:90]} |||||||")
                continue
            print(
                f"| {case} | {recipe} | {v['size_bytes']:,} | {v['size_gzip_bytes']:,} | "
                f"{v['compression_gzip']:.2f}x | {_f(v['accuracy_delta'], '+.4f')} | "
                f"{_f(v['agreement'], '.4f')} | {_f(v['sparsity'], '.3f')} | "
                f"{v['max_unique_per_channel'] or '-'} |"
            )


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)
