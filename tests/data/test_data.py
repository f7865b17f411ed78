"""Data stage: the embedded digits set, scaling, and the CIFAR-100 loader on a fixture archive."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from helpers import cifar_arrays, write_cifar_folder, write_cifar_tarball

from runner.data import Scaling, Split, batches, calibration_sample, subset
from runner.data.cifar100 import load_cifar100
from runner.data.digits import load_digits
from runner.errors import RunnerError


def test_digits_split_is_uint8_stratified_and_reproducible():
    # execute
    a, b = load_digits(split_seed=0), load_digits(split_seed=0)
    c = load_digits(split_seed=1)
    # assert
    assert a.train.x.dtype == np.uint8 and a.train.x.shape[1:] == (8, 8, 1)
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert a.train.x.max() == 255 and a.num_classes == 10
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.test.y, c.test.y)
    # stratified: every class holds 10 % of the test split, give or take one image
    counts = np.bincount(a.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_subsets_are_seeded_and_sized():
    d = load_digits(train_size=100, test_size=50)
    assert (len(d.train), len(d.test)) == (100, 50)
    np.testing.assert_array_equal(d.train.y, load_digits(train_size=100).train.y)
    with pytest.raises(RunnerError, match="positive"):
        subset(d.train, 0, 0)


@pytest.mark.parametrize(
    ("kind", "lo", "hi"), [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0), ("none", 0, 255)]
)
def test_scalings_map_pixel_range(kind, lo, hi):
    x = np.array([[0, 255]], np.uint8)
    out = Scaling(kind)(x)
    assert out.min() == pytest.approx(lo) and out.max() == pytest.approx(hi)


def test_standardize_uses_per_channel_mean_and_std():
    x = np.full((1, 2, 2, 2), 255, np.uint8)
    out = Scaling("standardize", mean=(0.5, 0.0), std=(0.25, 1.0))(x)
    np.testing.assert_allclose(out[0, 0, 0], [2.0, 1.0])


def test_unknown_scaling_names_the_choices():
    with pytest.raises(RunnerError, match="symmetric"):
        Scaling("minus_one_to_one")


def test_batches_convert_one_batch_at_a_time():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1)
    out = list(batches(x, 4, Scaling("unit")))
    assert [len(b) for b in out] == [4, 4, 2]
    assert all(b.dtype == np.float32 for b in out)
    np.testing.assert_allclose(np.concatenate(out)[:, 0], np.arange(10) / 255, rtol=1e-6)


def test_calibration_sample_is_seeded():
    s = Split(np.arange(100).reshape(100, 1), np.zeros(100))
    a, b, c = (
        calibration_sample(s, 10, 0),
        calibration_sample(s, 10, 0),
        calibration_sample(s, 10, 1),
    )
    assert len(a) == 10 and np.array_equal(a, b) and not np.array_equal(a, c)


# --------------------------------------------------------------------------- CIFAR-100
def test_cifar_tarball_loads_in_nhwc_with_fine_and_coarse_labels(tmp_path):
    # setup
    archive = write_cifar_tarball(tmp_path / "cifar-100-python.tar.gz")
    raw, fine = cifar_arrays(40, 0)
    # execute
    d = load_cifar100(path=str(archive), extract_dir=str(tmp_path / "x"))
    coarse = load_cifar100(path=str(archive), label_mode="coarse", extract_dir=str(tmp_path / "x"))
    # assert
    assert d.train.x.shape == (40, 32, 32, 3) and d.train.x.dtype == np.uint8
    assert (len(d.test), d.num_classes, coarse.num_classes) == (20, 100, 20)
    np.testing.assert_array_equal(d.train.y, fine)
    # pixel (row 0, col 1) takes its R, G, B from the three 1024-value planes
    np.testing.assert_array_equal(d.train.x[3, 0, 1], raw[3, [1, 1025, 2049]])
    assert d.class_names[7] == "fine7"


def test_cifar_extracted_folder_keras_cache_and_subsets(tmp_path, monkeypatch):
    write_cifar_folder(tmp_path / "keras" / "datasets" / "cifar-100-python")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    d = load_cifar100(train_size=10, test_size=5)
    assert (len(d.train), len(d.test)) == (10, 5)
    d2 = load_cifar100(path=str(tmp_path / "keras" / "datasets"))  # the parent folder works too
    assert len(d2.train) == 40


def test_cifar_offline_without_a_copy_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(RunnerError) as e:
        load_cifar100()
    assert "dataset.path=" in str(e.value) and "cifar-100-python" in str(e.value)
    assert str(tmp_path / "empty") in str(e.value)


@pytest.mark.parametrize(
    "member", ["../evil.txt", "cifar-100-python/../../evil.txt", "/tmp/evil-abs.txt"]
)
def test_cifar_tarball_with_escaping_member_is_refused_and_nothing_extracted(tmp_path, member):
    archive = write_cifar_tarball(tmp_path / "in" / "cifar.tar.gz", extra_members={member: b"x"})
    target = tmp_path / "out" / "target"
    with pytest.raises(RunnerError, match="outside the target folder"):
        load_cifar100(path=str(archive), extract_dir=str(target))
    assert not target.exists()
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_a_tarball_that_is_not_cifar_is_refused(tmp_path):
    import tarfile

    bad = tmp_path / "other.tar.gz"
    (tmp_path / "readme.txt").write_text("hi")
    with tarfile.open(bad, "w:gz") as t:
        t.add(tmp_path / "readme.txt", arcname="readme.txt")
    with pytest.raises(RunnerError, match="not the CIFAR-100 python archive"):
        load_cifar100(path=str(bad), extract_dir=str(tmp_path / "x"))
    (tmp_path / "plain.bin").write_bytes(b"not a tar")
    with pytest.raises(RunnerError, match="not a readable tar archive"):
        load_cifar100(path=str(tmp_path / "plain.bin"), extract_dir=str(tmp_path / "x"))


def test_a_folder_not_in_the_layout_is_refused(tmp_path):
    folder = write_cifar_folder(tmp_path / "c")
    (folder / "test").unlink()
    with pytest.raises(RunnerError, match="layout"):
        load_cifar100(path=str(folder))
    (folder / "test").write_bytes(pickle.dumps({b"data": [1, 2, 3]}, protocol=2))
    with pytest.raises(RunnerError, match="layout"):
        load_cifar100(path=str(folder))


def test_a_pickle_with_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = write_cifar_folder(tmp_path / "c")
    (folder / "train").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(RunnerError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_cifar100(path=str(folder))


def test_stratified_split_is_seeded_disjoint_and_keeps_class_shares():
    from runner.data import stratified_split

    y = np.repeat(np.arange(3), [50, 30, 20])
    tr, te = stratified_split(y, 0.25, seed=3)
    assert len(te) == 25 and len(tr) == 75 and not set(tr) & set(te)
    assert sorted(np.bincount(y[te]).tolist()) == [5, 8, 12]  # 12.5 / 7.5 / 5 rounded by remainder
    np.testing.assert_array_equal(stratified_split(y, 0.25, seed=3)[1], te)
    assert not np.array_equal(stratified_split(y, 0.25, seed=4)[1], te)
    with pytest.raises(RunnerError, match="test_fraction"):
        stratified_split(y, 1.5, seed=0)


@pytest.mark.parametrize("python_has_data_filter", [True, False])
def test_a_symlink_member_is_refused_with_or_without_tarfile_filters(
    tmp_path, monkeypatch, python_has_data_filter
):
    import tarfile

    # setup: a real-layout archive plus a link to a file outside the target
    archive = write_cifar_tarball(tmp_path / "in" / "cifar.tar.gz")
    with tarfile.open(archive, "r:gz") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src]
    with tarfile.open(archive, "w:gz") as tar:
        for m, payload in members:
            tar.addfile(m, io.BytesIO(payload) if payload is not None else None)
        link = tarfile.TarInfo("cifar-100-python/meta2")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    if not python_has_data_filter:  # Python < 3.11.4: the runner checks member kinds itself
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    target = tmp_path / "out" / "target"
    # execute / assert
    with pytest.raises(RunnerError, match="refusing"):
        load_cifar100(path=str(archive), extract_dir=str(target))
    assert not (target / "cifar-100-python").exists()
