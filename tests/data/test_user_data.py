"""A user's own data: image folders (decoded once, memory-mapped) and NumPy .npz arrays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import compose_config, run_cli

from runner.data import Rows, Split, image_decode
from runner.data import image_entry as images_mod
from runner.data.arrays import load_arrays
from runner.data.images import load_image_folder
from runner.errors import RunnerError

PIL = pytest.importorskip("PIL.Image")

FORMATS = ("png", "jpg", "bmp", "gif", "webp")


def solid(path: Path, color: tuple[int, int, int], size=(6, 5)) -> Path:
    """A one-colour image; GIFs get a second, black frame (only the first is read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = PIL.new("RGB", size, color)
    if path.suffix == ".gif":
        img.save(path, save_all=True, append_images=[PIL.new("RGB", size, (0, 0, 0))])
    else:
        img.save(path, quality=100) if path.suffix == ".jpg" else img.save(path)
    return path


COLORS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def folder(root: Path, per_class: int = 5, layout: str = "split") -> Path:
    """Classes 'blue' and 'red', files in every format, in a train/test or one-tree layout."""
    for cls, color in COLORS.items():
        for i in range(per_class):
            ext = FORMATS[i % len(FORMATS)]
            if layout == "split":
                solid(root / "train" / cls / f"{i}.{ext}", color)
                solid(root / "test" / cls / f"t{i}.{ext}", color)
            else:
                solid(root / cls / f"{i}.{ext}", color)
    return root


def load(root: Path, cache: Path, **kw):
    return load_image_folder(path=str(root), image_size=[4, 4], cache_dir=str(cache), **kw)


# --------------------------------------------------------------------------- image folders
def test_every_format_decodes_to_its_pixels_with_sorted_class_ids(tmp_path):
    data = load(folder(tmp_path / "imgs"), tmp_path / "cache")
    assert data.class_names == ("blue", "red") and data.num_classes == 2
    assert data.train.x.shape == (10, 4, 4, 3) and data.test.x.shape == (10, 4, 4, 3)
    assert data.train.x.dtype == np.uint8
    for split in (data.train, data.test):
        for x, y in zip(split.x, split.y, strict=True):
            want = np.array(COLORS[data.class_names[y]])
            # lossy JPEG/WebP stay within a few levels of the colour; the GIF's 2nd frame is unread
            assert np.abs(x.reshape(-1, 3).astype(int) - want).max() <= 8
    assert isinstance(data.train.x, np.memmap) or isinstance(data.train.x.base, np.memmap)
    assert data.info["layout"] == "train/test" and data.info["skipped_files"] == 0


def test_grayscale_has_one_channel(tmp_path):
    data = load(folder(tmp_path / "imgs", 2), tmp_path / "cache", color_mode="grayscale")
    assert data.train.x.shape[-1] == 1
    red = data.train.x[data.train.y == 1]
    assert np.all(np.abs(red.astype(int) - 76) <= 2)  # ITU-R 601 luma of pure red


def test_a_cache_hit_never_decodes_and_a_changed_file_decodes_again(tmp_path, monkeypatch):
    root, cache = folder(tmp_path / "imgs", 2), tmp_path / "cache"
    first = load(root, cache)

    def refuse(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_decode, "decode_chunk", refuse)
    again = load(root, cache)
    np.testing.assert_array_equal(np.asarray(first.train.x), np.asarray(again.train.x))
    assert again.source_key == first.source_key

    solid(root / "train" / "red" / "0.png", (0, 255, 0), size=(7, 7))  # the user edits an image
    os.utime(root / "train" / "red" / "0.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        load(root, cache)


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path):
    root, cache = folder(tmp_path / "imgs", 2), tmp_path / "cache"
    first = load(root, cache)
    entry = Path(first.info["decode_cache"])
    arr = entry / images_mod.ARRAY_FILE
    arr.write_bytes(arr.read_bytes()[:-10])  # truncated
    again = load(root, cache)
    np.testing.assert_array_equal(np.asarray(first.train.x), np.asarray(again.train.x))
    # issue #23, case 2: a rewritten labels.npy gave accuracy 0 on every row, all ok
    labels = entry / images_mod.LABELS_FILE
    np.save(labels, np.zeros_like(np.load(labels)))
    third = load(root, cache)
    np.testing.assert_array_equal(first.train.y, third.train.y)
    assert len(set(third.train.y.tolist())) == 2


def test_one_tree_is_split_stratified_and_seeded(tmp_path):
    root = folder(tmp_path / "imgs", per_class=10, layout="one")
    a = load(root, tmp_path / "cache", test_fraction=0.2, split_seed=0)
    b = load(root, tmp_path / "cache", test_fraction=0.2, split_seed=1)
    assert len(a.train) == 16 and len(a.test) == 4
    assert np.bincount(a.test.y).tolist() == [2, 2]
    assert a.info["layout"] == "one tree" and a.source_key != b.source_key


def test_parallel_decode_equals_in_process(tmp_path, monkeypatch):
    root = folder(tmp_path / "imgs", per_class=10, layout="one")
    (root / "red" / "broken.webp").write_bytes(b"RIFF0000WEBPnope")
    serial = load(root, tmp_path / "c1", workers=1)
    monkeypatch.setattr(images_mod, "POOL_WORTH_SECONDS", 0.0)
    monkeypatch.setattr(images_mod, "CHUNK", 3)
    import concurrent.futures

    pools = []
    real_pool = concurrent.futures.ProcessPoolExecutor

    def counted(n, **kw):
        pools.append((n, kw["mp_context"].get_start_method()))
        return real_pool(n, **kw)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", counted)
    parallel = load(root, tmp_path / "c2", workers=2)
    assert pools == [(2, "spawn")]  # one pool of two spawned workers shared the later chunks
    np.testing.assert_array_equal(np.asarray(serial.train.x), np.asarray(parallel.train.x))
    np.testing.assert_array_equal(serial.test.y, parallel.test.y)
    assert parallel.info["skipped_files"] == serial.info["skipped_files"] == 1
    assert "broken.webp" in parallel.info["skipped_examples"][0]


def test_a_corrupt_image_is_skipped_and_named_or_fatal_on_request(tmp_path):
    root = folder(tmp_path / "imgs", 3)
    (root / "train" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = root / "train" / "blue" / "0.png"
    (root / "train" / "blue" / "truncated.png").write_bytes(good.read_bytes()[:30])
    data = load(root, tmp_path / "cache")
    assert len(data.train) == 6 and data.info["skipped_files"] == 2
    assert any("broken.png" in s for s in data.info["skipped_examples"])
    assert "skipped 2 unreadable image(s)" in data.warnings[0]
    with pytest.raises(RunnerError, match=r"2 image\(s\).*cannot be read.*on_bad_file=skip"):
        load(root, tmp_path / "cache", on_bad_file="error")
    with pytest.raises(RunnerError, match="broken.png"):
        load(root, tmp_path / "fresh", on_bad_file="error")
    assert not any((tmp_path / "fresh").glob("*/meta.json"))  # nothing half-written


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: r.mkdir(), "has no class folders .it is empty"),
        (lambda r: solid(r / "a.png", (1, 2, 3)), "images lie loose"),
        (
            lambda r: (solid(r / "cat" / "1.png", (1, 2, 3)), (r / "dog").mkdir()),
            "class folder.s. 'dog' hold no images",
        ),
        (
            lambda r: (
                solid(r / "train" / "cat" / "1.png", (1, 2, 3)),
                solid(r / "test" / "dog" / "1.png", (1, 2, 3)),
            ),
            r"different classes \(only in train: \['cat'\]; only in test: \['dog'\]\)",
        ),
    ],
)
def test_bad_folders_get_one_clear_message(tmp_path, make, message):
    make(tmp_path / "imgs")
    with pytest.raises(RunnerError, match=message):
        load(tmp_path / "imgs", tmp_path / "cache")


