#!/usr/bin/env python3
"""Failure experiment: train with and without a failure plan, report what failed when, which
microbatches were re-routed or lost, iteration times and losses side by side (with a plot), then
perplexity through the live nodes with 0-50% of the nodes failed.

    .venv/bin/python -m bench.failure_experiment                       # tiny, default plan (by role)
    .venv/bin/python -m bench.failure_experiment --iterations 30 \\
        --fail node=3,iteration=4,phase=backward,how=crash --fail node=5,iteration=8,how=hang

Writes report.md, report.json and failures.png into --out (default runs/failure-experiment/).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from bench.runs import ROOT, skippipe
from skippipe.plan_options import DEFAULT_TIME_LIMIT_S
from skippipe.runtime.launch.infer import distributed_perplexity, local_perplexity
from skippipe.runtime.launch.prepare import ensure_schedule
from skippipe.scenario import load_scenario
from skippipe.schedule_file import load_schedule
from skippipe.timeline import read_jsonl
from skippipe.util.ports import free_port_range

FAILED_FRACTIONS = (0.0, 0.17, 0.34, 0.5)  # of all nodes, data nodes excepted where possible


def default_plan(allocation, iterations: int) -> list[str]:
    """One failure of each kind a run survives, chosen by role in the allocation: a node of a
    stage with peers crashes (its microbatches are re-routed), then a data node crashes (its
    microbatches are lost). A stage's only node is left alone: losing it stops the run by the
    quorum rule (docs/design.md), which tests/test_quorum.py covers."""
    shared = next(nodes[-1] for nodes in allocation[1:] if len(nodes) > 1)
    at = [max(1, iterations * f // 4) for f in (1, 3)]
    return [
        f"node={shared},iteration={at[0]},phase=backward,how=crash",
        f"node={allocation[0][-1]},iteration={at[1]},phase=forward,how=crash",
    ]


def train(out: Path, name: str, args, fails: list[str], port: int) -> Path:
    runs = out / name
    cmd = [
        "run",
        "0",
        str(args.nodes),
        args.variant,
        "0",
        "--scenario",
        args.scenario,
        "--iterations",
        str(args.iterations),
        "--time-scale",
        str(args.time_scale),
        "--base-port",
        str(port),
        "--runs",
        str(runs),
        "--peer-timeout",
        str(args.peer_timeout),
        "--checkpoint",
    ]
    for f in fails:
        cmd += ["--fail", f]
    r = skippipe(cmd, f"the {name} run")
    print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:])
    return next(runs.iterdir())


def failure_log(run_dir: Path) -> dict:
    events = read_jsonl(run_dir / "events")
    faults = [
        {"node": e["node"], "how": e["how"], "phase": e["phase"], "iteration": e["iteration"], "t": e["t"]}
        for e in events
        if e["event"] == "fault"
    ]
    for f in faults:
        seen = [
            e["t"]
            for e in events
            if e["event"] == "peer_dead" and f["node"] in e["peers"] and e["node"] != f["node"]
        ]
        f["detected_after_s"] = round(min(seen) - f["t"], 3) if seen else None
    per_it: dict[int, dict] = {}
    for e in events:
        if e["event"] in ("microbatch_rerouted", "microbatch_restarted", "microbatch_lost"):
            key = "lost" if e["event"] == "microbatch_lost" else "rerouted"
            per_it.setdefault(e["iteration"], {"rerouted": 0, "lost": 0})[key] += 1
    return {"faults": faults, "microbatches": per_it}


def plot(clean: list[dict], failed: list[dict], faults: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for rows, label in ((clean, "no failures"), (failed, "with failures")):
        a.plot([r["iteration"] for r in rows], [r["loss"] for r in rows], marker="o", label=label)
        b.plot([r["iteration"] for r in rows], [r["measured_s"] for r in rows], marker="o", label=label)
    for f in faults:
        for ax in (a, b):
            ax.axvline(f["iteration"], color="red", alpha=0.3)
        a.annotate(
            f"node {f['node']} {f['how']}",
            (f["iteration"], a.get_ylim()[1]),
            fontsize=8,
            color="red",
            va="top",
            rotation=90,
        )
    a.set_ylabel("mean loss (nats)")
    b.set_ylabel("iteration time (scenario s)")
    b.set_xlabel("iteration")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def failed_sets(n_nodes: int, data_nodes: list[int], seed: int) -> list[list[int]]:
    """One seeded set of failed nodes per fraction; the first data node always survives."""
    rng = random.Random(seed)
    candidates = [n for n in range(n_nodes) if n != data_nodes[0]]
    rng.shuffle(candidates)
    return [sorted(candidates[: round(f * n_nodes)]) for f in FAILED_FRACTIONS]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="settings/tiny.toml")
    ap.add_argument("--nodes", type=int, default=6, help="nodes of the scenario (all started)")
    ap.add_argument("--variant", default="ca-partial")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--time-scale", type=float, default=2.0)
    ap.add_argument("--peer-timeout", type=float, default=3.0, help="failure detection deadline, wall s")
    ap.add_argument(
        "--fail", action="append", help="failure spec (default: one of each consequence, see default_plan)"
    )
    ap.add_argument("--max-batches", type=int, default=8, help="validation batches for perplexity")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/failure-experiment")
    args = ap.parse_args()
    os.chdir(ROOT)  # schedules/ and runs/ are relative to the project
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sc = load_scenario(ROOT / args.scenario)
    sched, _ = load_schedule(ensure_schedule(sc, args.variant, None, DEFAULT_TIME_LIMIT_S, print), sc)
    fails = args.fail or default_plan(sched.allocation_of(args.variant), args.iterations)

    clean_dir = train(out, "clean", args, [], free_port_range(args.nodes))
    failed_dir = train(out, "failures", args, fails, free_port_range(args.nodes))
    clean = json.loads((clean_dir / "iterations.json").read_text())
    failed = json.loads((failed_dir / "iterations.json").read_text())
    log = failure_log(failed_dir)
    plot(clean, failed, log["faults"], out / "failures.png")

    cfg = json.loads((clean_dir / "config.json").read_text())
    inference = []
    for dead in failed_sets(args.nodes, cfg["data_nodes"], args.seed):
        r = distributed_perplexity(clean_dir, set(dead), args.max_batches)
        local = local_perplexity(clean_dir, r["omitted_stages"], args.max_batches, r["samples"])
        inference.append(
            {
                "failed": dead,
                "fraction": len(dead) / args.nodes,
                "omitted_stages": r["omitted_stages"],
                "perplexity": r["perplexity"],
                "single_process": local,
            }
        )
    base = inference[0]["perplexity"]
    report = {
        "failures": log,
        "clean": clean,
        "with_failures": failed,
        "inference": inference,
        "runs": {"clean": str(clean_dir), "failures": str(failed_dir)},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))

    lines = [
        "# Failure experiment",
        "",
        f"Scenario `{args.scenario}`, variant `{args.variant}`, "
        f"{args.iterations} iterations, time scale {args.time_scale:g}, peer timeout {args.peer_timeout:g} s.",
        "",
        "## What failed",
        "",
        "| node | how | phase | iteration | detected after (wall s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {f['node']} | {f['how']} | {f['phase']} | {f['iteration']} | {f['detected_after_s']} |"
        for f in log["faults"]
    ]
    lines += [
        "",
        "## Iterations",
        "",
        "| iteration | loss, no failures | loss, failures | time s, no failures | "
        "time s, failures | microbatches re-routed | lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, f in zip(clean, failed):
        mb = log["microbatches"].get(c["iteration"], log["microbatches"].get(str(c["iteration"]), {}))
        lines.append(
            f"| {c['iteration']} | {c['loss']:.4f} | {f['loss']:.4f} | {c['measured_s']:.3f} | "
            f"{f['measured_s']:.3f} | {mb.get('rerouted', 0)} | {mb.get('lost', 0)} |"
        )
    lines += [
        "",
        "![losses and iteration times](failures.png)",
        "",
        "## Inference with failed nodes",
        "",
        "| nodes failed | fraction | stages omitted | perplexity (live nodes) | single process | vs none failed |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {i['failed'] or '-'} | {i['fraction']:.0%} | {i['omitted_stages'] or '-'} | {i['perplexity']:.3f} | "
        f"{i['single_process']:.3f} | {i['perplexity'] / base - 1:+.1%} |"
        for i in inference
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nreport: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
