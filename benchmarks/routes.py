"""Section routes: both conversion routes (fused kernel, unrolled) of the Weibo LSTM and BiLSTM."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import WEIBO, sh


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


def measure(tmp: Path, quick: bool) -> dict:
    if not WEIBO.exists():
        return {"skipped": f"the routes section needs the Weibo set at {WEIBO}"}
    return {"recurrent_routes": recurrent_routes(tmp)}


def render(r: dict) -> None:
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
