"""A recipe from a package outside the repository: one module plus one YAML, no project edits.

The README's "Add a recipe" example, made real: a user's package on PYTHONPATH declares a recipe
class with its own schema, a YAML in a folder on Hydra's search path names it by ``_target_``,
and a sweep over its option runs it, with typos refused by its schema.
"""

from __future__ import annotations

import csv
import textwrap

import pytest
from helpers import ROOT, TINY, run_cli

pytestmark = pytest.mark.slow

EXTENDING = ROOT / "docs" / "extending.md"


def _block(lang: str, first_line: str) -> str:
    """The fenced ``lang`` block of docs/extending.md that starts with ``first_line``."""
    text = EXTENDING.read_text(encoding="utf-8")
    for block in text.split(f"```{lang}\n")[1:]:
        body = block.split("```", 1)[0]
        if body.startswith(first_line):
            return body
    raise AssertionError(f"docs/extending.md has no {lang} block starting {first_line!r}")


# The page's own example, run as it is written (no "..." to fill in)
MODULE = _block("python", "# my_recipes/clip.py")
YAML = _block("yaml", "# conf/recipe/clip.yaml")


@pytest.fixture
def user_plugin(tmp_path):
    pkg = tmp_path / "site" / "my_recipes"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "clip.py").write_text(textwrap.dedent(MODULE))
    conf = tmp_path / "my_conf" / "recipe"
    conf.mkdir(parents=True)
    (conf / "clip.yaml").write_text(YAML)
    (conf / "clip_typo.yaml").write_text(YAML.replace("limit: 0.5", "limt: 0.5"))
    return tmp_path / "site", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"


def test_an_outside_recipe_runs_in_a_sweep_over_its_own_option(user_plugin, tmp_path):
    # setup: the user's package on PYTHONPATH, their YAML on the search path
    site, searchpath = user_plugin
    sweep = tmp_path / "sweep"
    # execute: a sweep over the outside recipe's own option
    p = run_cli(
        "-m",
        searchpath,
        "recipe=clip",
        "recipe.limit=0.05,10",
        *TINY,
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        extra_pythonpath=str(site),
        plugins="my_recipes",
    )
    # assert: both jobs ran it and scored its file like any other row
    assert p.returncode == 0, p.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    clip = {r["varies"]: r for r in rows if r["recipe"] == "clip"}
    assert set(clip) == {"recipe.limit=0.05", "recipe.limit=10"}, rows
    assert all(r["status"] == "ok" and r["role"] == "recipe" for r in clip.values())
    loose, tight = clip["recipe.limit=10"], clip["recipe.limit=0.05"]
    assert float(loose["compression"]) > 2.5  # int8 weights of a float32 reference
    assert float(loose["agreement"]) >= 0.95  # clipping at 10 changes no trained weight
    assert loose["sha256"] != tight["sha256"]  # the option reached the recipe


def test_a_typo_in_a_users_yaml_or_command_line_names_the_closest_key(user_plugin, tmp_path):
    site, searchpath = user_plugin
    for args, line in (
        (("recipe=clip_typo",), "recipe.limt: unknown key; did you mean recipe.limit?"),
        (
            ("recipe=clip", "+recipe.limitt=2"),
            "recipe.limitt: unknown key; did you mean recipe.limit?",
        ),
        (("recipe=clip", "recipe.limit=-1"), "recipe.limit=-1: expected a number > 0"),
    ):
        run_dir = tmp_path / "run"
        p = run_cli(
            searchpath,
            *args,
            f"hydra.run.dir={run_dir}",
            extra_pythonpath=str(site),
            plugins="my_recipes",
        )
        assert p.returncode == 2, p.stderr[-1000:]
        assert p.stderr.strip() == f"error: bad config value: {line}"
        assert not run_dir.exists()
