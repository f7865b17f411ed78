"""runner.baseline: the cache key holds what changes the trained model, as the schemas tag it."""

from __future__ import annotations

from helpers import compose_config

from runner.baseline import baseline_spec, scaling_from
from runner.cache import cache_key


def _key(*overrides: str) -> str:
    return cache_key(baseline_spec(compose_config(*overrides)))


def test_keys_tagged_not_training_leave_the_cache_key_alone():
    base = _key()
    assert _key("dataset.test_size=50") == base  # tagged trains=False
    assert _key("model.recurrent=unrolled") == base
    assert _key("recipe=qat", "recipe.epochs=5") == base  # recipes never retrain the baseline
    assert _key("dataset.train_size=50") != base
    assert _key("train.epochs=3") != base and _key("seed=1") != base


def test_an_image_folders_decode_settings_are_not_part_of_the_model():
    common = ("dataset=image_folder", "dataset.path=/data", "dataset.image_size=8")
    assert _key(*common, "dataset.workers=1") == _key(*common, "dataset.workers=2")
    assert _key(*common, "dataset.cache_dir=/a") == _key(*common, "dataset.cache_dir=/b")


def test_auto_scaling_is_what_the_data_needs():
    cfg = compose_config("dataset=arrays")
    assert cfg.model.input_scaling == "auto"  # follows dataset.input_scaling
    assert scaling_from(cfg.model).kind == "unit"  # no data yet: pixels
