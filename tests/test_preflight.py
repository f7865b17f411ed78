"""Nothing silent, nothing late: every reference checked before work starts, Hydra's override
errors as the runner's one line, configs that cannot name foreign code (runner.preflight,
runner.allowed, the sweeper's per-job check)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import CONF, ROOT, TINY, run_cli

from runner.config import problems
from runner.references import group_options
from runner.schema import Options, options_of, resolve


def _one_error_line(p) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr[-2000:]
    assert lines[0].startswith("error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- typos, before work
def test_a_misspelt_export_recipe_is_one_line_in_seconds_with_no_run_folder(tmp_path):
    # setup
    run_dir = tmp_path / "run"
    # execute
    t0 = time.perf_counter()
    p = run_cli("recipe=prune", "recipe.export=ful_integer", f"hydra.run.dir={run_dir}")
    seconds = time.perf_counter() - t0
    # assert: exit 2, "did you mean", before anything trained or was written
    assert p.returncode == 2
    assert "did you mean full_integer?" in _one_error_line(p)
    assert not run_dir.exists()
    assert seconds < 10, seconds


def test_a_misspelt_key_without_plus_is_the_runners_one_line():
    p = run_cli("recipe=full_integer", "recipe.calibraton_samples=10")
    assert p.returncode == 2
    assert _one_error_line(p) == (
        "error: bad config value: recipe.calibraton_samples: unknown key; "
        "did you mean recipe.calibration_samples?"
    )


def test_a_misspelt_group_option_names_the_closest_one():
    p = run_cli("recipe=ful_integer")
    assert p.returncode == 2
    assert "recipe=ful_integer: no such option; did you mean recipe=full_integer?" in (
        _one_error_line(p)
    )


def test_multirun_with_cfg_job_is_one_line_not_a_traceback():
    p = run_cli("-m", "recipe=none,float16", "--cfg", "job")
    assert p.returncode == 2
    assert "-m and --cfg" in _one_error_line(p)


def test_every_job_of_a_sweep_is_checked_before_any_job_runs(tmp_path):
    # setup: the second value of a swept key is a typo; the first job would train
    sweep_dir = tmp_path / "sweep"
    # execute
    p = run_cli(
        "-m",
        "recipe=prune",
        "recipe.export=full_integer,ful_integer",
        f"hydra.sweep.dir={sweep_dir}",
    )
    # assert: one line naming the job, and no job folder
    assert p.returncode == 2
    line = _one_error_line(p)
    assert line.startswith("error: bad config value: job recipe=prune recipe.export=ful_integer: ")
    assert "did you mean full_integer?" in line
    assert not list(sweep_dir.glob("*/.hydra"))  # no job started


def test_a_swept_groups_option_is_checked_against_each_swept_choice(tmp_path):
    # setup: cluster_qat has recipe.epochs, float16 does not
    sweep_dir = tmp_path / "sweep"
    # execute
    p = run_cli(
        "-m", "recipe=float16,cluster_qat", "recipe.epochs=3", f"hydra.sweep.dir={sweep_dir}"
    )
    # assert: only the float16 job is refused, by the runner, before any job runs
    assert p.returncode == 2
    line = _one_error_line(p)
    assert "job recipe=float16" in line and "recipe.epochs: unknown key" in line
    assert "cluster_qat" not in line


@pytest.mark.slow
def test_a_sweep_over_the_qat_family_can_set_their_shared_option(tmp_path):
    sweep_dir = tmp_path / "sweep"
    p = run_cli(
        "-m",
        *TINY,
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep_dir}",
        "recipe=prune_qat,cluster_qat",
        "recipe.epochs=1",
        "recipe.compress_epochs=1",
        "recipe.clusters=8",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    import json

    rows = json.loads((sweep_dir / "comparison.json").read_text())
    mine = {r["artifact"]: r for r in rows if r["role"] == "recipe"}
    assert {"prune_qat.tflite", "cluster_qat.tflite"} <= set(mine)
    assert all(r["status"] == "ok" for r in mine.values())


def _named_fields() -> list[tuple[str, str, str, object]]:
    """(recipe file, key, what it names, its default) for every schema field tagged ``names``
    (another config's group, or ``layer``), over every recipe of conf/recipe."""
    import yaml

    out = []
    for f in sorted((CONF / "recipe").glob("*.yaml")):
        text = f.read_text()
        target = next(
            (
                line.split("/base/")[1].split("@")[0]
                for line in text.splitlines()
                if "/base/" in line
            ),
            (yaml.safe_load(text) or {}).get("_target_"),
        )
        if not target:
            continue
        for name, field in options_of(resolve(target), target).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if extra.get("names"):
                out.append((f.stem, name, extra["names"], field.get_default()))
    return out


def _tagged_fields() -> list[tuple[str, str, str, object]]:
    """The fields that name another config (layers are per model: below)."""
    return [f for f in _named_fields() if f[2] != "layer"]


def test_the_walk_finds_the_fields_that_name_other_configs():
    found = {(recipe, key) for recipe, key, _, _ in _tagged_fields()}
    assert {("prune", "export"), ("cluster", "export"), ("adaround", "export")} <= found
    assert ("qat_int4", "export") in found


@pytest.mark.parametrize("recipe, key, group, valid", _tagged_fields())
def test_every_field_that_names_another_config_refuses_a_typo(tiny_cfg, recipe, key, group, valid):
    # setup: the recipe's own valid value passes; one letter dropped does not
    assert valid in group_options(group)
    cfg = tiny_cfg(f"recipe={recipe}", f"recipe.{key}={valid[:-1]}")
    # execute
    bad = problems(cfg)
    # assert
    assert any(
        line.startswith(f"recipe.{key}={valid[:-1]}: no such {group}")
        and f"did you mean {valid}?" in line
        for line in bad
    ), bad


def test_a_misspelt_layer_name_is_refused_with_the_closest_layer():
    import tf_keras as keras

    from runner.errors import RunnerError
    from runner.recipes.base import check_layer_names

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(inputs))
    check_layer_names(model, ["head"], "recipe.skip_layers")  # a real name passes
    with pytest.raises(RunnerError, match=r"recipe.skip_layers names heda \(did you mean head\?\)"):
        check_layer_names(model, ["heda"], "recipe.skip_layers")


