"""Where the loss runs (ops.LOSS_AT): at the origin (SkipPipe's ring: the data node holds the
LM head) or on the last hop (the classic pipelines: the last stage holds it). The op chain, the
schedule field and its default, the validator, hand-computed simulator timings for both, online
routing, and the model: moving the untied head changes where it sits, not what it computes."""

import dataclasses
import json

import pytest
import torch

from schedules import TINY_ALLOCATION
from skippipe.costs import Costs
from skippipe.ops import L, Op, node_of, node_ops
from skippipe.planner.online import online_variant
from skippipe.rules import violations
from skippipe.schedule import Schedule, ScheduleError
from skippipe.schedule_file import from_dict, to_dict
from skippipe.sim.online import simulate_online
from skippipe.sim.simulate import simulate
from skippipe.train.model import build_stages, forward_path, head_of
from skippipe.variants import VARIANTS, default_loss_at
from test_simulate import B_S, F_S, HOP_S, L_S, make_scenario, make_schedule, op_events, start_of


def with_loss_at(sched, name, loss_at):
    v = dataclasses.replace(sched.variants[name], loss_at=loss_at)
    return dataclasses.replace(sched, variants={name: v})


def test_the_loss_runs_at_the_origin_or_on_the_last_hop():
    nodes = (0, 2, 5)
    assert node_of(L(3), nodes) == node_of(L(3), nodes, "origin") == 0
    assert node_of(L(3), nodes, "last") == 5
    assert node_of(Op.parse("F3.1"), nodes, "last") == 2
    paths = make_schedule([1, 1, 1], [(0, 1, 2)], variant="baseline").variants["baseline"].paths
    assert Op.parse("L0") in node_ops(paths, loss_at="last")[2]
    assert Op.parse("L0") not in node_ops(paths, loss_at="last").get(0, [])


def test_full_pipelines_default_to_the_last_stage_and_partial_paths_to_the_origin():
    full_pipelines = {"baseline", "naive", "gpipe", "1f1b", "zb-h1", "dualpipev", "swarm"}
    assert {v for v in VARIANTS if default_loss_at(v) == "last"} == full_pipelines
    assert default_loss_at("ca-partial") == default_loss_at("swarm-skip") == "origin"


@pytest.mark.parametrize("loss_at,makespan", [("origin", 11.75), ("last", 11.0)])
def test_simulator_times_both_placements_by_hand(loss_at, makespan):
    """Three stages, one node each, one microbatch; F 1, L 0.5, B 2 s, every hop HOP_S.
    origin: F2 ends 3.75, its output travels back (4.125), L, the gradient travels out again
    (5.0), then B2 B1 B0: 11.75 s. last: L follows F2 on node 2 at once: two hops fewer."""
    sc = make_scenario([1, 1, 1])
    sched = with_loss_at(make_schedule([1, 1, 1], [(0, 1, 2)], variant="baseline"), "baseline", loss_at)
    assert violations(sched, sc) == []
    r = simulate(sched, "baseline", sc)
    (loss,) = [e for e in op_events(r) if e["kind"] == "L"]
    assert loss["node"] == (0 if loss_at == "origin" else 2)
    f2_end = 2 * HOP_S + 3 * F_S
    assert start_of(r, "L", 0, 0) == pytest.approx(f2_end + (HOP_S if loss_at == "origin" else 0))
    assert r.makespan_s == pytest.approx(makespan)
    round_trip = 2 * HOP_S if loss_at == "origin" else 0.0
    assert makespan == pytest.approx(f2_end + round_trip + L_S + 3 * B_S + 2 * HOP_S)


def test_the_head_moves_its_averaging_bytes_to_the_last_stage():
    sc = make_scenario([1, 1, 1])
    c, m = Costs(sc), sc.model
    origin = [c.stage_param_bytes(s) for s in range(3)]
    last = [c.stage_param_bytes(s, "last") for s in range(3)]
    assert sum(origin) == sum(last)
    head = (m.vocab_size * m.d_model + m.d_model) * m.param_dtype_bytes  # LM head + final norm
    assert (origin[0] - last[0], last[2] - origin[2], last[1]) == (head, head, origin[1])


def test_a_schedule_keeps_its_placement_and_an_older_one_loads_at_the_origin():
    sched = with_loss_at(make_schedule([1, 1, 1], [(0, 1, 2)], variant="baseline"), "baseline", "last")
    d = to_dict(sched)
    assert from_dict(json.loads(json.dumps(d))).variants["baseline"].loss_at == "last"
    del d["variants"]["baseline"]["loss_at"]
    assert from_dict(d).variants["baseline"].loss_at == "origin"
    d["variants"]["baseline"]["loss_at"] = "middle"
    with pytest.raises(ScheduleError, match="loss_at 'middle' is not one of origin, last"):
        from_dict(d)


def test_the_validator_refuses_a_loss_on_a_path_that_skips_the_last_stage():
    sc = make_scenario([1, 1, 1], path_length=2)
    sched = with_loss_at(make_schedule([1, 1, 1], [(0, 1)]), "ca-partial", "last")
    assert [v.rule for v in violations(sched, sc)] == ["LOSS"]


