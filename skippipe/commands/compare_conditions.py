"""`compare --condition`: every variant over a simulated session of several iterations under one
network condition (sim/session.py), so online routing and offline plans meet under the same
faults at the same memory, in minutes instead of an hour of node processes.

- static: nothing happens; a planned variant repeats its iteration, an online one's routers carry
  their measurements from one iteration to the next, as the nodes' do.
- straggler: one node runs SLOW_FACTOR times slower (compute, sends, its stage's averaging) from
  iteration SLOW_FROM on.
- churn: the same node is down in iteration CRASH_AT and back from the next: a planned variant's
  paths are repaired around it first come first served, a routed one routes around it.

The node is picked by role in each variant's own allocation (the last node of the first non-data
stage that has a peer), so every variant loses a node that a peer can stand in for, and no data
node (no microbatch is lost). A row's iteration time is the mean over iterations 1..N-1 (0 is
warm-up), which is what throughput pays for, and its worst iteration beside it; routed variants
(swarm, swarm-skip, ca-repair) are simulated for router seeds 0..4 and averaged. The session
leaves out what only a run has: failure detection and the crashed node's restart (the node
processes' figures are in docs/benchmarks.md with their date and load).
"""

from __future__ import annotations

import statistics

from ..errors import SkipPipeError
from ..scenario import Scenario
from ..schedule import Schedule

CONDITIONS = ("static", "straggler", "churn")
SLOW_FACTOR, SLOW_FROM = 3.0, 3
CRASH_AT = 2
DEFAULT_ITERATIONS = 8
MIN_ITERATIONS = SLOW_FROM + 2  # a straggler's steady iterations after the warm-up and the fault
SEEDS = range(5)  # router seeds of the routed variants
MAX_REASON = 160  # characters of a simulator error kept as a left-out variant's reason
HEADER = (
    "variant",
    "loss",
    "fault node",
    "iteration s",
    "worst s",
    "peak/slots",
    "work/it",
    "samples/s",
    "x best full",
    "it speedup",
    "rerouted",
    "moves",
)


def check(condition: str | None, iterations: int, emulate: int) -> None:
    if condition is None:
        return
    if iterations < MIN_ITERATIONS:
        raise SkipPipeError(
            f"--iterations must be at least {MIN_ITERATIONS} with --condition (the "
            f"straggler starts at iteration {SLOW_FROM}), got {iterations}"
        )
    if emulate:
        raise SkipPipeError(
            "--condition simulates sessions; --emulate measures the static network only: run them separately"
        )


def describe(condition: str, iterations: int) -> str:
    """The condition in words, for the verdict and the chart's title."""
    return {
        "static": f"static network, {iterations} iterations",
        "straggler": f"one node {SLOW_FACTOR:g}x slower from iteration {SLOW_FROM} of {iterations}",
        "churn": f"one node down in iteration {CRASH_AT} of {iterations}, back in the next",
    }[condition]


def fault_node(allocation) -> int | None:
    """The last node of the first non-data stage that has a peer; None when no stage has one."""
    return next((nodes[-1] for nodes in allocation[1:] if len(nodes) > 1), None)


def _condition(name: str, node: int | None):
    from ..failures import Condition, FailureSpec

    if name == "static" or node is None:
        return Condition()
    if name == "straggler":
        return Condition((FailureSpec(node, SLOW_FROM, how="slow", factor=SLOW_FACTOR),))
    return Condition((FailureSpec(node, CRASH_AT, how="crash"),), back={node: CRASH_AT + 1})


def apply(row: dict, sched: Schedule, scenario: Scenario, condition: str, iterations: int) -> str | None:
    """Replace `row`'s iteration time (and throughput) by its session's under `condition`; the
    reason instead when the session cannot finish (a repaired order that deadlocks, a lost quorum)."""
    from ..sim.session import simulate_session
    from ..sim.simulate import SimulationError

    name = row["variant"]
    node = None if condition == "static" else fault_node(sched.allocation_of(name))
    if condition != "static" and node is None:
        raise SkipPipeError(f"{name}: no stage beyond the data nodes has two nodes to fault one of")
    routed = sched.variant(name).routing is not None
    try:
        sessions = [
            simulate_session(sched, name, scenario, iterations, _condition(condition, node), seed=s)
            for s in (SEEDS if routed else (None,))
        ]
    except SimulationError as e:
        return ("" if node is None else f"node {node}: ") + str(e)[:MAX_REASON]
    stopped = next((s.stopped for s in sessions if s.stopped), None)
    if stopped:  # the quorum rule ended it, as it would end a run
        return f"the session stopped at {stopped}"
    steady = [s.iteration_s[1:] for s in sessions]
    lost = statistics.mean(s.lost for s in sessions) / (row["microbatches"] * iterations)
    row.update(
        {
            "condition": condition,
            "iterations": iterations,
            "fault_node": node,
            "iteration_s": statistics.mean(statistics.mean(t) for t in steady),
            "worst_s": max(max(t) for t in steady),
            "rerouted": statistics.mean(s.rerouted for s in sessions),
            "lost": lost,
            "moves": statistics.mean(len(s.moves) for s in sessions),
        }
    )
    samples = row["work"] * (1 - lost) * scenario.pipeline.samples_per_microbatch
    row["samples_per_s"] = samples / row["iteration_s"]
    return None


def cells(rows: list[dict], ratio) -> tuple[tuple[str, ...], list[list[str]]]:
    """The condition table's header and cells."""

    def count(x):
        return f"{x:.3g}"

    table = [
        [
            r["variant"],
            r["loss"],
            "-" if r["fault_node"] is None else str(r["fault_node"]),
            f"{r['iteration_s']:.4g}",
            f"{r['worst_s']:.4g}",
            f"{r['peak']}/{r['slots']}",
            f"{r['work']:.4g}/{r['microbatches']}",
            f"{r['samples_per_s']:.4g}",
            ratio(r["vs_best_full"]),
            ratio(r["it_speedup"]),
            count(r["rerouted"]),
            count(r["moves"]),
        ]
        for r in rows
    ]
    return HEADER, table
