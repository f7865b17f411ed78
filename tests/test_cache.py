"""The float-baseline cache: train once, load after, rebuild what is corrupt, never load it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runner.cache import MODEL_FILE, cache_key, get_or_train
from runner.models.builders import small_cnn
from runner.train import TrainResult


class Trainer:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        m = small_cnn((8, 8, 1), 10, filters=(4,), dense_units=0, dropout=0)
        return TrainResult(model=m, seconds=1.5, history={"loss": [1.0]})


SPEC = {"dataset": {"name": "digits"}, "model": {"name": "tiny"}, "train": {"epochs": 1}, "seed": 0}


def test_second_call_hits_and_loads_the_same_weights(tmp_path):
    trainer = Trainer()
    first = get_or_train(tmp_path, SPEC, trainer)
    second = get_or_train(tmp_path, SPEC, trainer)
    assert (first.status, second.status, trainer.calls) == ("miss", "hit", 1)
    assert second.train_seconds == 1.5  # the hit reports what the training cost
    x = np.random.default_rng(0).random((3, 8, 8, 1), np.float32)
    np.testing.assert_allclose(first.model(x).numpy(), second.model(x).numpy(), rtol=1e-6)


def test_key_changes_with_any_part_of_the_spec():
    assert cache_key(SPEC) == cache_key(json.loads(json.dumps(SPEC)))
    assert cache_key(SPEC) != cache_key({**SPEC, "seed": 1})
    assert cache_key(SPEC) != cache_key({**SPEC, "train": {"epochs": 2}})


@pytest.mark.parametrize("damage", ["truncate", "delete_meta", "bad_json"])
def test_a_corrupt_entry_is_rebuilt_never_loaded(tmp_path, damage):
    trainer = Trainer()
    entry = get_or_train(tmp_path, SPEC, trainer).path.parent
    if damage == "truncate":  # a killed writer
        data = (entry / MODEL_FILE).read_bytes()
        (entry / MODEL_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "delete_meta":
        (entry / "meta.json").unlink()
    else:
        (entry / "meta.json").write_text("{not json")
    again = get_or_train(tmp_path, SPEC, trainer)
    assert (again.status, trainer.calls) == ("miss", 2)
    assert get_or_train(tmp_path, SPEC, trainer).status == "hit"


def test_leftover_temp_folders_of_a_killed_run_are_ignored_then_removed(tmp_path):
    stale = tmp_path / f".tmp-{cache_key(SPEC)}-abc"
    stale.mkdir()
    (stale / MODEL_FILE).write_bytes(b"half")
    other = tmp_path / ".tmp-0123456789abcdef-xyz"  # another key's: maybe being written now
    other.mkdir()
    trainer = Trainer()
    assert get_or_train(tmp_path, SPEC, trainer).status == "miss"
    assert trainer.calls == 1
    # issue #23, case 13: the killed run's folder does not stay forever; another key's is kept
    assert not stale.exists() and other.exists()


def test_a_shared_cache_and_results_follow_the_umask(tmp_path):
    # issue #23, case 12: mkstemp/mkdtemp made files 0600 and entries 0700
    import os
    import stat

    from runner.files import atomic_write_text

    old = os.umask(0o002)  # a group that shares the cache
    try:
        got = get_or_train(tmp_path, SPEC, Trainer())
        written = atomic_write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(got.path.parent) == 0o775  # the entry folder
    assert mode(got.path) == 0o664 and mode(written) == 0o664


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_a_damaged_cached_conversion_is_converted_again_never_served(tmp_path, damage, caplog):
    # issue #23, case 2: a truncated file failed every later run; random bytes were scored
    import os

    from runner.cache import ConversionCache

    store = ConversionCache(tmp_path)
    spec = {"options": {"optimizations": ["DEFAULT"]}, "calibration": [200, 0]}
    good = os.urandom(4096)
    store.put("float16", spec, good, {"conversion": None})
    assert store.get("float16", spec) == (good, {"conversion": None})
    (path,) = tmp_path.glob("float16-*.tflite")
    path.write_bytes(good[:100] if damage == "truncate" else os.urandom(4096))
    assert store.get("float16", spec) is None
    assert "does not match its SHA-256" in caplog.text
    assert not list(tmp_path.glob("float16-*"))  # removed: the next run stores a good one


def test_conversions_are_keyed_by_the_converter_versions(tmp_path, monkeypatch):
    from runner import cache

    store = cache.ConversionCache(tmp_path)
    store.put("none", {"a": 1}, b"flatbuffer", {})
    assert store.get("none", {"a": 1}) is not None
    upgraded = {**cache.converter_versions(), "tensorflow": "9.99"}
    monkeypatch.setattr(cache, "converter_versions", lambda: upgraded)
    assert store.get("none", {"a": 1}) is None  # an upgrade never reuses an old flatbuffer


def test_a_valid_entry_is_served_without_its_lock(tmp_path, monkeypatch):
    # issue #23, case 4: a read-only cache with a valid entry failed on its lock file
    import filelock

    trainer = Trainer()
    get_or_train(tmp_path, SPEC, trainer)

    def no_lock(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x.lock"))

    monkeypatch.setattr(filelock, "FileLock", no_lock)  # what a read-only folder does
    again = get_or_train(tmp_path, SPEC, trainer)
    assert again.status == "hit" and trainer.calls == 1


def test_a_process_loads_an_entry_once_for_all_its_jobs_and_again_when_it_changes(
    tmp_path, monkeypatch
):
    from runner.models import loading

    trainer = Trainer()
    get_or_train(tmp_path, SPEC, trainer)
    loads = []
    real = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda p, **k: loads.append(p) or real(p, **k))
    first = get_or_train(tmp_path, SPEC, trainer)
    second = get_or_train(tmp_path, SPEC, trainer)  # the sweep's next job in this process
    assert len(loads) == 1 and second.model is first.model and second.status == "hit"
    entry = first.path.parent
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "meta.json").write_text(json.dumps({**meta, "note": "rewritten"}))  # changed
    get_or_train(tmp_path, SPEC, trainer)
    assert len(loads) == 2


def test_a_process_loads_a_data_set_once_for_all_its_jobs(monkeypatch):
    from helpers import compose_config

    from runner import baseline

    calls = []
    real = baseline.call
    monkeypatch.setattr(baseline, "call", lambda *a, **k: calls.append(1) or real(*a, **k))
    baseline._LOADED_DATA.clear()
    cfg = compose_config("dataset.train_size=100")
    first, second = baseline.load_dataset(cfg), baseline.load_dataset(cfg)
    assert len(calls) == 1 and second is first
    baseline.load_dataset(compose_config("dataset.train_size=120"))  # another data config
    assert len(calls) == 2
