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