def test_swarm_scores_each_microbatch_where_its_routed_path_ends(tiny_scenario):
    sc = tiny_scenario
    v = online_variant("swarm", sc, TINY_ALLOCATION, 0)
    sched = Schedule(sc.name, sc.content_hash, sc.source, tuple(TINY_ALLOCATION), {"swarm": v})
    assert v.loss_at == "last" and violations(sched, sc) == []
    for seed in (0, 1):
        r, paths = simulate_online(sched, "swarm", sc, seed)
        end = {p.microbatch: p.nodes[-1] for p in paths}
        assert {e["microbatch"]: e["node"] for e in op_events(r) if e["kind"] == "L"} == end
        assert set(end.values()) <= set(TINY_ALLOCATION[-1])


def test_moving_the_untied_head_changes_where_it_sits_not_what_it_computes(tiny_scenario):
    """Every tensor starts from its own key's seed, so both placements start from one model."""
    cfg, n = tiny_scenario.model, tiny_scenario.pipeline.n_stages
    at = {where: build_stages(cfg, n, seed=0, device="cpu", loss_at=where) for where in ("origin", "last")}
    assert head_of(at["origin"]).stage == 0 and head_of(at["last"]).stage == n - 1
    assert not hasattr(at["last"][0], "lm_head") and hasattr(at["last"][0], "embedding")
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.ctx_tokens + 1), generator=gen)
    for path in ((0, 1, 2, 3), (0, 2, 1)):  # a partial path is still scored by the head
        losses = {where: forward_path(stages, tokens, path).item() for where, stages in at.items()}
        assert losses["origin"] == losses["last"]


def test_planning_places_the_full_pipelines_loss_as_asked(tiny_scenario):
    from skippipe.plan_options import PlanOptions
    from skippipe.planning import build_schedule

    wanted = ("baseline", "1f1b", "swarm", "random")
    for asked, full in ((None, "last"), ("origin", "origin"), ("last", "last")):
        opts = PlanOptions(variants=wanted, time_limit_s=2, workers=1, loss_at=asked)
        sched = build_schedule(tiny_scenario, opts, progress=lambda line: None)
        got = {name: v.loss_at for name, v in sched.variants.items()}
        assert got == {"baseline": full, "1f1b": full, "swarm": full, "random": "origin"}, asked


def test_a_bad_loss_placement_is_one_line_and_exit_2(capsys):
    from skippipe.cli import main

    with pytest.raises(SystemExit) as e:
        main(["schedule", "settings/tiny.toml", "--loss-at", "middle"])
    assert e.value.code == 2
    assert "invalid choice: 'middle'" in capsys.readouterr().err


def test_a_checkpoint_keeps_its_head_on_the_last_stage_and_inference_borrows_it(tmp_path, tiny_scenario):
    from skippipe.runtime.launch.infer import load_trained_stage
    from skippipe.train.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint

    cfg, n = tiny_scenario.model, tiny_scenario.pipeline.n_stages
    stages = build_stages(cfg, n, seed=5, device="cpu", loss_at="last")
    with torch.no_grad():
        stages[-1].lm_head.weight.add_(1.0)  # trained: no longer the seeded start
    info = CheckpointInfo(cfg, n, 1, 10, "1f1b", "tiny", "h", "builtin", "x.model", 5, "last")
    save_checkpoint(stages, tmp_path / "checkpoint", info)
    got_info, loaded = load_checkpoint(tmp_path / "checkpoint", "cpu")
    assert got_info.loss_at == "last" and head_of(loaded).stage == n - 1
    torch.testing.assert_close(loaded[-1].lm_head.weight, stages[-1].lm_head.weight)
    origin = load_trained_stage(tmp_path, node=0, stage=0, n_stages=n, device="cpu")
    torch.testing.assert_close(origin.lm_head.weight, stages[-1].lm_head.weight)
    torch.testing.assert_close(origin.embedding.weight, stages[0].embedding.weight)


def test_the_last_stage_scores_a_late_loss_with_its_iterations_labels(tiny_scenario):
    """A restarted microbatch may reach the last stage after it stepped: the late loss scores
    the labels of the microbatch's own iteration and sends back the input gradient only."""
    from skippipe.runtime.node.compute import StageCompute
    from skippipe.train.optim import TrainConfig

    sc = tiny_scenario
    last = sc.pipeline.n_stages - 1
    c = StageCompute(
        sc,
        sc.model,
        last,
        torch.device("cpu"),
        TrainConfig.from_scenario(sc, seed=0),
        n_microbatches=2,
        loss_at="last",
    )
    assert c.serves(L(0), 0)  # the loss runs on the head, whatever stage its hop names
    assert c.serves(Op.parse("F0.3"), last) and not c.serves(Op.parse("F0.0"), 0)
    gen = torch.Generator().manual_seed(3)
    b, t, d = sc.pipeline.samples_per_microbatch, sc.model.ctx_tokens, sc.model.d_model
    labels = {it: torch.randint(0, sc.model.vocab_size, (b, t + 1), generator=gen) for it in (4, 5)}
    h = torch.randn((b, t, d), generator=gen)
    c.begin_iteration(4)
    c.batch[1] = labels[4]
    c.begin_iteration(5)  # iteration 4 stepped; its labels stay for a late loss
    c.batch[1] = labels[5]
    got = c.run_late(4, L(1), h.clone(), stage=0)
    x = h.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(c._head().loss(x, labels[4][:, 1:]) / 2, x)
    torch.testing.assert_close(got, want)
    assert all(p.grad is None for p in c.params) and c.loss_count == 0
    assert c.run_late(3, L(1), h.clone()) is None  # older labels are gone