def test_more_clusters_than_weights_names_the_layer_and_the_fix():
    import tf_keras as keras

    from runner.errors import RunnerError
    from runner.recipes.base import RecipeMeta
    from runner.recipes.prune import ClusterOptions, ClusterRecipe

    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, name="wide")(inputs)  # 128 weights
    model = keras.Model(inputs, keras.layers.Dense(1, name="tiny")(hidden))  # 16 weights
    recipe = ClusterRecipe(RecipeMeta(name="cluster"), ClusterOptions(clusters=32))
    with pytest.raises(RunnerError) as e:
        recipe.check(model)
    assert "tiny (16 weights)" in str(e.value) and "wide" not in str(e.value)
    assert "recipe.clusters<=16" in str(e.value) and "recipe.skip_layers=[tiny]" in str(e.value)
    ClusterRecipe(RecipeMeta(name="cluster"), ClusterOptions(clusters=16)).check(model)


# --------------------------------------------------------------------------- foreign code
EVIL_YAML = """# @package _global_
hydra:
  callbacks:
    x:
      _target_: pathlib.Path.touch
      self: {marker}
"""


@pytest.mark.parametrize(
    "case",
    ["searchpath_callback", "cli_callback_open", "cli_callback_makedirs", "zen", "logging"],
)
def test_a_config_cannot_run_foreign_code(tmp_path, case):
    # setup: each case tries to create the marker (or print the Zen of Python)
    marker = tmp_path / "marker"
    evil = tmp_path / "evil" / "experiment"
    evil.mkdir(parents=True)
    (evil / "evil.yaml").write_text(EVIL_YAML.format(marker=marker))
    args = {
        "searchpath_callback": [
            f"hydra.searchpath=[file://{tmp_path / 'evil'}]",
            "+experiment=evil",
        ],
        "cli_callback_open": [
            "+hydra.callbacks.x._target_=builtins.open",
            f"+hydra.callbacks.x.file={marker}",
            "+hydra.callbacks.x.mode=w",
        ],
        "cli_callback_makedirs": [
            "+hydra.callbacks.x._target_=os.makedirs",
            f"+hydra.callbacks.x.name={marker}",
        ],
        "zen": ["recipe._target_=this.s"],
        "logging": ["++hydra.job_logging.handlers.console.class=pathlib.Path"],
    }[case]
    # execute
    p = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}")
    # assert: refused in one line, exit 2, nothing made, nothing imported
    assert p.returncode == 2
    line = _one_error_line(p)
    assert "not a runner package" in line or "logging factory" in line
    assert not marker.exists()
    assert "Beautiful is better than ugly" not in p.stdout + p.stderr
    assert not (tmp_path / "run").exists()


