"""Every config value is checked when the config is composed, before any data loads.

The walk below is over the real conf/ (every option of every group, every recipe), so a key
added later is covered by it: it must get a rule, and -1 and a string must be refused by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CONF, compose_config, run_cli
from omegaconf import OmegaConf

from runner.config import problems, schema_of, validate
from runner.errors import RunnerError

# Keys for which -1 is a legitimate value (a per-channel mean may be negative).
NEGATIVE_OK = {"model.input_mean"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compositions() -> list[tuple[str, ...]]:
    """One composition per option of every group (the default for the others)."""
    out: list[tuple[str, ...]] = [()]
    for group in ("model", "dataset", "train", "recipe"):
        out += [(f"{group}={o}",) for o in options(group)]
    # a user's model file must exist: any existing path stands in for it
    return [
        o + ((f"model.path={CONF / 'config.yaml'}",) if o == ("model=pretrained",) else ())
        for o in out
    ]


def leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if key == "hydra":
                continue
            yield from leaves(v, key) if isinstance(v, dict) else [(key, v)]
    else:
        yield prefix, node


def numeric_leaves() -> dict[str, tuple[str, ...]]:
    """Every key whose value is a number (or a list of numbers), with a composition that has it."""
    found: dict[str, tuple[str, ...]] = {}
    for overrides in compositions():
        cfg = OmegaConf.to_container(compose_config(*overrides), resolve=True)
        for key, value in leaves(cfg):
            items = value if isinstance(value, list) and value else [value]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                found.setdefault(key, overrides)
    return found


NUMERIC = numeric_leaves()


def test_the_walk_covers_the_keys_the_issue_found_unchecked():
    # the walk must reach every group's numbers, each recipe's included
    for key in (
        "seed",
        "train.epochs",
        "train.learning_rate",
        "train.validation_split",
        "train.early_stopping_patience",
        "model.dropout",
        "model.filters",
        "evaluation.batch_size",
        "evaluation.min_agreement",
        "dataset.split_seed",
        "recipe.calibration_samples",
        "recipe.learning_rate_scale",
        "recipe.max_accuracy_drop",
        "recipe.keep_float",
        "model.depth",
        "dataset.maxlen",
    ):
        assert key in NUMERIC, key
    assert len(NUMERIC) >= 40  # 41 when written


@pytest.mark.slow
def test_every_plugin_in_conf_declares_described_options():
    # setup: every _target_ of every shipped option, and the fixed groups
    schemas = {}
    for overrides in compositions():
        cfg = compose_config(*overrides)
        for group in ("dataset", "model", "recipe", "train", "evaluation", "logger"):
            node = OmegaConf.to_container(cfg[group], resolve=False)
            schemas[node.get("_target_", group)] = schema_of(group, node)
    # assert: each option has a description (the README's option tables show it)
    bare = [
        f"{t}.{k}"
        for t, s in schemas.items()
        for k, f in s.model_fields.items()
        if not f.description
    ]
    assert len(schemas) >= 20 and not bare, bare


def test_unknown_keys_are_refused_with_the_closest_valid_key():
    cases = {
        "+recipe.calibraton_samples=10": "recipe.calibraton_samples: unknown key; did you mean recipe.calibration_samples?",
        "+dataset.tarin_size=5": "dataset.tarin_size: unknown key; did you mean dataset.train_size?",
        "+train.epoch=1": "train.epoch: unknown key; did you mean train.epochs?",
        "+evaluation.latency_sample=3": "did you mean evaluation.latency_samples?",
        "+sed=1": "sed: unknown key; did you mean seed?",
    }
    for override, expected in cases.items():
        (line,) = problems(compose_config(override))
        assert expected in line, line
    # a key of another recipe family is unknown to this one (qat has epochs, float16 has not)
    (line,) = problems(compose_config("recipe=float16", "+recipe.epochs=3"))
    assert line.startswith("recipe.epochs: unknown key")


def test_validating_a_config_imports_no_tensorflow():
    # the config checks resolve every plugin's schema: their modules import TF lazily only
    code = (
        "import sys; from runner.config import compose, problems; "
        "[problems(compose([f'recipe={r}'])) for r in ('qat', 'auto_int8', 'int4_mixed')]; "
        "problems(compose(['model=text_lstm', 'dataset=fake_news'])); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tf_keras', 'tensorflow_model_optimization', 'keras')))"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow
def test_the_shipped_configs_are_valid():
    for overrides in compositions():
        assert problems(compose_config(*overrides)) == [], overrides


@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("bad", ["-1", "abc"])
def test_each_numeric_value_is_refused_by_name_with_what_is_allowed(key, bad):
    if bad == "-1" and key in NEGATIVE_OK:
        pytest.skip(f"{key} may be negative")
    # setup
    cfg = compose_config(*NUMERIC[key], f"{key}={bad}")
    # execute
    with pytest.raises(RunnerError) as err:
        validate(cfg)
    # assert: one line naming the key, the value and what is allowed
    lines = str(err.value).splitlines()
    mine = [ln for ln in lines if ln.startswith(f"bad config value: {key}=")]
    assert len(mine) == 1, lines
    assert (f"={bad}:" in mine[0] or f"='{bad}':" in mine[0]) and "expected " in mine[0]


def test_nonsense_in_a_list_and_in_choices_is_refused():
    cases = {
        "model.filters=[8,-2]": "model.filters",
        "train.optimizer=adamm": "one of adadelta",
        "model.recurrent=loop": "one of auto, fused, unrolled",
        "recipe.converter.supported_types=[float17]": "recipe.converter.supported_types",
        "model.depth=21": r"6n\+2",
    }
    for override, expected in cases.items():
        extra = {
            "depth": ("model=resnet",),
            "recurrent": ("model=text_lstm",),
            "supported_types": ("recipe=float16",),
        }
        extra = next((v for k, v in extra.items() if k in override), ())
        with pytest.raises(RunnerError, match=expected):
            validate(compose_config(*extra, override))


def test_interpolated_values_are_checked_resolved():
    # train.seed is ${seed}: a bad top-level seed is named on both keys
    bad = problems(compose_config("seed=-3"))
    assert any(b.startswith("seed=-3") for b in bad) and any("train.seed=-3" in b for b in bad)


def test_a_bad_value_exits_2_with_one_line_and_writes_nothing(tmp_path):
    # setup / execute: the CLI, as a user would type it
    run_dir = tmp_path / "run"
    p = run_cli("train.epochs=-1", f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'c'}")
    # assert
    assert p.returncode == 2
    assert p.stderr.strip() == "error: bad config value: train.epochs=-1: expected an integer >= 1"
    assert "Traceback" not in p.stderr + p.stdout
    assert not run_dir.exists() and not (tmp_path / "c").exists()


def test_a_sweep_with_a_bad_common_value_starts_no_job(tmp_path):
    sweep = tmp_path / "sweep"
    p = run_cli("-m", "recipe=none,float16", "model.dropout=abc", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 2
    assert "model.dropout='abc': expected a number in [0, 1)" in p.stderr
    assert not sweep.exists() and "Traceback" not in p.stderr


def test_the_pipeline_checks_at_its_door_before_loading_anything(tmp_path):
    cfg = compose_config("evaluation.batch_size=0", "dataset=fake_news", "dataset.path=/nope.csv")
    with pytest.raises(RunnerError, match=r"evaluation.batch_size=0: expected an integer >= 1"):
        from runner.pipeline import run

        run(cfg, tmp_path)
    assert not any(Path(tmp_path).iterdir())


@pytest.mark.slow
def test_a_swept_model_path_is_checked_per_job_not_as_null(tmp_path):
    # setup: two model files a sweep names, neither existing (issue #23, case 10)
    sweep = tmp_path / "sweep"
    a, b = tmp_path / "a.h5", tmp_path / "b.keras"
    # execute
    p = run_cli("-m", "model=pretrained", f"model.path={a},{b}", f"hydra.sweep.dir={sweep}")
    # assert: each job's own file is named (not the unswept null), before any job runs: exit 2
    assert "model.path=null" not in p.stderr
    assert p.returncode == 2, p.stderr[-1500:]
    lines = p.stderr.strip().splitlines()
    assert (
        len(lines) == 2 and f"{a} does not exist" in lines[0] and f"{b} does not exist" in lines[1]
    )
    assert not list(sweep.glob("*/results.json"))  # no job ran
