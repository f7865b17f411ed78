"""Section data: user image folders decoded once, cache hits, and memory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import child_peak_rss_gb


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
    peak, wall, _ = child_peak_rss_gb(
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


def measure(tmp: Path, quick: bool) -> dict:
    return {"image_folders": image_folders(tmp, quick)}


def render(r: dict) -> None:
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