def test_image_size_is_required_without_a_pretrained_model(tmp_path):
    with pytest.raises(RunnerError, match="dataset.image_size is not set"):
        load_image_folder(path=str(folder(tmp_path / "imgs", 1)), cache_dir=str(tmp_path))


def test_validation_views_read_rows_without_copying_the_set():
    from runner.train import split_validation

    x = np.arange(40 * 2, dtype=np.uint8).reshape(40, 2)
    fit, val = split_validation(Split(x, np.arange(40)), 0.25, 0)
    assert isinstance(fit.x, Rows) and len(val.x) == 10 and fit.x.shape == (30, 2)
    np.testing.assert_array_equal(val.x[2:5], x[val.y[2:5]])
    np.testing.assert_array_equal(np.asarray(fit.x), x[fit.y])


# --------------------------------------------------------------------------- .npz arrays
def test_npz_with_splits_float_pixels_become_uint8_unit(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 5, 5, 3)).astype(np.uint8)
    y = np.arange(30) % 3
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x[:20] / 255.0, y_train=y[:20], x_test=x[20:] / 255.0, y_test=y[20:])
    data = load_arrays(path=str(p))
    assert data.train.x.dtype == np.uint8 and data.default_scaling == "unit"
    np.testing.assert_array_equal(data.train.x, x[:20])  # x / 255 round-trips exactly
    assert data.num_classes == 3 and data.class_names == ("0", "1", "2")


