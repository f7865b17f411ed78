"""Builds Keras 3 model files for the tests: run as a script, in a process without tf_keras.

    python tests/keras3_fixtures.py OUT_DIR DATA.npz

``import runner`` selects tf_keras (Keras 2) for its whole process, so Keras 3 files are made
here, as a user's `pip install tensorflow` would make them. Each model is trained for a few
epochs on the arrays in DATA.npz (digits images 0..255, and token-id sequences with labels) and
saved as .keras, .h5 and a model.export() SavedModel.
"""

from __future__ import annotations

import os
import sys

os.environ.pop("TF_USE_LEGACY_KERAS", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def sequential():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="k3_sequential",
    )


def functional(x):
    inp = keras.Input((8, 8, 1))
    norm = keras.layers.Normalization()
    norm.adapt(x)
    h = norm(inp)
    a = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
    b = keras.layers.Conv2D(32, 3, padding="same")(a)
    h = keras.layers.ReLU()(keras.layers.Add()([a, b]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h), name="k3_residual")


def text(vocab: int, length: int):
    inp = keras.Input((length,), dtype="int32")
    h = keras.layers.Embedding(vocab, 32)(inp)
    h = keras.layers.Conv1D(64, 3, activation="relu")(h)
    h = keras.layers.GlobalMaxPooling1D()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    out = keras.layers.Dense(1, activation="sigmoid")(h)
    return keras.Model(inp, out, name="k3_text")


def main(out: str, data: str) -> None:
    keras.utils.set_random_seed(0)
    d = np.load(data)
    x, y = d["x"].astype("float32"), d["y"]
    ids, labels = d["ids"], d["labels"]
    models = {
        "sequential": (sequential(), x, y, "sparse_categorical_crossentropy"),
        "residual": (functional(x), x, y, "sparse_categorical_crossentropy"),
        "text": (text(int(d["vocab"]), ids.shape[1]), ids, labels, "binary_crossentropy"),
    }
    for name, (model, xs, ys, loss) in models.items():
        model.compile(keras.optimizers.Adam(3e-3), loss)
        model.fit(xs, ys, epochs=8, batch_size=32, verbose=0)
        model.save(os.path.join(out, f"{name}.keras"))
        model.save(os.path.join(out, f"{name}.h5"))
        model.export(os.path.join(out, f"{name}_savedmodel"), verbose=False)
    print("keras", keras.__version__)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
