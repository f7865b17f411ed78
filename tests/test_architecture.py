"""The layout holds: import-linter's contracts (pyproject.toml) and no probing of recipes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    # execute: the maintained tool, on the contracts declared in pyproject.toml
    p = lint_imports()
    # assert: every contract kept (layers, recipe families, no TensorFlow in the light modules)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert re.search(r"Contracts: 5 kept, 0 broken", p.stdout), p.stdout[-1000:]


def test_the_layers_contract_names_every_module_and_hides_no_import():
    # setup: the contract as written
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = conf["contracts"][0]["layers"]
    named = {n.strip() for layer in layers for n in re.split(r"[|:]", layer)}
    modules = {f"runner.{p.stem}" for p in (ROOT / "runner").glob("*.py") if p.stem != "__init__"}
    packages = {f"runner.{p.parent.name}" for p in (ROOT / "runner").glob("*/__init__.py")}
    # assert: each module and package on exactly one layer, nothing ignored, type hints counted
    assert named == modules | packages, (modules | packages) ^ named
    assert all(":" not in layer for layer in layers)  # siblings never import each other
    assert not conf.get("exclude_type_checking_imports", False)
    assert all("ignore_imports" not in c for c in conf["contracts"])


def test_the_pipeline_calls_recipes_through_the_protocol_only():
    source = (ROOT / "runner" / "pipeline.py").read_text()
    assert not re.search(r"\b(getattr|hasattr)\(", source)


def test_exit_codes_are_decided_at_the_command_line_edge_only():
    # runner/cli.py owns the policy; standalone tools (python -m runner.report / runner.docs)
    # exit from their own main() only
    offenders = []
    for path in (ROOT / "runner").rglob("*.py"):
        if path.name == "cli.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "sys.exit(" in line and "main()" not in line and path.name != "docs.py":
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, offenders


def test_modules_and_functions_stay_small():
    # no module over 350 lines, no function body over 60 (its docstring not counted), and
    # pipeline.run a short chain of stages
    import ast

    big = []
    for path in (ROOT / "runner").rglob("*.py"):
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > 350:
            big.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                length -= first.end_lineno - first.lineno + 1
            if length > 60:
                big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert not big, big
    source = (ROOT / "runner" / "pipeline.py").read_text()
    run = next(
        n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "run"
    )
    assert run.end_lineno - run.lineno + 1 <= 45
