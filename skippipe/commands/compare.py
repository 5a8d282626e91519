"""Compare every variant of a scenario at the same memory: plan (or load) them, simulate each,
print one table and a verdict against the best full pipeline, write JSON and a bar chart.

Work: a path of k of the S stages does k/S of a full microbatch's layer-FLOPs (forward and
backward alike), so an iteration's work is the sum of k/S over its paths, in full-model-
equivalent microbatches, and throughput is full-model-equivalent samples per second. A variant
that skips stages finishes its iteration sooner but trains each sample on fewer layers; the
ratio to the best full pipeline compares throughput, so it does not count skipped work as speed.
The reference is the full-pipeline variant (baseline, a classic family or swarm) with the most
throughput at the same memory, not DT-FM's baseline alone. An online variant's iteration time is
the mean over its router's seeds; its makespan, bubble and peak are its first seed's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from fractions import Fraction
from pathlib import Path

from ..errors import SkipPipeError
from ..memory import fullest
from ..ops import LOSS_AT
from ..plan_options import DEFAULT_TIME_LIMIT_S, PlanOptions
from ..planner.effort import DEFAULT_EFFORT, DEFAULT_WORKERS, EFFORTS
from ..planning import build_schedule
from ..scenario import Scenario, load_scenario
from ..schedule import Schedule
from ..schedule_file import load_schedule, save_schedule
from ..util.files import write_atomic
from ..util.rundir import can_create
from ..variants import REGISTRY, VARIANTS
from . import compare_conditions as conditions
from .compare_conditions import CONDITIONS, DEFAULT_ITERATIONS
from .compare_report import bar_chart, format_rows, markdown, memory_text, verdict

HELP = "plan or load every variant at the same memory, simulate each, compare with the best full pipeline"
DEFAULT_TIME_SCALE = 4.0  # --emulate: wall seconds per scenario second (tiny's bench scale)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("settings", help="scenario file, e.g. settings/geo-distributed.toml")
    p.add_argument("--schedule", help="compare this schedule's variants instead of planning them")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        metavar="VARIANT",
        help="variants to compare (default: every variant; with --schedule, every one in it)",
    )
    p.add_argument(
        "--family-memory",
        action="store_true",
        help="the classic families under their own published memory rules instead of "
        "the scenario's memory_slots (the comparison is then not at equal memory)",
    )
    p.add_argument(
        "--loss-at",
        choices=LOSS_AT,
        default=None,
        help="where the full pipelines run the LM head and loss (default: each "
        "variant's own, last for the full pipelines; also: pipeline.loss_at); "
        "SkipPipe's partial variants keep theirs at the origin",
    )
    p.add_argument(
        "--out",
        help="folder for compare.json, compare.png and the schedule (default: runs/compare-<scenario>)",
    )
    p.add_argument(
        "--effort",
        choices=EFFORTS,
        default=DEFAULT_EFFORT,
        help="planning effort in deterministic work (default %(default)s): the same "
        "scenario, seed and effort give the same comparison on any machine",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="planning: wall-clock safety cap of the whole build in seconds (default: "
        "the effort's; when it cuts in, the plan depends on the machine and it says so)",
    )
    p.add_argument("--seed", type=int, default=0, help="planning seed (default %(default)s)")
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="CP-SAT workers (default %(default)s; the plan does not depend on them)",
    )
    p.add_argument(
        "--emulate",
        type=int,
        default=0,
        metavar="N",
        help="also run each variant N iterations in node processes on this host and add "
        "measured / predicted (median of iterations 1..N-1)",
    )
    p.add_argument(
        "--condition",
        choices=CONDITIONS,
        default=None,
        help="simulate each variant over a session of --iterations under this condition "
        "(static, a straggler or churn: compare_conditions.py) instead of one iteration",
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help="--condition: iterations per session, the first one warm-up (default %(default)s)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help="--emulate: wall seconds per scenario second (default %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no planning progress lines")


def run(args: argparse.Namespace) -> int:
    if args.emulate < 0 or args.time_scale <= 0:
        raise SkipPipeError(
            f"--emulate must be 0 or more and --time-scale positive, got {args.emulate} and {args.time_scale}"
        )
    conditions.check(args.condition, args.iterations, args.emulate)
    scenario = load_scenario(args.settings)
    args.family_memory = args.family_memory or scenario.pipeline.family_memory  # the scenario's keys
    args.loss_at = args.loss_at or scenario.pipeline.loss_at
    out = Path(args.out or f"runs/compare-{scenario.name}")
    can_create(out, f"--out {out}")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    sched, names = _schedule(args, scenario, progress)
    out.mkdir(parents=True, exist_ok=True)
    schedule_path = out / "schedule.json"
    save_schedule(sched, schedule_path)
    left_out: dict[str, str] = {}  # --condition: variants whose session the simulator cannot finish
    rows = compare_rows(sched, scenario, names, args.condition, args.iterations, left_out)
    if args.emulate:
        _emulate(rows, scenario, schedule_path, out, args.emulate, args.time_scale)
    setting = memory_text(scenario, args.family_memory)
    if args.condition:
        setting += f"; {conditions.describe(args.condition, args.iterations)}"
    text = verdict(rows, setting)
    print(f"scenario {scenario.name}: {len(names)} variants, {setting}")
    print(format_rows(rows))
    print(text)
    notes = [f"left out: {name} ({why})" for name, why in left_out.items()]
    print("\n".join(notes), end="\n" if notes else "")
    _write_json(
        out / "compare.json",
        {
            "scenario": scenario.name,
            "settings": str(args.settings),
            "family_memory": args.family_memory,
            "loss_at": args.loss_at,
            "condition": args.condition,
            "rows": rows,
            "left_out": left_out,
            "verdict": text,
        },
    )
    _write_text(out / "compare.md", markdown(rows, text, _command(args)) + "".join(f"\n{n}\n" for n in notes))
    bar_chart(rows, out / "compare.png", f"{scenario.name}: {setting}")
    print(f"wrote {out / 'compare.json'}, {out / 'compare.md'}, {out / 'compare.png'}, {schedule_path}")
    return 0


def _command(args) -> str:
    """The command line that makes this comparison again (the table's caption)."""
    words = ["python -m skippipe compare", str(args.settings)]
    if args.schedule:
        words += ["--schedule", str(args.schedule)]
    else:
        words += ["--effort", args.effort, "--seed", str(args.seed)]
        words += ["--time-limit", f"{args.time_limit:g}"] if args.time_limit is not None else []
    words += ["--variants", *args.variants] if args.variants else []
    words += ["--family-memory"] if args.family_memory else []
    words += ["--loss-at", args.loss_at] if args.loss_at else []
    words += ["--condition", args.condition, "--iterations", str(args.iterations)] if args.condition else []
    words += ["--emulate", str(args.emulate), "--time-scale", f"{args.time_scale:g}"] if args.emulate else []
    return " ".join(words)


def _schedule(args, scenario: Scenario, progress) -> tuple[Schedule, list[str]]:
    """The schedule to compare and the variants in it to compare, all at the same memory."""
    wanted = tuple(dict.fromkeys(args.variants or ()))
    if args.schedule:
        sched, _ = load_schedule(args.schedule, scenario)
        names = list(wanted or sched.variants)
        for name in names:
            sched.variant(name)  # one error line naming the variant missing
        own = [n for n in names if sched.variants[n].memory == "family"]
        if own and not args.family_memory:
            raise SkipPipeError(
                f"{args.schedule}: {', '.join(own)} planned under its family's own "
                f"memory rule, not the shared slots: re-plan it, or pass --family-memory"
            )
        moved = [
            n
            for n in names
            if args.loss_at and REGISTRY[n].full_pipeline and sched.variants[n].loss_at != args.loss_at
        ]
        if moved:
            raise SkipPipeError(
                f"{args.schedule}: {', '.join(moved)} planned with the loss at "
                f"{sched.variants[moved[0]].loss_at}, not {args.loss_at}: re-plan it"
            )
        return sched, names
    wanted = wanted or VARIANTS
    built_on = (REGISTRY[name].built_on for name in wanted)
    needed = wanted + tuple(dict.fromkeys(s for s in built_on if s and s not in wanted))
    opts = PlanOptions(
        variants=needed,
        seed=args.seed,
        time_limit_s=args.time_limit,
        workers=args.workers,
        family_memory=args.family_memory,
        loss_at=args.loss_at,
        effort=args.effort,
    )
    opts.check()
    sched = build_schedule(scenario, opts, progress)
    return sched, [n for n in VARIANTS if n in sched.variants and n in wanted]


def compare_rows(
    sched: Schedule,
    scenario: Scenario,
    names: list[str],
    condition: str | None = None,
    iterations: int = 1,
    left_out: dict[str, str] | None = None,
) -> list[dict]:
    """One row per variant: the simulator's times, memory, work and throughput, and the ratios
    to the best full pipeline among `names` (none when no full pipeline is compared); with a
    `condition`, iteration time and throughput are those of a session of `iterations`, and a
    variant whose session the simulator cannot finish goes to `left_out` with the reason."""
    from ..sim.online import predict
    from ..sim.simulate import simulate

    n_stages, samples = scenario.pipeline.n_stages, scenario.pipeline.samples_per_microbatch
    slots = {n.id: n.memory_slots for n in scenario.nodes}
    rows = []
    for name in names:
        v = sched.variants[name]
        sim = simulate(sched, name, scenario)
        online = v.routing is not None and v.routing.online
        iteration_s = predict(sched, name, scenario).mean_s if online else sim.iteration_s
        work = sum(Fraction(len(p.hops), n_stages) for p in v.paths)  # full-model microbatches
        peak, at = fullest({s.node: s.peak_activations for s in sim.per_node}, slots)
        rows.append(
            {
                "variant": name,
                "memory": v.memory,
                "loss": v.loss_at,
                "full_pipeline": REGISTRY[name].full_pipeline,
                "iteration_s": iteration_s,
                "makespan_s": sim.makespan_s,
                "bubble": sim.bubble_share,
                "peak": peak,
                "slots": at,
                "work": float(work),
                "microbatches": len(v.paths),
                "stages_per_path": _stages_per_path(v),
                "n_stages": n_stages,
                "samples_per_s": float(work) * samples / iteration_s,
            }
        )
        why = condition and conditions.apply(rows[-1], sched, scenario, condition, iterations)
        if why:
            rows.pop()
            if left_out is not None:
                left_out[name] = why
    full = [r for r in rows if r["full_pipeline"]]
    best = max(full, key=lambda r: r["samples_per_s"], default=None)
    for r in rows:
        r["best_full"] = None if best is None else best["variant"]
        r["vs_best_full"] = None if best is None else r["samples_per_s"] / best["samples_per_s"]
        r["it_speedup"] = None if best is None else best["iteration_s"] / r["iteration_s"]
    return rows


def _stages_per_path(v) -> str:
    """k of a variant's paths: one number, or the range when its paths differ."""
    ks = sorted({len(p.hops) for p in v.paths})
    return str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"


def _write_json(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def _emulate(
    rows: list[dict], scenario: Scenario, schedule_path: Path, out: Path, iterations: int, time_scale: float
) -> None:
    """Run each variant `iterations` iterations in node processes on this host (emulated compute
    and links) and add its median measured iteration time, scenario seconds, iteration 0 left
    out as warm-up when there are more."""
    from ..runtime.launch.prepare import RunOptions, run_command
    from ..util.ports import free_port_range

    for r in rows:
        runs = out / "runs" / r["variant"]
        opts = RunOptions(
            0,
            len(scenario.nodes),
            r["variant"],
            0,
            scenario.source,
            None,
            free_port_range(len(scenario.nodes)),
            str(runs),
            DEFAULT_TIME_LIMIT_S,
            60.0,
            schedule=str(schedule_path),
            iterations=iterations,
            time_scale=time_scale,
        )
        print(f"emulating {r['variant']}: {iterations} iterations ...", file=sys.stderr, flush=True)
        if run_command(opts, lambda line: None) != 0:
            raise SkipPipeError(f"--emulate: {r['variant']} failed; its run is in {runs}")
        done = sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime)[-1]
        measured = json.loads((done / "iterations.json").read_text())
        steady = measured[1:] or measured
        r["measured_s"] = statistics.median(x["measured_s"] for x in steady)