def test_npz_x_y_split_one_hot_labels_and_standardized_floats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4, 4, 1)).astype(np.float32)
    y = np.eye(2)[np.arange(40) % 2]
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, class_names=np.array(["real", "fake"]))
    data = load_arrays(path=str(p), test_fraction=0.25)
    assert (len(data.train), len(data.test)) == (30, 10)
    assert data.default_scaling == "none" and data.train.x.dtype == np.float32
    assert data.class_names == ("real", "fake") and np.bincount(data.test.y).tolist() == [5, 5]
    with pytest.raises(RunnerError, match="not pixels.*input_scaling=none or auto"):
        load_arrays(path=str(p), input_scaling="unit")


def test_npz_token_ids_feed_a_text_model(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50, (20, 12)).astype(np.int64)
    p = tmp_path / "t.npz"
    np.savez(p, x=ids, y=np.arange(20) % 2)
    data = load_arrays(path=str(p))
    assert data.is_text and data.default_scaling == "none"
    assert data.model_kwargs == {"vocab_size": int(ids.max()) + 1}


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.array([object(), 1], dtype=object), "y": [0, 1]}, "Python objects"),
        ({"x": np.zeros((5, 4, 4)), "y": np.zeros(4)}, "x has 5 samples but y has 4"),
        (
            {
                "x_train": np.zeros((4, 4, 4)),
                "y_train": [0, 1, 0, 1],
                "x_test": np.zeros((2, 5, 4)),
                "y_test": [0, 1],
            },
            r"x_train samples have shape \(4, 4\) but x_test samples \(5, 4\)",
        ),
        ({"images": np.zeros((4, 4))}, r"holds \['images'\]; expected x_train"),
        ({"x": np.zeros((4, 4, 4)), "y": [0.5, 1, 0, 1]}, "one integer class id"),
    ],
)
def test_bad_npz_files_get_one_clear_message(tmp_path, arrays, message):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(RunnerError, match=message):
        load_arrays(path=str(p))


def test_a_folder_given_for_an_npz_file_is_named_as_a_folder(tmp_path):
    with pytest.raises(RunnerError, match="is a folder; expected a .npz file"):
        load_arrays(path=str(tmp_path))


