"""Shared pytest fixtures (helpers the tests import are in helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import TINY, compose_config
from omegaconf import DictConfig


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One baseline cache for the session: the tiny baseline is trained once and then hit."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(shared_cache) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        return compose_config(f"cache_dir={shared_cache}", *TINY, *overrides)

    return make
