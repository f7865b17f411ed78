"""The architectures people ship (``keras.applications`` families), built and fitted by Keras 3
or by tf_keras in a process of their own, as a user's training script would save them.

    python tests/applications_fixtures.py OUT_DIR DATA.npz --keras 3 --size tiny [--families a,b]

DATA.npz holds ``x_train`` (uint8 images, N x 32 x 32 x 3) and ``y_train`` (10 classes). Each
family is built with ``weights=None`` and 10 classes, fitted a few epochs (on raw pixels where
the family scales its own, else on ``x / 255``: :func:`input_scaling`) and saved as
``OUT_DIR/<family>.keras`` (Keras 3) or ``OUT_DIR/<family>.h5`` (tf_keras).

``--size full`` builds the public constructors (``keras.applications.ResNet50V2`` ...), as the
benchmark does; ``--size tiny`` builds the same families through the library's own generic
builders with the fewest blocks and channels (the same layer classes, wiring and blocks: what
the runner must handle is the layer kinds, not their count), as the tests do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHAPE = (32, 32, 3)
CLASSES = 10
FAMILIES = [
    "mobilenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "resnet50",
    "resnet50_v2",
    "densenet121",
    "nasnet_mobile",
    "efficientnet_b0",
    "efficientnet_v2_b0",
    "convnext_tiny",
    "vit",
]
# families that scale their own pixels (a Rescaling/Normalization first): they take 0..255, the
# rest take pixels / 255 (the runner's model.input_scaling none / unit)
# (Keras, family) pairs the default suite (tests/models/test_applications.py) and `--quick` benchmark run
# the recipes on: attention, LayerNorm and Keras 3 operations (vit); BatchNorm after a
# concatenation and average pooling (densenet). The other constructs (nested models, LayerScale,
# hard-swish, separable convolutions) are checked by the exact-load test, and through every recipe
# by RUNNER_ALL_FAMILIES=1 and the full benchmark.
CI_SUBSET = [("3", "vit"), ("2", "densenet121")]
RAW_PIXELS = {"mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_b0", "convnext_tiny"}


def input_scaling(family: str) -> str:
    return "none" if family in RAW_PIXELS else "unit"


def upscaled(x):
    """8x8 grey digits as 32x32 RGB (the families' smallest input)."""
    import numpy as np

    return np.repeat(np.repeat(np.repeat(x, 4, 1), 4, 2), 3, 3)


def write_digits32(path, n_train: int, n_val: int, n_test: int | None = None):
    """scikit-learn's digits at 32x32 RGB in a ``dataset=arrays`` file, with a validation split
    (``x_val``: what auto_int8 holds out) cut from the training split."""
    import numpy as np

    from runner.data.digits import load_digits

    d = load_digits()
    end = n_train + n_val
    np.savez(
        path,
        x_train=upscaled(d.train.x[:n_train]),
        y_train=d.train.y[:n_train],
        x_val=upscaled(d.train.x[n_train:end]),
        y_val=d.train.y[n_train:end],
        x_test=upscaled(d.test.x[:n_test]),
        y_test=d.test.y[:n_test],
    )
    return path


def make(folder, data, keras: str, families, epochs: int = 3, samples: int = 0):
    """Run this script in a subprocess (the Keras it names, never the caller's tf_keras);
    returns ``folder``. Raises ``RuntimeError`` with the script's stderr when it fails."""
    import subprocess
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    args = [sys.executable, __file__, str(folder), str(data), "--keras", keras]
    args += ["--families", ",".join(families), "--epochs", str(epochs), "--samples", str(samples)]
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-3000:])
    return folder


def _kw(k3: bool, name: str) -> dict:
    """The generic builders name their model by ``name`` in Keras 3, ``model_name`` in tf_keras."""
    return {"name" if k3 else "model_name": name}


