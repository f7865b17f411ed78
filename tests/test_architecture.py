"""The layout holds: import-linter's contracts (pyproject.toml) and no probing of recipes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    # execute: the maintained tool, on the contracts declared in pyproject.toml
    p = lint_imports()
    # assert: every contract kept (layers, recipe families, no TensorFlow in the light modules)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert re.search(r"Contracts: 4 kept, 0 broken", p.stdout), p.stdout[-1000:]


def test_the_pipeline_calls_recipes_through_the_protocol_only():
    source = (ROOT / "runner" / "pipeline.py").read_text()
    assert not re.search(r"\b(getattr|hasattr)\(", source)
