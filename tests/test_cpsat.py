"""CP-SAT planner: optimum against brute force on tiny instances, each rule binds, reproducibility,
infeasible inputs, and the ca-partial / non-ca-partial variants end to end on settings/tiny.toml.

Brute force: every path assignment (CC3, TC1's visit share) and, for each, every per-node op
order; the order fixes the schedule (each op as early as its order, its input and the links
allow: optimal for a given order because the objective only grows with op ends), memory is
checked on the order (an F needs a free slot from earlier ops on its node). Times are the model's
ticks (model_data.ModelData), so optima must match exactly.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import pytest

from conftest import SETTINGS
from skippipe.costs import Costs
from skippipe.network import Link, Network, Node
from skippipe.planner.cpsat import PathModel, solve
from skippipe.planner.model_data import (
    ModelData,
    Rules,
    all_sequences,
    build_data,
    chain,
    plan_values,
    stage_set_counts,
)
from skippipe.planner.partial import ca_partial_variant, non_ca_partial_variant, planned_iteration_s
from skippipe.planner.paths import PlanningError
from skippipe.rules import planned_makespan, validate
from skippipe.scenario import CostConfig, ModelConfig, PipelineConfig, Scenario, TrainingConfig, load_scenario
from skippipe.schedule import Schedule
from skippipe.sim.simulate import simulate

F_S = 1.0  # forward seconds of every node unless overridden
FAR_S = 4.0  # latency of a link the optimum should avoid
NEAR_S = 0.25
SOLVE_S = 10.0  # CP-SAT limit per tiny solve (they prove optimality in well under a second)


def make_scenario(
    stage_sizes,
    *,
    k,
    mb_per_node=1,
    slots=2,
    latency=None,
    default_s=1.0,
    node_f_s=None,
    node_slots=None,
    max_swaps=2,
    max_jump=4,
) -> Scenario:
    """Nodes numbered stage by stage, each in its own location; links have only latency
    (`latency[(i, j)]`, symmetric, else `default_s`), infinite bandwidth. One layer per stage and
    one sample per microbatch, so forward = F_S (or node_f_s[node]), backward 2x, loss 0.5x."""
    n = sum(stage_sizes)
    locs = tuple(f"n{i}" for i in range(n))
    lat = {tuple(sorted(pair)): s for pair, s in (latency or {}).items()}
    links = tuple(
        (locs[i], locs[j], Link(lat.get((i, j), default_s), math.inf))
        for i in range(n)
        for j in range(i + 1, n)
    )
    s = len(stage_sizes)
    return Scenario(
        name="t",
        source="",
        content_hash="h",
        model=ModelConfig(
            d_model=8,
            n_heads=2,
            n_layers=s,
            ffn_hidden=16,
            ctx_tokens=1,
            vocab_size=16,
            activation_dtype_bytes=1,
            param_dtype_bytes=1,
        ),
        pipeline=PipelineConfig(tuple(stage_sizes), k, slots, mb_per_node, 1, max_swaps, 1, 2, max_jump),
        costs=CostConfig(2.0, 0.5, 0.0),
        training=TrainingConfig(1, 1e-3, 1.0, 0.0, 0, 1.0),
        network=Network("t", locs, Link(0.0, math.inf), links),
        nodes=tuple(
            Node(i, locs[i], (node_f_s or {}).get(i, F_S), (node_slots or {}).get(i, slots)) for i in range(n)
        ),
    )


def allocation_of(stage_sizes) -> tuple[tuple[int, ...], ...]:
    out, nxt = [], 0
    for size in stage_sizes:
        out.append(tuple(range(nxt, nxt + size)))
        nxt += size
    return tuple(out)


def data_for(sc: Scenario) -> ModelData:
    return build_data(sc, allocation_of(sc.pipeline.stage_sizes))


def solve_optimum(data: ModelData, rules: Rules) -> int:
    result = solve(PathModel(data, rules), SOLVE_S, seed=0, workers=1)
    assert result.status == "OPTIMAL"
    return result.objective


# ---------------------------------------------------------------------------------------------
# Brute force


def brute_force(data: ModelData, rules: Rules) -> int:
    """Best objective (ticks) over every path assignment and every per-node op order."""
    seqs = data.sequences if rules.cc3 else all_sequences(data)
    paths = {
        o: [(o,) + rest for seq in seqs for rest in itertools.product(*(data.allowed[o][s] for s in seq[1:]))]
        for o in data.origins()
    }
    best = math.inf
    for choice in itertools.product(*(paths[o] for _, o in data.microbatches)):
        visits = Counter(data.stage_of[n] for p in choice for n in p[1:])
        if rules.tc1_load and max(visits.values()) > data.visit_cap:
            continue
        assignment = {mb: p for (mb, _), p in zip(data.microbatches, choice)}
        best = min(best, _best_timing(data, assignment, rules))
    return best


def _best_timing(data: ModelData, paths: dict, rules: Rules) -> float:
    ops = chain(data.k)
    per_node: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for mb, p in paths.items():
        for pos, (kind, hop) in enumerate(ops):
            per_node[data.op_node(p, kind, hop)][mb].append(pos)
    if not rules.tc2:
        assert not rules.tc1_memory, "brute force without TC2 ignores memory"
        return _objective(data, paths, _asap(data, paths, {}), rules)
    nodes = sorted(per_node)
    choices = [
        list(_interleavings([[(mb, pos) for pos in seq] for mb, seq in per_node[n].items()])) for n in nodes
    ]
    best = math.inf
    for combo in itertools.product(*choices):
        orders = dict(zip(nodes, combo))
        if rules.tc1_memory and not _memory_ok(data, paths, orders):
            continue
        starts = _asap(data, paths, orders)
        if starts is not None:
            best = min(best, _objective(data, paths, starts, rules))
    return best


def _interleavings(seqs):
    seqs = [s for s in seqs if s]
    if not seqs:
        yield ()
        return
    for i, s in enumerate(seqs):
        for rest in _interleavings(seqs[:i] + [s[1:]] + seqs[i + 1 :]):
            yield (s[0],) + rest


def _memory_ok(data, paths, orders) -> bool:
    ops = chain(data.k)
    for node, order in orders.items():
        held = 0
        for _mb, pos in order:
            kind = ops[pos][0]
            if kind == "F":
                if held >= data.slots[node]:
                    return False
                held += 1
            elif kind == "B":
                held -= 1
    return True


def _asap(data, paths, orders):
    """Earliest starts for chains plus node orders (longest path); None when they conflict."""
    ops = chain(data.k)
    succ = defaultdict(list)
    indeg = Counter()
    for mb, p in paths.items():
        for pos in range(len(ops) - 1):
            a, b = data.op_node(p, *ops[pos]), data.op_node(p, *ops[pos + 1])
            succ[mb, pos].append(((mb, pos + 1), data.dur[ops[pos][0]][a] + data.link[a][b]))
            indeg[mb, pos + 1] += 1
    for node, order in orders.items():
        for (mb, pos), nxt in zip(order, order[1:]):
            succ[mb, pos].append((nxt, data.dur[ops[pos][0]][node]))
            indeg[nxt] += 1
    every = [(mb, pos) for mb in paths for pos in range(len(ops))]
    start = {op: 0 for op in every}
    ready = [op for op in every if indeg[op] == 0]
    seen = 0
    while ready:
        op = ready.pop()
        seen += 1
        for nxt, w in succ[op]:
            start[nxt] = max(start[nxt], start[op] + w)
            indeg[nxt] -= 1
            if indeg[nxt] == 0:
                ready.append(nxt)
    return start if seen == len(every) else None


def _objective(data, paths, starts, rules) -> int:
    ops = chain(data.k)
    done = Counter()
    for (mb, pos), t in starts.items():
        node = data.op_node(paths[mb], *ops[pos])
        done[data.stage_of[node]] = max(done[data.stage_of[node]], t + data.dur[ops[pos][0]][node])
    if rules.objective == "makespan":
        return done[0]
    return max(done[s] + data.avg[s] for s in range(len(data.stages)))


# ---------------------------------------------------------------------------------------------
# Optimum

CASES = {
    "two-stage-choice": dict(
        stage_sizes=(1, 2, 1), k=2, mb_per_node=2, latency={(0, 1): NEAR_S, (0, 2): 0.6, (0, 3): 0.3}
    ),
    "reorder": dict(
        stage_sizes=(2, 1, 1, 1), k=3, latency={(0, 4): NEAR_S, (1, 2): 0.3, (2, 4): 0.3, (3, 4): NEAR_S}
    ),
    "slow-node": dict(
        stage_sizes=(1, 2, 2), k=3, node_f_s={1: 3.0, 4: 2.0}, latency={(0, 1): NEAR_S, (0, 3): 0.5}
    ),
    "one-slot": dict(stage_sizes=(1, 1, 1), k=3, mb_per_node=2, slots=1, default_s=0.5),
}


@pytest.mark.parametrize("objective", ["makespan", "iteration"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_solver_reaches_brute_force_optimum(case, objective):
    data = data_for(make_scenario(**CASES[case]))
    rules = Rules(objective=objective)
    assert solve_optimum(data, rules) == brute_force(data, rules)


def test_redundant_constraints_keep_the_optimum():
    data = data_for(make_scenario(**CASES["two-stage-choice"]))
    plain = Rules(bounds=False, symmetry=False, objective="makespan")
    assert solve_optimum(data, plain) == solve_optimum(data, Rules(objective="makespan"))


# ---------------------------------------------------------------------------------------------
# Each rule binds: dropping it changes the optimum (both optima checked by brute force)

ALL = Rules(objective="makespan")
NO_MEMORY = Rules(tc1_memory=False, objective="makespan")  # brute force without TC2 needs it off
RULE_CASES = {  # rule -> (instance, rules with it, rules without it)
    # the best order 0 -> 2 -> 1 -> 3 needs a swap; with none allowed only 0 -> 1 -> 2 -> 3
    "cc3": (
        dict(
            stage_sizes=(1, 1, 1, 1),
            k=4,
            max_swaps=0,
            default_s=FAR_S,
            latency={(0, 2): NEAR_S, (1, 2): NEAR_S, (1, 3): NEAR_S, (0, 3): NEAR_S},
        ),
        ALL,
        Rules(cc3=False, objective="makespan"),
    ),
    # one slot at the data node: its two microbatches cannot overlap
    "tc1_memory": (dict(stage_sizes=(1, 1), k=2, mb_per_node=2, slots=1, default_s=NEAR_S), ALL, NO_MEMORY),
    # each of the two non-first stages gets one visit: one microbatch must take the far stage
    "tc1_load": (
        dict(stage_sizes=(1, 1, 1), k=2, mb_per_node=2, default_s=FAR_S, latency={(0, 1): NEAR_S}),
        ALL,
        Rules(tc1_load=False, objective="makespan"),
    ),
    # two microbatches on one path: their ops may not overlap on a node
    "tc2": (
        dict(stage_sizes=(1, 1), k=2, mb_per_node=2, default_s=NEAR_S),
        NO_MEMORY,
        Rules(tc2=False, tc1_memory=False, objective="makespan"),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_rule_binds(rule):
    spec, kept, dropped = RULE_CASES[rule]
    data = data_for(make_scenario(**spec))
    with_rule, without = solve_optimum(data, kept), solve_optimum(data, dropped)
    assert with_rule == brute_force(data, kept)
    assert without == brute_force(data, dropped)
    assert without < with_rule


# ---------------------------------------------------------------------------------------------
# Variants end to end, reproducibility


def tiny():
    return load_scenario(SETTINGS / "tiny.toml")


TINY_ALLOCATION = ((0, 1), (2, 3), (4,), (5,))


def schedule_of(sc, variant):
    return Schedule(sc.name, sc.content_hash, sc.source, TINY_ALLOCATION, {variant.name: variant})


def test_ca_partial_variant_is_valid_and_consistent():
    sc, lines = tiny(), []
    v = ca_partial_variant(sc, TINY_ALLOCATION, work_s=SOLVE_S, workers=1, progress=lines.append)
    sched = schedule_of(sc, v)
    validate(sched, sc)
    prov, costs = v.provenance, Costs(sc)
    assert prov.solver == "cp-sat" and prov.seed == 0 and prov.workers == 1
    assert prov.bound <= prov.objective + 1e-9 and prov.wall_s > 0
    assert v.has_start_times and lines and lines[0].startswith("greedy")
    tick = build_data(sc, TINY_ALLOCATION).tick_s
    assert abs(planned_iteration_s(v, costs, TINY_ALLOCATION) - prov.objective) <= 2 * tick
    assert planned_makespan(v, costs) <= v.predicted["planned_makespan_s"] + 1e-9
    sim = simulate(sched, v.name, sc)
    assert sim.iteration_s <= prov.objective + 1e-6  # the simulator runs the planned order as early as it can


REPRO_WORK_S = 6.0  # work seconds: long enough for a few path-LNS steps and the full model


@pytest.mark.parametrize("workers", [1, 2])
def test_same_seed_is_reproducible(workers):
    sizes = (2, 3, 3, 3)  # big enough that the greedy plan is not optimal
    latency = {(a, b): 0.1 + ((a * 7 + b * 3) % 5) / 4 for a in range(11) for b in range(a + 1, 11)}
    sc = make_scenario(sizes, k=3, mb_per_node=4, slots=2, latency=latency)
    alloc = allocation_of(sizes)
    a, b = (ca_partial_variant(sc, alloc, work_s=REPRO_WORK_S, seed=3, workers=workers) for _ in range(2))
    assert a.paths == b.paths and a.order == b.order
    assert a.provenance.objective == b.provenance.objective


def test_non_ca_variant_has_no_order_and_validates():
    sc = tiny()
    v = non_ca_partial_variant(sc, TINY_ALLOCATION, work_s=SOLVE_S, workers=1)
    assert v.name == "non-ca-partial" and v.order is None
    validate(schedule_of(sc, v), sc)
    simulate(schedule_of(sc, v), v.name, sc)


# ---------------------------------------------------------------------------------------------
# Infeasible inputs: one line naming the rule


@pytest.mark.parametrize(
    "spec, stages, rule",
    [
        (dict(stage_sizes=(1, 1), k=3), None, "CC2"),
        (dict(stage_sizes=(1, 1, 1, 1, 1), k=3, mb_per_node=3, max_swaps=0, max_jump=1), None, "TC1"),
        (dict(stage_sizes=(1, 1, 1), k=2, node_slots={1: 0}), None, "TC1"),
        (dict(stage_sizes=(1, 1, 1), k=2), ((0,), (1, 2), ()), "stage 2 has no nodes"),
    ],
)
def test_infeasible_inputs_raise_planning_error(spec, stages, rule):
    sc = make_scenario(**spec)
    with pytest.raises(PlanningError, match=rule) as err:
        build_data(sc, stages or allocation_of(spec["stage_sizes"]))
    assert "\n" not in str(err.value)


def test_cpsat_infeasible_status_is_a_planning_error():
    data = data_for(make_scenario(stage_sizes=(1, 1), k=2))
    with pytest.raises(PlanningError, match="infeasible"):
        solve(PathModel(data, upper_bound=1), SOLVE_S, seed=0, workers=1)


def test_stage_set_counts_respect_the_shares():
    sets = [(1, 2), (1, 3), (2, 3)]
    assert stage_set_counts(sets, {1: 2, 2: 2, 3: 2}, 3) == {(1, 2): 1, (1, 3): 1, (2, 3): 1}
    assert stage_set_counts(sets, {1: 1, 2: 1, 3: 1}, 2) is None


def test_plan_values_match_the_model():
    data = data_for(make_scenario(**CASES["slow-node"]))
    pm = PathModel(data)
    result = solve(pm, SOLVE_S, seed=0, workers=1)
    assert plan_values(data, result.plan)["iteration"] == result.objective
