"""Online routing (routing.py) and its simulation (sim/online.py): seeded determinism, the
expected-wait preference, swarm-skip paths that keep CC1-CC3 and TC1, the simulator's
prediction over seeds, the schedule entry, and the hybrid repairing around a straggler."""

import dataclasses
from collections import Counter

import pytest

from conftest import SETTINGS
from schedules import TINY_ALLOCATION, timed_schedule, tiny
from skippipe.planner.online import REBALANCE_THRESHOLD, online_variant
from skippipe.routing import Report, Router, stage_budgets
from skippipe.rules import stage_visit_cap, violations
from skippipe.scenario import load_scenario
from skippipe.schedule import Hop, Routing, Schedule
from skippipe.schedule_file import from_dict, to_dict
from skippipe.sim.online import predict, simulate_online
from test_simulate import make_scenario


def _router(sc, seed=0, node=0, rule="swarm", k=None, choice="least-time"):
    return Router(node, Routing(rule, seed=seed, choice=choice), sc, k or sc.pipeline.n_stages)


def _online(sc, name, allocation, seed=0, plan=None):
    v = online_variant(name, sc, allocation, seed, plan)
    return Schedule(sc.name, sc.content_hash, sc.source, tuple(allocation), {name: v})


def _draws(router, n=50):
    return [router.next_hop(0, (Hop(0, 0),), TINY_ALLOCATION) for _ in range(n)]


def test_same_seed_same_choices_other_seed_other_choices():
    sc = tiny()
    for choice in ("least-time", "weighted"):
        assert _draws(_router(sc, seed=3, choice=choice)) == _draws(_router(sc, seed=3, choice=choice))
    weighted = dict(choice="weighted")
    assert _draws(_router(sc, seed=3, **weighted)) != _draws(_router(sc, seed=4, **weighted))
    assert _draws(_router(sc, node=1, **weighted)) != _draws(_router(sc, node=0, **weighted))


def _equal_peers():
    """A router at node 0 before three identical nodes (1, 2, 3) on one zero-latency location."""
    sc = make_scenario([1, 3, 1], locations=["here"] * 5, ser_s=0.0, prop_s=0.0)
    return sc, [1, 2, 3]


def test_least_time_takes_the_least_accumulated_expected_time():
    """SWARM's rule: identical peers take turns (each round in a seeded random order), and a
    peer measured k times slower gets about 1/k of what a fast one gets."""
    sc, peers = _equal_peers()
    r = Router(0, Routing("swarm"), sc, 3)
    picks = [r.choose_node(peers) for _ in range(30)]
    for i in range(0, 30, 3):
        assert sorted(picks[i : i + 3]) == peers  # a tie each round: every peer once
    orders = {
        tuple(Router(0, Routing("swarm", seed=s), sc, 3).choose_node(peers) for _ in range(3))
        for s in range(8)
    }
    assert len(orders) > 1  # randomness breaks the ties, nothing else
    r = Router(0, Routing("swarm"), sc, 3)
    r.observe(3, Report(4 * r.costs.forward_s(3), 0))
    picks = Counter(r.choose_node(peers) for _ in range(90))
    assert picks[1] == picks[2] and picks[1] in (40, 41) and picks[3] in (9, 10, 11)


def test_least_time_is_deterministic_where_the_weighted_draw_is_not():
    sc, peers = _equal_peers()
    r = Router(0, Routing("swarm"), sc, 3)
    r.observe(2, Report(0.5 * r.costs.forward_s(2), 0))  # twice as fast: twice the share, always
    assert Counter(r.choose_node(peers) for _ in range(40)) == {2: 20, 1: 10, 3: 10}
    w = Router(0, Routing("swarm", choice="weighted"), sc, 3)
    w.observe(2, Report(0.5 * w.costs.forward_s(2), 0))
    assert Counter(w.choose_node(peers) for _ in range(40)) != {2: 20, 1: 10, 3: 10}


def test_a_peer_first_seen_late_joins_at_the_least_key():
    sc, peers = _equal_peers()
    r = Router(0, Routing("swarm"), sc, 3)
    for _ in range(20):
        r.choose_node(peers[:2])
    picks = Counter(r.choose_node(peers) for _ in range(9))
    assert picks[3] <= 4  # not flooded for the time the others have accumulated


def test_routing_choice_round_trips_and_old_schedules_keep_the_weighted_draw(tiny_scenario):
    sc = tiny_scenario
    sched = _online(sc, "swarm", TINY_ALLOCATION)
    d = to_dict(sched)
    assert d["variants"]["swarm"]["routing"]["choice"] == "least-time"
    del d["variants"]["swarm"]["routing"]["choice"]  # written before the choice was kept
    assert from_dict(d).variants["swarm"].routing.choice == "weighted"
    from skippipe.schedule import ScheduleError

    with pytest.raises(ScheduleError, match="routing choice 'best'"):
        Routing("swarm", choice="best")


def test_expected_wait_steers_and_blacklist_excludes():
    sc = tiny()
    r = _router(sc, choice="weighted")
    for _ in range(200):  # node 3 reports forwards ten times slower than node 2's
        r.observe(2, Report(r.costs.forward_s(2), 0))
        r.observe(3, Report(10 * r.costs.forward_s(3), 0))
        r.choose_node([2, 3])
    picks = Counter()
    for _ in range(200):
        r.sent.clear()
        picks[r.choose_node([2, 3])] += 1
    assert picks[2] > 3 * picks[3] > 0
    r.blacklist = {2}
    assert {r.choose_node([2, 3]) for _ in range(20)} == {3}
    assert r.choose_node([2]) is None