def build(family: str, size: str, K, k3: bool):  # noqa: N803 (K: the Keras module)
    common = {"weights": None, "classes": CLASSES}
    apps = K.applications
    if size == "full":
        if family == "vit":
            return vit(K, dim=64, depth=2, heads=4)
        public = {
            "mobilenet": apps.MobileNet,
            "mobilenet_v2": apps.MobileNetV2,
            "mobilenet_v3_small": apps.MobileNetV3Small,
            "resnet50": apps.ResNet50,
            "resnet50_v2": apps.ResNet50V2,
            "densenet121": apps.DenseNet121,
            "nasnet_mobile": apps.NASNetMobile,
            "efficientnet_b0": apps.EfficientNetB0,
            "efficientnet_v2_b0": apps.EfficientNetV2B0,
            "convnext_tiny": apps.ConvNeXtTiny,
        }[family]
        return public(input_shape=SHAPE, **common)
    src = _sources(k3)
    if family == "mobilenet":
        return apps.MobileNet(input_shape=SHAPE, alpha=0.25, **common)
    if family == "mobilenet_v2":
        return apps.MobileNetV2(input_shape=SHAPE, alpha=0.35, **common)
    if family == "mobilenet_v3_small":
        return apps.MobileNetV3Small(input_shape=SHAPE, alpha=0.75, **common)
    if family in ("resnet50", "resnet50_v2"):
        v2 = family.endswith("v2")
        res = src["resnet"]
        stack = getattr(
            res, "stack_residual_blocks_v2" if v2 else "stack_residual_blocks_v1", None
        ) or getattr(res, "stack2" if v2 else "stack1")

        blocks = 2 if v2 else 1  # a v2 stack names its first and last block: two at least

        def stack_fn(x):
            x = stack(x, 8, blocks, stride1=1, name="conv2")
            return stack(x, 16, blocks, name="conv3")

        return res.ResNet(stack_fn, v2, True, input_shape=SHAPE, **_kw(k3, family), **common)
    if family == "densenet121":
        return src["densenet"].DenseNet([1, 1, 1, 1], input_shape=SHAPE, **common)
    if family == "nasnet_mobile":
        return src["nasnet"].NASNet(
            input_shape=SHAPE,
            penultimate_filters=96,
            num_blocks=1,
            stem_block_filters=8,
            default_size=32,
            **common,
        )
    if family == "efficientnet_b0":
        return src["efficientnet"].EfficientNet(
            0.25, 0.1, 32, input_shape=SHAPE, **_kw(k3, family), **common
        )
    if family == "efficientnet_v2_b0":
        v2 = src["efficientnet_v2"]
        return v2.EfficientNetV2(
            0.25,
            0.1,
            32,
            blocks_args=v2.DEFAULT_BLOCKS_ARGS["efficientnetv2-b0"],
            input_shape=SHAPE,
            **_kw(k3, family),
            **common,
        )
    if family == "convnext_tiny":
        return src["convnext"].ConvNeXt(
            depths=[1, 1, 1, 1],
            projection_dims=[8, 16, 32, 64],
            default_size=32,
            input_shape=SHAPE,
            **_kw(k3, family),
            **common,
        )
    if family == "vit":
        return vit(K, dim=16, depth=1, heads=2)
    raise SystemExit(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def _sources(k3: bool) -> dict:
    import importlib

    base = "keras.src.applications" if k3 else "tf_keras.src.applications"
    names = ("resnet", "densenet", "nasnet", "efficientnet", "efficientnet_v2", "convnext")
    return {n: importlib.import_module(f"{base}.{n}") for n in names}


def vit(K, dim: int, depth: int, heads: int):  # noqa: N803
    """A small vision transformer: 4x4 patches, pre-norm attention and GELU MLP blocks."""
    L = K.layers  # noqa: N806
    inp = K.Input(SHAPE)
    h = L.Conv2D(dim, 4, strides=4, name="patches")(inp)
    h = L.Reshape((-1, dim), name="tokens")(h)
    for i in range(depth):
        n = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln1")(h)
        a = L.MultiHeadAttention(heads, dim // heads, name=f"block{i}_attention")(n, n)
        h = L.Add(name=f"block{i}_add1")([h, a])
        n = L.LayerNormalization(epsilon=1e-6, name=f"block{i}_ln2")(h)
        m = L.Dense(2 * dim, activation="gelu", name=f"block{i}_mlp1")(n)
        h = L.Add(name=f"block{i}_add2")([h, L.Dense(dim, name=f"block{i}_mlp2")(m)])
    h = L.LayerNormalization(epsilon=1e-6, name="head_ln")(h)
    h = L.Flatten(name="flatten")(h)  # keeps each patch's position (no position embedding here)
    out = L.Dense(CLASSES, activation="softmax", name="predictions")(h)
    return K.Model(inp, out, name="vit")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("data")
    ap.add_argument("--keras", choices=["2", "3"], default="3")
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--epochs", type=int, default=3, help="0: built, not fitted")
    ap.add_argument("--samples", type=int, default=0, help="fit on the first N (0: all)")
    a = ap.parse_args()
    k3 = a.keras == "3"
    if k3:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
        import keras as K  # noqa: N812
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tf_keras as K  # noqa: N812
    import numpy as np

    d = np.load(a.data)
    n = a.samples or len(d["y_train"])
    x_train, y = d["x_train"][:n], d["y_train"][:n]
    for family in a.families.split(","):
        K.utils.set_random_seed(0)
        t = time.perf_counter()
        model = build(family, a.size, K, k3)
        for layer in model.layers:  # a few hundred steps: let BatchNorm's statistics keep up
            if type(layer).__name__ == "BatchNormalization":
                layer.momentum = 0.9
        model.compile(K.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
        scale = 1.0 if family in RAW_PIXELS else 1 / 255.0
        if a.epochs:
            model.fit(x_train * np.float32(scale), y, epochs=a.epochs, batch_size=32, verbose=0)
        path = os.path.join(a.out, f"{family}.keras" if k3 else f"{family}.h5")
        model.save(path)
        acc = ""
        if "x_test" in d:
            pred = model.predict(d["x_test"] * np.float32(scale), verbose=0).argmax(-1)
            acc = f" accuracy {float((pred == d['y_test']).mean()):.3f}"
        print(f"{family} {model.count_params()} {time.perf_counter() - t:.1f}s{acc}", flush=True)
    print("keras", K.__version__ if k3 else "tf_keras " + K.__version__)


if __name__ == "__main__":
    sys.exit(main())
