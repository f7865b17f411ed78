"""``python -m benchmarks.faults``: a hostile but realistic user, case by case; prints N/N handled.

Each case runs ``python -m runner`` as a user would (kill -9 at every stage, corrupt cache files,
bad inputs, Ctrl-C, a full disk when the machine lets us mount one) and checks the outcome the
README promises: a clear one-line error with exit 2 and nothing written, or a correct result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT

TINY = [
    "dataset.train_size=400",
    "train.epochs=3",
    "train.early_stopping_patience=0",
    "model.filters=[8,16]",
    "evaluation.latency_samples=2",
    "evaluation.latency_warmup=1",
    "evaluation.progress=false",
]
CASES: list[tuple[str, Callable[[Path], str | None]]] = []  # (name, check -> None or what failed)


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn

    return register


def cli(*args: str, cwd: Path = ROOT, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def one_line_exit_2(p: subprocess.CompletedProcess, needle: str, run_dir: Path) -> str | None:
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    if p.returncode != 2:
        return f"exit {p.returncode}: {p.stderr[-300:]}"
    if "Traceback" in p.stderr or len(errors) != 1 or needle not in errors[0]:
        return f"not one clear line: {errors or p.stderr[-300:]}"
    if run_dir.exists() and any(run_dir.rglob("comparison.csv")):
        return "a table was written"
    return None


def rows(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "results.json").read_text())["rows"]


# --------------------------------------------------------------------------- kill -9 at every stage
STAGES = {
    "data": "data: digits",
    "training": "baseline cache miss",
    "storing the baseline": "trained small_cnn",
    "converting": "recipe none: wrote",
    "scoring": "recipe full_integer: wrote",
}


def _kill_at(tmp: Path, stage: str, marker: str) -> str | None:
    cache, run_dir = tmp / "cache", tmp / "run"
    args = [*TINY, "recipe=full_integer", f"cache_dir={cache}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in p.stdout:  # type: ignore[union-attr]
        if marker in line:
            p.kill()
            break
    p.wait()
    killed = run_dir / "results.json"
    if killed.exists() and json.loads(killed.read_text())["status"] == "ok":
        return f"killed while {stage}: results.json says ok"
    again = cli(*args)
    if again.returncode != 0 or not all(r["status"] == "ok" for r in rows(run_dir)):
        return f"the run after a kill while {stage} failed: {again.stderr[-300:]}"
    if list(cache.glob(".tmp-*")):
        return f"a temp folder of the kill while {stage} stayed"
    return None


for _stage, _marker in STAGES.items():
    case(f"kill -9 while {_stage}")(
        lambda tmp, s=_stage, m=_marker: _kill_at(tmp, s, m)  # noqa: B023
    )


# --------------------------------------------------------------------------- corrupt cache files
def _cached_run(tmp: Path, *extra: str) -> tuple[Path, list[str]]:
    cache = tmp / "cache"
    args = [*TINY, f"cache_dir={cache}", *extra]
    p = cli(*args, f"hydra.run.dir={tmp / 'first'}")
    assert p.returncode == 0, p.stderr[-500:]
    return cache, args


@case("a truncated baseline model is rebuilt")
def _(tmp: Path) -> str | None:
    cache, args = _cached_run(tmp, "recipe=none")
    (model,) = cache.glob("*/model.h5")
    model.write_bytes(model.read_bytes()[:1000])
    p = cli(*args, f"hydra.run.dir={tmp / 'run'}")
    r = rows(tmp / "run")
    return None if p.returncode == 0 and r[0]["baseline_cache"] == "miss" else p.stderr[-300:]


@case("a truncated or random cached conversion is converted again")
def _(tmp: Path) -> str | None:
    cache, args = _cached_run(tmp, "recipe=float16")
    for damage in (lambda b: b[:100], lambda b: os.urandom(len(b))):
        (conv,) = cache.glob("*/float16-*.tflite")
        conv.write_bytes(damage(conv.read_bytes()))
        p = cli(*args, f"hydra.run.dir={tmp / 'run'}")
        row = next(r for r in rows(tmp / "run") if r["artifact"] == "float16.tflite")
        if p.returncode != 0 or row["status"] != "ok" or abs(row["accuracy_delta"]) > 0.01:
            return f"a damaged conversion was served: {row}"
    return None


# --------------------------------------------------------------------------- bad inputs
def _bad(args: list[str], needle: str, cwd: Path = ROOT):
    def check(tmp: Path) -> str | None:
        run_dir = tmp / "run"
        p = cli(
            *[a.format(tmp=tmp) for a in args], f"hydra.run.dir={run_dir}", f"cache_dir={tmp}/c"
        )
        return one_line_exit_2(p, needle, run_dir)

    return check


for _args, _needle in (
    (["+foo=1"], "foo: unknown key"),
    (["+dataset.tarin_size=5"], "did you mean dataset.train_size?"),
    (["+train.epoch=1"], "did you mean train.epochs?"),
    (["+recipe.calibraton_samples=10"], "did you mean recipe.calibration_samples?"),
    (["train.epochs=-1"], "train.epochs=-1: expected an integer >= 1"),
    (["model.dropout=abc"], "expected a number in [0, 1)"),
    (["model=pretrained", "model.path={tmp}/nope.h5"], "does not exist"),
    (["dataset=arrays", "dataset.path={tmp}/nope.npz"], "does not exist"),
):
    case(f"bad input: {' '.join(_args)}")(_bad(_args, _needle))


def _arrays_case(name: str, make: Callable[[Path], Path], needle: str):
    def check(tmp: Path) -> str | None:
        path = make(tmp)
        run_dir = tmp / "run"
        p = cli(
            "dataset=arrays",
            f"dataset.path={path}",
            f"hydra.run.dir={run_dir}",
            f"cache_dir={tmp}/c",
        )
        return one_line_exit_2(p, needle, run_dir)

    case(name)(check)


def _npz(tmp: Path, x: np.ndarray, y: np.ndarray) -> Path:
    np.savez(tmp / "d.npz", x=x, y=y)
    return tmp / "d.npz"


_rng = np.random.default_rng(0)
_arrays_case(
    "arrays: a .npy renamed .npz",
    lambda t: (np.save(t / "a.npy", np.zeros((4, 3))), (t / "a.npy").rename(t / "a.npz"))[1],
    "holds one array",
)
_arrays_case(
    "arrays: NaN inputs",
    lambda t: _npz(
        t, np.where(_rng.random((60, 5)) < 0.05, np.nan, _rng.random((60, 5))), np.arange(60) % 3
    ),
    "hold NaN or infinite values",
)
_arrays_case(
    "arrays: a single class",
    lambda t: _npz(t, _rng.random((60, 5)), np.zeros(60, int)),
    "single class",
)
_arrays_case(
    "arrays: one sample per class",
    lambda t: _npz(t, _rng.random((10, 5)), np.arange(10)),
    "every class",
)


@case("a regression model is refused")
def _(tmp: Path) -> str | None:
    code = (
        "import runner, tf_keras as k; i=k.Input((8,8,1)); "
        "k.Model(i, k.layers.Dense(1)(k.layers.Flatten()(i))).save(r'%s')" % (tmp / "reg.h5")
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    x = _rng.integers(0, 256, (60, 8, 8, 1)).astype(np.uint8)  # two classes of 8x8 images
    data = _npz(tmp, x, np.arange(60) % 2)
    return _bad(
        [
            "model=pretrained",
            f"model.path={tmp / 'reg.h5'}",
            "dataset=arrays",
            f"dataset.path={data}",
        ],
        "a regression",
    )(tmp)


@case("a swept model.path is checked per job")
def _(tmp: Path) -> str | None:
    p = cli(
        "-m", "model=pretrained", f"model.path={tmp}/a.h5,{tmp}/b.h5", f"hydra.sweep.dir={tmp}/s"
    )
    ok = (
        p.returncode == 1 and "2 of 2 jobs failed" in p.stderr and "model.path=null" not in p.stderr
    )
    return None if ok else p.stderr[-300:]


@case("Ctrl-C in a sweep writes the finished jobs' table")
def _(tmp: Path) -> str | None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = tmp / "s"
    args = [
        "-m",
        *TINY,
        f"cache_dir={tmp}/c",
        f"hydra.sweep.dir={sweep}",
        "recipe=none,qat,qat_mixed",
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (sweep / "1").is_dir():
        time.sleep(0.2)
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    ok = p.returncode == 130 and "Traceback" not in err and (sweep / "comparison.csv").is_file()
    return None if ok else f"exit {p.returncode}: {err[-300:]}"


@case("results and the cache follow the umask")
def _(tmp: Path) -> str | None:
    old = os.umask(0o002)
    try:
        cli(*TINY, "recipe=none", f"cache_dir={tmp}/c", f"hydra.run.dir={tmp}/run")
    finally:
        os.umask(old)
    modes = {oct((tmp / "run" / "results.json").stat().st_mode & 0o777)}
    modes |= {oct(e.stat().st_mode & 0o777) for e in (tmp / "c").iterdir() if e.is_dir()}
    return None if modes <= {"0o664", "0o775"} else f"modes {modes}"


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    """A tmpfs mounted at ``where`` for the block; None where the machine allows no mount."""
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)]
    if subprocess.run(mount, capture_output=True).returncode:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


NO_MOUNT = "SKIP: this machine does not allow mounting a tmpfs"


@case("a full disk (tmpfs) keeps the training")
def _(tmp: Path) -> str | None:
    with tmpfs(tmp / "full", "size=64k") as mnt:
        if mnt is None:
            return NO_MOUNT
        p = cli(*TINY, "recipe=none", f"cache_dir={mnt}/c", f"hydra.run.dir={tmp}/run")
        ok = p.returncode == 0 and rows(tmp / "run")[0]["baseline_cache"] == "uncached"
        return None if ok else p.stderr[-300:]


@case("a full run folder (tmpfs) is one line with the free space")
def _(tmp: Path) -> str | None:
    with tmpfs(tmp / "full", "size=96k") as mnt:
        if mnt is None:
            return NO_MOUNT
        p = cli(*TINY, "recipe=none", f"cache_dir={tmp}/c", f"hydra.run.dir={mnt}/run")
        return one_line_exit_2(p, "MB free", tmp / "nothing")


@case("a read-only run folder is one line")
def _(tmp: Path) -> str | None:
    with tmpfs(tmp / "ro", "ro,size=64k") as mnt:
        if mnt is None:
            return NO_MOUNT
        p = cli(*TINY, "recipe=none", f"cache_dir={tmp}/c", f"hydra.run.dir={mnt}/run")
        return one_line_exit_2(p, "cannot write in", tmp / "nothing")


@case("image folder: a symlink loop and a dangling link")
def _(tmp: Path) -> str | None:
    from PIL import Image

    root = tmp / "imgs"
    for cls, value in (("dark", 30), ("light", 220)):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            Image.new("L", (8, 8), value + i).save(root / cls / f"{i}.png")
    os.symlink(root / "dark", root / "dark" / "loop")
    os.symlink(tmp / "nowhere.png", root / "light" / "gone.png")
    run_dir = tmp / "run"
    p = cli(
        *TINY[1:],
        "dataset=image_folder",
        f"dataset.path={root}",
        "dataset.image_size=8",
        "dataset.color_mode=grayscale",
        "recipe=none",
        f"cache_dir={tmp}/c",
        f"hydra.run.dir={run_dir}",
    )
    if p.returncode:
        return p.stderr[-300:]
    import re

    found = re.search(r"(\d+) train / (\d+) test", p.stdout + p.stderr)
    n = int(found[1]) + int(found[2]) if found else -1
    ok = n == 24 and "symlink to nothing" in p.stdout + p.stderr
    return None if ok else f"{n} images listed (24 real ones)"


@case("labels 1..3: a warning, the run still ok")
def _(tmp: Path) -> str | None:
    x = _rng.integers(0, 256, (90, 8, 8, 1)).astype(np.uint8)
    path = _npz(tmp, x, 1 + np.arange(90) % 3)
    run_dir = tmp / "run"
    p = cli(
        *TINY[1:],
        "dataset=arrays",
        f"dataset.path={path}",
        "recipe=none",
        f"cache_dir={tmp}/c",
        f"hydra.run.dir={run_dir}",
    )
    ok = p.returncode == 0 and "1-based" in p.stderr
    return None if ok else f"exit {p.returncode}: {p.stderr[-300:]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__)
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    chosen = [(n, f) for n, f in CASES if args.k in n]
    handled, skipped = 0, 0
    for name, check in chosen:
        with tempfile.TemporaryDirectory(prefix="tfq-fault-") as tmp:
            t0 = time.perf_counter()
            try:
                why = check(Path(tmp))
            except Exception as e:  # noqa: BLE001 - a case that crashes is not handled
                why = f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
        if why and why.startswith("SKIP"):
            skipped += 1
            print(f"skip     {name} ({why[6:]})")
        elif why:
            print(f"FAILED   {name} ({dt:.0f}s): {why}")
        else:
            handled += 1
            print(f"handled  {name} ({dt:.0f}s)")
    total = len(chosen) - skipped
    print(f"\n{handled}/{total} handled" + (f" ({skipped} skipped)" if skipped else ""))
    return 0 if handled == total else 1


if __name__ == "__main__":
    sys.exit(main())
