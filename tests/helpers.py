"""Helpers the tests import: the real conf/ composed with Hydra's compose API, the tiny run
settings, the command line as a subprocess, data fixtures written on disk (CIFAR-100 pickles,
labelled text). Fixtures live in conftest.py."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

import runner  # noqa: F401 - sets TF_USE_LEGACY_KERAS before TensorFlow is imported
from runner.config import compose

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
WEIBO = ROOT.parent / "shared" / "data" / "weibo_rumor" / "weibo_rumor.csv"

# A tiny, fast slice of the default run: a few hundred digits, a few epochs, a small CNN.
TINY = [
    "dataset.train_size=600",
    "train.epochs=6",
    "train.early_stopping_patience=0",
    "model.filters=[8,16]",
    "model.dense_units=32",
    "evaluation.latency_samples=3",
    "evaluation.latency_warmup=1",
    "evaluation.progress=false",
]

# A small MobileNet (depthwise kernels, BatchNorm) trained briefly: the recipes' real-layer case.
TINY_MOBILENET = [
    "model=mobilenet",
    "model.blocks=[[16,1],[32,2]]",
    "model.width=8",
    "dataset.train_size=600",
    "train.epochs=10",
    "train.early_stopping_patience=0",
    "evaluation.latency_samples=3",
]


# The session's cache folder (set by conftest): a composed config without its own cache_dir
# never writes into the checkout's outputs/cache.
DEFAULT_CACHE: list[Path] = []


def compose_config(*overrides: str) -> DictConfig:
    """The real conf/ composed with Hydra's compose API (runner.config.compose)."""
    if DEFAULT_CACHE and not any(o.startswith("cache_dir=") for o in overrides):
        overrides = (f"cache_dir={DEFAULT_CACHE[0]}", *overrides)
    return compose(overrides)


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: int = 600,
    extra_pythonpath: str = "",
    plugins: str = "",
) -> subprocess.CompletedProcess:
    """``python -m runner ARGS``; ``plugins``: the user's plugin packages a config may name."""
    path = os.pathsep.join(p for p in (extra_pythonpath, str(ROOT)) if p)
    env = {**os.environ, "PYTHONPATH": path, "HYDRA_FULL_ERROR": "0", "TFQ_RUNNER_PLUGINS": plugins}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- CIFAR-100 fixture
def cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [
        int(v) for v in rng.integers(0, 100, size=n)
    ]


def write_cifar_folder(folder: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """A tiny ``cifar-100-python`` folder in the real layout (Python-2-style pickles, bytes keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        data, fine = cifar_arrays(n, seed)
        obj = {
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
            b"batch_label": f"{name} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": data,
        }
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar_tarball(path: Path, extra_members: dict[str, bytes] | None = None, **kw) -> Path:
    src = write_cifar_folder(path.parent / "src" / "cifar-100-python", **kw)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname="cifar-100-python")
        for name, payload in (extra_members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


# --------------------------------------------------------------------------- text fixture
RUMOR_WORDS = ["震惊", "谣言", "紧急", "速转", "内幕", "曝光"]
REAL_WORDS = ["官方", "通报", "发布会", "记者", "报道", "统计"]
FILLER = [
    "今天",
    "我们",
    "城市",
    "天气",
    "朋友",
    "时间",
    "工作",
    "学校",
    "医院",
    "北京",
    "上海",
    "网友",
    "消息",
    "事件",
]


def text_rows(n: int, seed: int, segmented: bool = True) -> list[dict]:
    """Sentences whose label is set by which keyword pool they draw from (learnable in 2 epochs)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(i % 2)
        pool = RUMOR_WORDS if label else REAL_WORDS
        words = list(rng.choice(FILLER, size=int(rng.integers(6, 14)))) + list(
            rng.choice(pool, size=3)
        )
        rng.shuffle(words)
        rows.append(
            {
                "text": (" " if segmented else "").join(words),
                "label": label,
                "split": "test" if i % 5 == 0 else "train",
            }
        )
    return rows


def write_text_csv(path: Path, n: int = 200, seed: int = 0, segmented: bool = True) -> Path:
    import pandas as pd

    pd.DataFrame(text_rows(n, seed, segmented)).to_csv(path, index=False)
    return path


def with_reference(ctx):
    """``ctx`` (a RecipeContext) with its float32 reference .tflite made by the none recipe, as
    a run makes it first: what the ai-edge-quantizer recipes and auto_int8's a16w8 start from."""
    from runner.pipeline import build_recipe

    (ref,) = build_recipe(compose_config("recipe=none").recipe).produce(ctx)
    ctx.reference_path = ref.path
    return ctx
