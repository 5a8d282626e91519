#!/usr/bin/env python3
"""Measured against predicted iteration time, and ca-partial's speedup over baseline, with real
node processes on this host.

For each scenario it runs `python -m skippipe run` for baseline and ca-partial, takes the median
iteration time (scenario seconds, iteration 0 excluded as warm-up) and puts it beside the
simulator's prediction. geo-distributed's 500M model cannot run 20 times on a CPU box, so its
nodes run a stand-in model (settings/tiny.toml's dimensions, the scenario's 24 layers) while the
emulation keeps the scenario's compute times and 32 MiB messages, time-scaled to fit.

    .venv/bin/python -m bench.runtime_bench                 # tiny and geo-distributed
    .venv/bin/python -m bench.runtime_bench --only tiny
    .venv/bin/python -m bench.runtime_bench --only geo-distributed --variants 1f1b dualpipev
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.runs import skippipe
from skippipe.util.ports import free_port_range

ROOT = Path(__file__).resolve().parents[1]

CASES = {  # name: (settings, nodes, time scale, iterations, extra run arguments)
    "tiny": ("settings/tiny.toml", 6, 4.0, 6, []),
    "geo-distributed": (
        "settings/geo-distributed.toml",
        20,
        0.05,
        4,
        ["--stand-in-model", "settings/tiny.toml"],
    ),
}
VARIANTS = ("baseline", "ca-partial")


def run_case(name: str, variant: str, out: Path, port: int) -> dict:
    settings, n, scale, iterations, extra = CASES[name]
    runs = out / f"{name}-{variant}"
    skippipe(
        [
            "run",
            "0",
            str(n),
            variant,
            "0",
            "--scenario",
            settings,
            "--iterations",
            str(iterations),
            "--time-scale",
            str(scale),
            "--base-port",
            str(port),
            "--runs",
            str(runs),
            "--peer-timeout",
            "60",
            *extra,
        ],
        f"{name} {variant}",
    )
    rows = json.loads(next(runs.iterdir()).joinpath("iterations.json").read_text())
    steady = rows[1:] or rows
    return {
        "scenario": name,
        "variant": variant,
        "time_scale": scale,
        "iterations": len(rows),
        "measured_s": statistics.median(r["measured_s"] for r in steady),
        "predicted_s": rows[0]["predicted_s"],
        "loss_first": rows[0]["loss"],
        "loss_last": rows[-1]["loss"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(CASES), action="append", help="run only these scenarios")
    ap.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    ap.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        metavar="V",
        help=f"variants to run (default: {' '.join(VARIANTS)}; the speedup table needs both)",
    )
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="skippipe-bench-"))
    results = []
    for name in args.only or list(CASES):
        for variant in args.variants:
            results.append(run_case(name, variant, out, free_port_range(CASES[name][1])))
    print("\n| scenario | variant | time scale | measured s/iter | predicted s/iter | measured / predicted |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['scenario']} | {r['variant']} | {r['time_scale']:g} | {r['measured_s']:.2f} | "
            f"{r['predicted_s']:.2f} | {r['measured_s'] / r['predicted_s']:.2f} |"
        )
    (out / "runtime_bench.json").write_text(json.dumps(results, indent=1))
    if not set(VARIANTS) <= set(args.variants):
        print(f"\nraw results: {out / 'runtime_bench.json'}")
        return 0
    print("\n| scenario | speedup ca-partial over baseline, measured | simulated |")
    print("|---|---|---|")
    for name in args.only or list(CASES):
        b, c = (next(r for r in results if r["scenario"] == name and r["variant"] == v) for v in VARIANTS)
        print(
            f"| {name} | {b['measured_s'] / c['measured_s']:.2f}x | {b['predicted_s'] / c['predicted_s']:.2f}x |"
        )
    (out / "runtime_bench.json").write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {out / 'runtime_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
