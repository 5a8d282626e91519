#!/usr/bin/env python3
"""Each stage's gradient averaging measured in emulated runs against the cost model
(Costs.averaging_s: a ring all-reduce under the link rule the emulation applies;
tests/test_averaging.py checks it against a ring over the emulated links themselves).

For each scenario it plans ca-partial (one worker, a fixed seed and time limit: the same plan
every time), runs `python -m skippipe run` with link and compute emulation for a few
iterations and reads the nodes' AVG events (runtime/launch/report.py). Per stage, over the iterations
after the first:
  measured   from the stage's last node starting to average until its last node is done,
             in scenario seconds (as the simulator counts it)
  first done the same until its first node is done (below 1: a node left averaging early)
geo-distributed runs 20 processes with a stand-in model (settings/tiny.toml's dimensions) while
the emulation keeps the scenario's times and bytes. The runtime's real exchange of the
stand-in's gradients on loopback is not scaled, so it weighs 1 / time scale in scenario time:
the time scales below keep it small against the modelled averaging.

    .venv/bin/python -m bench.averaging_bench                # tiny and geo-distributed
    .venv/bin/python -m bench.averaging_bench --only tiny --out /tmp/avg
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.runs import skippipe
from skippipe.runtime.launch.report import averaging_by_stage, averaging_windows
from skippipe.runtime.node.runconfig import load_config
from skippipe.scenario import load_scenario
from skippipe.util.ports import free_port_range

ROOT = Path(__file__).resolve().parents[1]

CASES = {  # name: (settings, nodes, time scale, iterations, extra run arguments)
    "tiny": ("settings/tiny.toml", 6, 20.0, 4, []),
    "geo-distributed": (
        "settings/geo-distributed.toml",
        20,
        0.2,
        3,
        ["--stand-in-model", "settings/tiny.toml"],
    ),
}
VARIANT = "ca-partial"
PLAN_LIMIT_S = "10"


def run_case(name: str, out: Path) -> list[dict]:
    settings, n, scale, iterations, extra = CASES[name]
    sched_path, runs = out / f"{name}.json", out / name
    skippipe(
        [
            "schedule",
            settings,
            "--out",
            str(sched_path),
            "--variants",
            VARIANT,
            "--seed",
            "0",
            "--time-limit",
            PLAN_LIMIT_S,
            "--workers",
            "1",
            "--quiet",
        ],
        f"{name}: planning",
    )
    skippipe(
        [
            "run",
            "0",
            str(n),
            VARIANT,
            "0",
            "--scenario",
            settings,
            "--schedule",
            str(sched_path),
            "--iterations",
            str(iterations),
            "--time-scale",
            str(scale),
            "--runs",
            str(runs),
            "--base-port",
            str(free_port_range(n)),
            "--peer-timeout",
            "60",
            *extra,
        ],
        f"{name}: the run",
    )
    cfg = load_config(next(runs.iterdir()) / "config.json")
    return [
        dict(r, scenario=name, time_scale=scale)
        for r in averaging_by_stage(averaging_windows(cfg, load_scenario(settings)))
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=list(CASES), action="append", help="run only these scenarios")
    ap.add_argument("--out", default=None, help="folder for schedules and runs (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="skippipe-avg-"))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in args.only or list(CASES):
        rows += run_case(name, out)
        (out / "averaging_bench.json").write_text(json.dumps(rows, indent=1))  # kept if a later case fails
    print(
        "\n| scenario | time scale | stage | nodes | measured s | modelled s | measured / modelled "
        "| first done / modelled |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['time_scale']:g} | {r['stage']} | {r['nodes']} | {r['measured_s']:.3f} "
            f"| {r['modelled_s']:.3f} | {r['ratio']:.2f} | {r['earliest_ratio']:.2f} |"
        )
    print(f"\nraw results: {out / 'averaging_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
