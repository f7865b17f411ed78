"""The option reference is generated from the schemas and conf/: a stale page fails here."""

from __future__ import annotations

import re

import pytest

from runner.docs import OPTIONS, tables


@pytest.mark.slow
def test_the_option_page_matches_the_schemas_and_the_yaml_files():
    page = OPTIONS.read_text(encoding="utf-8")
    assert page == tables(), "docs/options.md is stale: run python -m runner.docs"
    # every key a user can set is in it, e.g. one of each group
    for key in ("`recipe.budget`", "`model.depth`", "`dataset.segment`", "`train.epochs`"):
        assert key in page
    # the defaults shown are the ones a default run uses
    assert re.search(r"\| `train.epochs` \| `40` \|", page)
    assert re.search(r"\| `model.filters` \| `\[32, 64\]` \|", page)
    assert "- `train=text` sets `train.epochs=20`" in page


def test_every_page_the_readme_links_to_exists_and_the_readme_stays_a_landing_page():
    from runner.docs import OPTIONS

    root = OPTIONS.parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10
    missing = [link for link in local if not (root / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
    assert len(readme.splitlines()) <= 300


def test_the_readmes_sweep_table_is_the_main_jobs_recipes_as_generated():
    from runner.config import sweep_values
    from runner.docs import README, TABLE_END, TABLE_START

    text = README.read_text(encoding="utf-8")
    block = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    shown = {ln.split("|")[1].strip() for ln in block.splitlines() if ln.startswith("| recipe=")}
    assert shown == {f"recipe={r}" for r in sweep_values("core_recipes")}, (
        "the README's table is not a run of +experiment=core_recipes: run it and "
        "python -m runner.docs --readme-table <its sweep folder>"
    )
    assert "The verdict it ended with: ship `" in block


def _documented(group: str) -> dict[str, dict[str, str]]:
    """{option file: {key: value}} as docs/options.md tells it: its family table's defaults,
    then what the file's "sets" line changes."""
    import re

    from runner.docs import OPTIONS

    text = OPTIONS.read_text(encoding="utf-8")
    out: dict[str, dict[str, str]] = {}
    for section in text.split("\n### ")[1:]:
        files = re.findall(rf"`{group}=(\w+)`", section.split("\n\n", 2)[1])
        table = dict(re.findall(r"^\| `([^`]+)` \| `([^`]*)` \|", section, re.M))
        for f in files:
            values = {k: v for k, v in table.items() if k.startswith(f"{group}.")}
            sets = re.search(rf"^- `{group}={f}` sets (.*)$", section, re.M)
            for k, v in re.findall(r"`([\w.\[\]]+)=([^`]*)`", sets.group(1) if sets else ""):
                values[k] = v
            out[f] = values
    return out


@pytest.mark.slow  # trains or converts real models: over 5 s on 2 cores
def test_the_option_tables_equal_every_recipes_composed_config():
    # setup
    from omegaconf import OmegaConf

    from runner.config import CONF_DIR, compose
    from runner.docs import _leaves, _plain, _plain_default

    documented = _documented("recipe")
    files = sorted(f.stem for f in (CONF_DIR / "recipe").glob("*.yaml"))
    assert set(documented) == set(files)
    for f in files:
        # execute: the config a run of this recipe composes (what --cfg job prints)
        node = OmegaConf.to_container(compose([f"recipe={f}"]).recipe, resolve=False)
        composed = {f"recipe.{k}": v for k, v in _leaves(node) if not k.startswith("_")}
        # assert: every key the table documents shows the composed value
        for key, shown in documented[f].items():
            if key not in composed or key.split(".")[1] in ("name", "description", "use_case"):
                continue
            value = composed[key]
            assert shown in (_plain_default(value), _plain(value)), (f, key, shown, value)