# --------------------------------------------------------------------------- through the runner
def test_config_checks_data_path_and_image_keys_before_anything_runs(tmp_path):
    from runner.config import problems

    cfg = compose_config(
        "dataset=image_folder",
        f"dataset.path={tmp_path / 'nope'}",
        "dataset.image_size=[0,4]",
        "dataset.color_mode=cmyk",
    )
    bad = problems(cfg)
    assert any(line.startswith("dataset.path=") and "does not exist" in line for line in bad)
    assert any(line.startswith("dataset.image_size=") for line in bad)
    assert any(line.startswith("dataset.color_mode=") for line in bad)


@pytest.mark.slow
def test_a_pretrained_model_sets_the_image_size_and_its_class_count_is_checked(tmp_path):
    import tf_keras as keras

    from runner.pipeline import load_dataset

    inputs = keras.Input((6, 6, 1))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, out).save(tmp_path / "m.h5")
    root = folder(tmp_path / "imgs", 2)
    overrides = [
        "model=pretrained",
        f"model.path={tmp_path / 'm.h5'}",
        "dataset=image_folder",
        f"dataset.path={root}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    data = load_dataset(compose_config(*overrides))
    assert data.input_shape == (6, 6, 1)  # size and grayscale from the model's input
    # a bare SavedModel says its input in saved_model.pb: read there, nothing restored
    import tensorflow as tf

    from runner.models import saved_model

    tf.saved_model.save(keras.Model(inputs, out), str(tmp_path / "exported"))
    assert not (tmp_path / "exported" / "keras_metadata.pb").exists()
    assert saved_model.signature_input_shape(tmp_path / "exported") == (6, 6, 1)
    exported = [o.replace(str(tmp_path / "m.h5"), str(tmp_path / "exported")) for o in overrides]
    assert load_dataset(compose_config(*exported)).input_shape == (6, 6, 1)
    proc = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "m.h5 has 3 outputs, but the data set has 2 classes" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_digits_as_png_folders_score_like_the_digits_dataset(tmp_path, shared_cache):
    """The same images through a folder of PNGs and through dataset=digits: same accuracy."""
    from runner.data.digits import load_digits
    from runner.pipeline import run

    digits = load_digits()
    root = tmp_path / "digits"
    for split, s in (("train", digits.train), ("test", digits.test)):
        for i, (x, y) in enumerate(zip(s.x, s.y, strict=True)):
            (root / split / str(y)).mkdir(parents=True, exist_ok=True)
            PIL.fromarray(x[..., 0]).save(root / split / str(y) / f"{i:04d}.png")
    common = [f"cache_dir={shared_cache}", "recipe=none", "evaluation.progress=false"]
    ref = run(compose_config(*common), tmp_path / "digits_run")
    got = run(
        compose_config(
            *common,
            "dataset=image_folder",
            f"dataset.path={root}",
            "dataset.image_size=8",
            "dataset.color_mode=grayscale",
        ),
        tmp_path / "folder_run",
    )
    a, b = ref.row("none.tflite")["accuracy"], got.row("none.tflite")["accuracy"]
    assert abs(a - b) <= 0.01, (a, b)
    assert a > 0.95
    saved = json.loads((tmp_path / "folder_run" / "models" / "labels.json").read_text())
    assert saved == [str(i) for i in range(10)]
    results = json.loads((tmp_path / "folder_run" / "results.json").read_text())
    assert results["data"]["class_names"] == saved and results["data"]["skipped_files"] == 0


def test_a_npy_file_or_a_lying_header_is_one_line(tmp_path):
    # issue #23, case 7: a .npy (even renamed .npz) and a header claiming 10^12 values
    import io
    import zipfile

    from runner.data.arrays import load_arrays

    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.uint8))
    (tmp_path / "x.npy").rename(tmp_path / "renamed.npz")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 16)
        z.writestr("y.npy", b"")
    with pytest.raises(RunnerError, match=r"holds one array \(a .npy file\).*np.savez"):
        load_arrays(path=str(tmp_path / "renamed.npz"))
    with pytest.raises(RunnerError, match=r"array 'x' cannot be read.*header claims more values"):
        load_arrays(path=str(tmp_path / "huge.npz"))