def test_repair_keeps_the_plan_unless_the_hop_is_dead_or_slow():
    sc = tiny()
    r = _router(sc, rule="repair", k=3)
    planned, done = Hop(1, 2), (Hop(0, 0),)
    assert r.next_hop(0, done, TINY_ALLOCATION, planned) == planned
    assert r.next_hop(0, done, ((0, 1), (3,), (4,), (5,)), planned) == Hop(1, 3)  # 2 died
    r.observe(2, Report(r.params.slow_factor * 1.5 * r.costs.forward_s(2), 0))
    assert r.slow(2) and r.next_hop(0, done, TINY_ALLOCATION, planned) == Hop(1, 3)
    r.observe(3, Report(10 * r.costs.forward_s(3), 0))  # every node there slow: the plan stands
    assert r.next_hop(0, done, TINY_ALLOCATION, planned) == planned


def test_stage_budgets_split_tc1_evenly():
    sc = load_scenario(SETTINGS / "geo-distributed.toml")
    p = sc.pipeline
    origins = [(o, p.microbatches_per_node) for o in range(p.stage_sizes[0])]
    budgets = stage_budgets(origins, p.n_stages, p.path_length)
    total = sum(budgets.values(), Counter())
    assert max(total.values()) <= stage_visit_cap(sc, len(origins) * p.microbatches_per_node)
    for b in budgets.values():
        assert sum(b.values()) == p.microbatches_per_node * (p.path_length - 1)
        assert max(b.values()) <= p.microbatches_per_node and 0 not in b


@pytest.mark.parametrize("scenario", ["tiny", "geo-distributed"])
def test_swarm_skip_paths_keep_cc1_to_cc3_and_tc1(scenario):
    sc = load_scenario(SETTINGS / f"{scenario}.toml")
    nodes = iter(range(len(sc.nodes)))
    allocation = tuple(tuple(next(nodes) for _ in range(size)) for size in sc.pipeline.stage_sizes)
    sched = _online(sc, "swarm-skip", allocation)
    realized = set()
    for seed in range(4):
        result, paths = simulate_online(sched, "swarm-skip", sc, seed)
        v = dataclasses.replace(sched.variants["swarm-skip"], paths=paths, order=result.order)
        assert violations(dataclasses.replace(sched, variants={"swarm-skip": v}), sc) == []
        assert all(len(p.hops) == sc.pipeline.path_length for p in paths)
        realized.add(tuple(p.stages for p in paths))
    assert len(realized) > 1  # the stage sequences are chosen online, not fixed


def test_simulator_predicts_swarm_over_seeds_and_the_schedule_keeps_it(tiny_scenario):
    sc = tiny_scenario
    sched = _online(sc, "swarm", TINY_ALLOCATION)
    v = sched.variants["swarm"]
    got = predict(sched, "swarm", sc)
    assert got == predict(sched, "swarm", sc)  # seeded: the same numbers again
    assert got.min_s <= got.mean_s <= got.max_s and got.sd_s >= 0
    assert v.predicted["iteration_s"] == pytest.approx(got.mean_s, abs=1e-4)
    assert all(p.stages == (0, 1, 2, 3) for p in v.paths)
    assert violations(sched, sc) == []
    back = from_dict(to_dict(sched))
    assert back.variants["swarm"].routing == v.routing == Routing("swarm", rebalance=REBALANCE_THRESHOLD)
    bad = dataclasses.replace(sched, variants={"swarm": dataclasses.replace(v, routing=None)})
    assert [x.rule for x in violations(bad, sc)] == ["ROUTING"]


def test_hybrid_routes_around_a_straggler_in_the_simulator():
    sc = tiny()
    plan = timed_schedule(sc).variants["ca-partial"]
    sched = _online(sc, "ca-repair", TINY_ALLOCATION, plan=plan)
    assert violations(sched, sc) == []
    calm, _ = simulate_online(sched, "ca-repair", sc)
    assert not [e for e in calm.events if e["event"] == "microbatch_rerouted"]
    slowed, paths = simulate_online(sched, "ca-repair", sc, slow={2: 10.0})
    rerouted = [e for e in slowed.events if e["event"] == "microbatch_rerouted"]
    assert rerouted and all(e["avoided"] == 2 and e["to"] == 3 for e in rerouted)
    assert any(p.nodes != q.nodes for p, q in zip(paths, plan.paths))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 2])
def test_swarm_skip_origins_spend_their_budget_exactly_under_a_forward_jump_limit(seed):
    """scale-120 (k = 8 of 12 stages, forward jumps of at most 4): a draw that leaves a
    microbatch only an unorderable set of stages must not happen (it overspent a stage, and the
    planned swarm-skip broke TC1's even share)."""
    sc = load_scenario(SETTINGS / "scale-120.toml")
    n_stages, k = sc.pipeline.n_stages, sc.pipeline.path_length
    data_nodes, per_node = sc.pipeline.stage_sizes[0], sc.pipeline.microbatches_per_node
    live = [(0,)] + [(s,) for s in range(1, n_stages)]
    budgets = stage_budgets([(o, per_node) for o in range(data_nodes)], n_stages, k)
    visits = Counter()
    for origin in range(data_nodes):
        router = Router(origin, Routing("swarm-skip", seed=seed), sc, k)
        for i in range(per_node):
            visits.update(router.choose_stage_set(origin * per_node + i, budgets[origin], per_node - i, live))
        assert all(b == 0 for b in budgets[origin].values()), budgets[origin]
    assert max(visits.values()) <= stage_visit_cap(sc, data_nodes * per_node)
