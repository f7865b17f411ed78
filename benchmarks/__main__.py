"""``python -m benchmarks [--out PATH] [--quick] [--only SECTION]``: speed, size, quality and
memory, in one run.

Every figure is a ratio measured inside this one run (these machines are noisy), written as one
JSON object (default ``benchmarks/results/latest.json``) and printed as tables. Each section is
one module with ``measure(tmp, quick) -> dict`` and ``render(result)``; :data:`SECTIONS` is the
one registry both the full run and ``--only`` use, in the order they run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import (
    compression,
    core,
    data,
    families,
    hard,
    int4,
    recovery,
    routes,
    scale,
    search,
    select,
    targets,
)
from benchmarks.common import ROOT, WEIBO, machine

# name -> (module, what it measures, runs in the full run when)
SECTIONS = {
    "core": (core, "sweep cost, evaluator overhead, quality per recipe, peak memory"),
    "int4": (int4, "the ai-edge-quantizer recipes"),
    "hard": (hard, "where int8 loses, and QAT over seeds"),
    "data": (data, "decoding and memory of user image folders"),
    "families": (families, "keras.applications families: full int8 vs QAT vs auto_int8"),
    "routes": (routes, "both conversion routes of the Weibo LSTM (needs the Weibo set)"),
    "select": (select, "latency alone vs beside a parallel job, and the verdict"),
    "targets": (targets, "the sweep on TFLite Micro and an Ethos-U NPU: cost and findings"),
    "recovery": (
        recovery,
        "share of full int8's loss each recovery recipe wins back (EfficientNetB0 ...)",
    ),
    "scale": (
        scale,
        "MobileNetV2 224x224 from a .keras file: per-job overhead, peak RSS, reference reuse; "
        "10,000-image evaluation against raw LiteRT",
    ),
    "search": (
        search,
        "hydra/sweeper=search against +experiment=all_recipes, and a sparsity search against a grid",
    ),
    "compression": (
        compression,
        "pruning, clustering, PQAT/CQAT/PCQAT, int4 QAT: gzip and raw size",
    ),
}


# sections too long for every run (44 min for compression, ~1 h for recovery, ~8 min for
# scale), or that need an
# extra (targets: pip install -e ".[targets]"): --only NAME
ONLY = ("compression", "recovery", "targets", "scale", "search")


def wanted(name: str, quick: bool) -> bool:
    """The full run's sections: routes only on the full-size run with the Weibo set; the long
    sections of :data:`ONLY` only when asked for."""
    if name in ONLY:
        return False
    return name != "routes" or (WEIBO.exists() and not quick)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest.json"))
    ap.add_argument("--quick", action="store_true", help="tiny data and fewer repeats (< 5 min)")
    ap.add_argument(
        "--only",
        choices=list(SECTIONS),
        help="run one section alone, written beside --out as SECTION.json: "
        + "; ".join(f"{k} = {v[1]}" for k, v in SECTIONS.items()),
    )
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    names = [args.only] if args.only else [n for n in SECTIONS if wanted(n, args.quick)]
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    command += f" --only {args.only}" if args.only else ""
    result: dict = {"machine": machine(), "quick": args.quick, "command": command}
    with tempfile.TemporaryDirectory(prefix="tfq-bench-") as tmpdir:
        for i, name in enumerate(names, 1):
            module, what = SECTIONS[name]
            print(f"{i}/{len(names)} {name}: {what} ...", file=sys.stderr)
            result.update(module.measure(Path(tmpdir), args.quick))
    result["benchmark_seconds"] = time.perf_counter() - t_start
    out = Path(args.out)
    out = out.with_name(f"{args.only}.json") if args.only else out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name in names:
        SECTIONS[name][0].render(result)
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