def test_a_plugin_package_is_allowed_once_the_user_names_it(monkeypatch):
    from runner.allowed import refused_target

    monkeypatch.delenv("TFQ_RUNNER_PLUGINS", raising=False)
    assert "TFQ_RUNNER_PLUGINS=my_recipes" in refused_target("my_recipes.clip.ClipRecipe")
    assert refused_target("runner.recipes.ptq.PTQRecipe") is None
    assert refused_target("hydra_plugins.tfq_runner.sweeper.RunnerSweeper") is None
    monkeypatch.setenv("TFQ_RUNNER_PLUGINS", "my_recipes, other")
    assert refused_target("my_recipes.clip.ClipRecipe") is None
    assert refused_target("my_recipes_evil.x") is not None  # a prefix is not the package


def test_resolve_refuses_before_importing(monkeypatch):
    import sys

    from runner.errors import RunnerError

    monkeypatch.delitem(sys.modules, "this", raising=False)
    with pytest.raises(RunnerError, match="not a runner package"):
        resolve("this.s")
    assert "this" not in sys.modules


def test_options_are_a_pydantic_schema():  # the walk above reads them through this base
    assert issubclass(options_of(resolve("runner.recipes.prune.PruneRecipe")), Options)


def test_the_conf_folder_names_only_allowed_targets():
    import yaml

    from runner.config import target_problems

    bad = []
    for f in sorted(Path(ROOT / "conf").rglob("*.yaml")):
        bad += target_problems(yaml.safe_load(f.read_text()) or {}, f.stem)
    assert not bad, bad


def _layer_fields() -> list[tuple[str, str]]:
    """(recipe file, key) for every schema field that names a layer of the model."""
    return [(recipe, key) for recipe, key, names, _ in _named_fields() if names == "layer"]


def test_the_walk_finds_every_field_that_names_a_layer():
    found = set(_layer_fields())
    assert {("prune", "skip_layers"), ("cluster", "skip_layers"), ("qat", "skip_layers")} <= found
    assert {("adaround", "skip_layers"), ("qat_int4", "skip_layers")} <= found
    assert ("prune_cluster_qat", "skip_layers") in found


@pytest.mark.parametrize("recipe, key", _layer_fields())
def test_every_field_that_names_a_layer_refuses_a_typo_before_its_work(tmp_path, recipe, key):
    # setup: a tiny digits CNN; its first weighted layer's name with one letter dropped
    from runner.data import Dataset, Scaling
    from runner.data.digits import load_digits
    from runner.errors import RunnerError
    from runner.models.builders import small_cnn
    from runner.pipeline import build_recipe, recipe_by_name
    from runner.recipes.base import RecipeContext

    d = load_digits(train_size=40, test_size=10)
    model = small_cnn((8, 8, 1), 10, filters=(4,), dense_units=0, dropout=0)
    layer = next(la.name for la in model.layers if la.get_weights())
    cfg = tiny_cfg_recipe(recipe, f"recipe.{key}=[{layer[:-1]}]")
    ctx = RecipeContext(
        model=model,
        dataset=Dataset("tiny", d.train, d.test, 10),
        scaling=Scaling("unit"),
        models_dir=tmp_path,
        train_cfg={"batch_size": 8, "validation_split": 0.2},
        recipes=recipe_by_name,
    )
    # execute / assert: one line naming the closest layer, and no file written
    with pytest.raises(
        RunnerError, match=rf"recipe.{key} names {layer[:-1]} \(did you mean {layer}\?\)"
    ):
        build_recipe(cfg.recipe).produce(ctx)
    assert not list(tmp_path.glob("*.tflite"))


def tiny_cfg_recipe(recipe: str, *overrides: str):
    from runner.config import compose

    return compose([f"recipe={recipe}", *overrides])
