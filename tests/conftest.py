"""Shared pytest fixtures (helpers the tests import are in helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import TINY, compose_config
from omegaconf import DictConfig


@pytest.fixture(scope="session", autouse=True)
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the session: the tiny baseline is trained once and then hit, and a config
    composed without a cache_dir uses it too (never the checkout's outputs/cache)."""
    import helpers

    folder = tmp_path_factory.mktemp("cache")
    helpers.DEFAULT_CACHE[:] = [folder]
    return folder


@pytest.fixture
def tiny_cfg(shared_cache) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        return compose_config(f"cache_dir={shared_cache}", *TINY, *overrides)

    return make
