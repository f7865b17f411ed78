"""The README's option tables are generated from the schemas: stale tables fail here."""

from __future__ import annotations

from runner.docs import README, readme_section, tables


def test_the_readme_option_tables_match_the_schemas():
    section = readme_section(README.read_text(encoding="utf-8"))
    assert section, "the README lost its option-table markers"
    assert section == tables(), "the option tables are stale: run python -m runner.docs"
    # every key a user can set is in it, e.g. one of each group
    for key in ("`recipe.budget`", "`model.depth`", "`dataset.segment`", "`train.epochs`"):
        assert key in section