def test_symlinks_are_followed_once_and_never_count_an_image_twice(tmp_path, caplog):
    # issue #23, case 5: a symlink loop inflated 40 files to 840 and mixed train with test
    root = folder(tmp_path / "imgs", 3)
    os.symlink(root / "train" / "blue", root / "train" / "blue" / "loop")  # a loop
    os.symlink(tmp_path / "nowhere.png", root / "train" / "red" / "dangling.png")
    data = load(root, tmp_path / "cache")
    assert len(data.train) == 6 and len(data.test) == 6  # each real image once
    assert "a symlink to nothing" in caplog.text
    # an image linked into the test split as well: refused by name
    os.symlink(root / "train" / "red" / "0.png", root / "test" / "red" / "leak.png")
    with pytest.raises(RunnerError, match="are the same file.*one class and one split"):
        load(root, tmp_path / "cache")
    # the same with a hard link (one inode under two names)
    os.remove(root / "test" / "red" / "leak.png")
    os.link(root / "train" / "red" / "0.png", root / "test" / "red" / "leak.png")
    with pytest.raises(RunnerError, match=r"train/red/0.png and test/red/leak.png are the same"):
        load(root, tmp_path / "cache")
    # a class folder that is a link to another class
    one = folder(tmp_path / "one", 3, layout="one")
    os.symlink(one / "blue", one / "teal")
    with pytest.raises(RunnerError, match="class folders 'blue' and 'teal' are the same folder"):
        load(one, tmp_path / "cache")


def test_a_named_pipe_in_an_image_folder_is_skipped_not_waited_on(tmp_path, caplog):
    root = folder(tmp_path / "imgs")
    pipe = root / "train" / "red" / "stuck.png"
    os.mkfifo(pipe)  # a reader of it would block forever
    data = load(root, tmp_path / "cache")
    assert len(data.train) == 10  # 5 per class; the pipe is not one of them
    assert any("not a regular file" in r.getMessage() for r in caplog.records)


def test_a_decode_the_disk_cannot_hold_stops_with_one_line_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    root = folder(tmp_path / "imgs")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(RunnerError, match=r"the image cache needs \d+ MB in .* and 1 MB are free"):
        load(root, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing half-written


def test_a_killed_decodes_leftover_is_removed_by_the_next_decode(tmp_path):
    root = folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    load(root, cache)
    (entry,) = [p for p in cache.rglob("meta.json")]
    key = entry.parent.name
    leftover = entry.parent.parent / f".{key}-killed"
    leftover.mkdir()
    (leftover / "decoding.npy").write_bytes(b"\0" * 4096)
    import shutil

    shutil.rmtree(entry.parent)  # the entry is rebuilt: the leftover goes with it
    load(root, cache)
    assert not leftover.exists()


def test_a_read_only_dataset_cache_dir_warns_and_decodes_elsewhere_or_serves_its_entry(
    tmp_path, monkeypatch
):
    import errno
    import tempfile

    root, cache = folder(tmp_path / "imgs"), tmp_path / "shared-cache"
    first = load(root, cache)  # a cache someone else filled, then made read-only

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    served = load(root, cache)  # its entry is read, never locked or rewritten
    assert not served.warnings and np.array_equal(served.train.x, first.train.x)
    elsewhere = load(root, tmp_path / "empty-read-only")  # nothing to serve: decoded in temp
    (said,) = [w for w in elsewhere.warnings if "cannot be written" in w]
    assert said.startswith(f"dataset.cache_dir={tmp_path / 'empty-read-only'} cannot be written")
    assert np.array_equal(elsewhere.train.x, first.train.x)
    assert list((tmp_path / "tmp" / "tfq-runner-image-cache").iterdir())
