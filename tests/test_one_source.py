"""One source per option: the schema holds each default; YAML files hold only differences."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from runner.config import CONF_DIR, FIXED, base_entries, base_node, compose
from runner.schema import options_of, resolve

GROUPS = ("dataset", "model", "recipe", "train", "evaluation", "logger")


def _raw(path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _inherited(group: str, raw: dict[str, Any]) -> dict[str, Any]:
    """What a file's own keys are merged onto: its schema's node and the files it extends."""
    merged = OmegaConf.create({})
    for entry in raw.get("defaults", []):
        if not isinstance(entry, str) or entry == "_self_":
            continue
        if entry.startswith("/base/"):
            name = entry.removeprefix("/base/").split("@")[0]
            merged = OmegaConf.merge(merged, base_node(group, name))
        else:  # another option of the same group
            parent = _raw(CONF_DIR / group / f"{entry}.yaml")
            merged = OmegaConf.merge(merged, _inherited(group, parent), _body(parent))
    return OmegaConf.to_container(merged)


def _body(raw: dict[str, Any]) -> dict[str, Any]:
    body = raw.get("dataset", raw) if "dataset" in raw and "name" not in raw else raw
    return {k: v for k, v in body.items() if k != "defaults"}


def _same(own: Any, inherited: Any, key: str) -> list[str]:
    if isinstance(own, dict) and isinstance(inherited, dict):
        out = []
        for k, v in own.items():
            if k in inherited:
                out += _same(v, inherited[k], f"{key}.{k}")
        return out
    return [f"{key}={own!r}"] if own == inherited else []


@pytest.mark.parametrize("group", GROUPS)
def test_no_yaml_file_restates_a_default_it_inherits(group):
    # setup
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    assert files
    # execute
    restated = []
    for f in files:
        raw = _raw(f)
        inherited = _inherited(group, raw)
        restated += [f"{f.name}: {r}" for r in _same(_body(raw), inherited, "")]
    # assert
    assert not restated, f"values equal to what the file already inherits: {restated}"


def test_every_option_file_extends_its_schema():
    """Each file either extends its schema's node or another file of its group: its keys
    all come from one schema, whose defaults are the composed config's."""
    for group in GROUPS:
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            entries = [e for e in _raw(f).get("defaults", []) if isinstance(e, str)]
            assert any(
                e.startswith("/base/") or (CONF_DIR / group / f"{e}.yaml").exists() for e in entries
            ), f"{f} extends no schema"
            assert "_target_" not in str(_body(_raw(f))), f"{f} restates its _target_"


def test_no_plugin_restates_an_option_default_in_its_signature():
    # setup
    plugins = {name: resolve(name) for name in base_entries() if "." in name}
    assert len(plugins) >= 10
    # execute
    twice = []
    for name, plugin in plugins.items():
        schema = options_of(plugin, name)
        if inspect.isclass(plugin):
            params = inspect.signature(plugin.__init__).parameters
            twice += [f"{name}({p})" for p in params if p in schema.model_fields]
            continue
        params = inspect.signature(plugin).parameters
        twice += [
            f"{name}({p}={params[p].default!r})"
            for p in params
            if p in schema.model_fields and params[p].default is not inspect.Parameter.empty
        ]
    # assert
    assert not twice, f"option defaults declared outside their schema: {twice}"


def test_the_defaults_that_disagreed_have_one_value_each():
    # setup
    from runner.models.builders import SmallCNNOptions
    from runner.train import TrainConfig

    # execute
    cfg = compose([])
    # assert: the composed default run uses the schema's value, and nothing else declares one
    assert cfg.train.epochs == TrainConfig.model_fields["epochs"].default == 40
    assert cfg.train.early_stopping_patience == 8
    assert TrainConfig.model_fields["early_stopping_patience"].default == 8
    assert list(cfg.model.filters) == SmallCNNOptions.model_fields["filters"].default == [32, 64]
    assert cfg.train.seed == cfg.seed and cfg.recipe.calibration_seed == cfg.seed


def test_a_default_can_still_be_overridden_without_plus():
    cfg = compose(["recipe=qat", "recipe.epochs=3", "train.epochs=2", "model.dense_units=8"])
    assert (cfg.recipe.epochs, cfg.train.epochs, cfg.model.dense_units) == (3, 2, 8)


def test_a_python_call_gets_the_schemas_defaults():
    from runner.models.builders import small_cnn

    model = small_cnn((8, 8, 1), 10, filters=[4])
    assert model.get_layer("fc").units == 64  # SmallCNNOptions.dense_units
    assert model.get_layer("block1_bn").momentum == 0.9


def test_fixed_groups_have_their_schema_nodes():
    for group, schema in FIXED.items():
        assert set(base_node(group, group)) == set(schema.model_fields)
