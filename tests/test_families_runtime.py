"""Same loss, any full-pipeline family: naive, GPipe, 1F1B and ZB-H1 run the baseline's
microbatches along the baseline's paths and differ only in the order of operations; DualPipeV
runs the same microbatches from the same data nodes through every stage in order, each node
holding two of them (V placement). Each puts the LM head and the loss on the last stage. So a
distributed run of each trains exactly like single-process training with the head there (float
tolerance)."""

import json

import pytest
import torch

from conftest import SETTINGS
from runtime_util import free_base_port, run_skippipe
from skippipe.memory import peak_along
from skippipe.scenario import load_scenario
from skippipe.schedule_file import load_schedule
from skippipe.timeline import read_jsonl
from skippipe.train.data import prepare_data, training_batches
from skippipe.train.local import baseline_paths
from skippipe.train.model import build_stages, forward_path
from skippipe.train.optim import clip_stage, learning_rate, make_optimizer, set_learning_rate
from skippipe.train.recipe import recipe_config
from skippipe.variants import REGISTRY

FAMILIES = tuple(v.name for v in REGISTRY.values() if v.family)  # in table order

TINY = SETTINGS / "tiny.toml"
ITERATIONS = 2
RUN_DEADLINE_S = 240  # generous: 2 shared cores, 6 processes each importing torch


@pytest.fixture(scope="module")
def single_process():
    """Per-iteration mean losses and iteration 0's gradients per stage of single-process training
    along the baseline's paths."""
    sc = load_scenario(TINY)
    torch.manual_seed(sc.training.seed)
    stages = build_stages(sc.model, sc.pipeline.n_stages, sc.training.seed, "cpu", loss_at="last")
    cfg = recipe_config(sc, iterations=ITERATIONS, seed=sc.training.seed)  # the runtime's recipe
    optimizer = make_optimizer(stages, cfg)
    data = prepare_data(None, sc.model.vocab_size)
    batches = training_batches(
        data.train, sc.pipeline.samples_per_microbatch, sc.model.ctx_tokens, sc.training.seed
    )
    paths = baseline_paths(sc.pipeline.n_stages, 6)
    losses, grads = [], None
    for it in range(ITERATIONS):  # as train_iteration, keeping iteration 0's raw gradients
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for path in paths:
            loss = forward_path(stages, next(batches), path)
            (loss / len(paths)).backward()
            total += loss.item()
        losses.append(total / len(paths))
        if it == 0:
            grads = [{k: p.grad.clone() for k, p in s.named_parameters()} for s in stages]
        for s in stages:
            clip_stage(s, cfg.grad_clip)
        set_learning_rate(optimizer, learning_rate(it, cfg))
        optimizer.step()
    return losses, grads


@pytest.fixture(scope="module")
def family_memory_schedule(tmp_path_factory):
    """dualpipev's V order fits no 2 slots of tiny: it runs under its own memory rule there."""
    from skippipe.plan_options import PlanOptions
    from skippipe.planning import build_schedule
    from skippipe.schedule_file import save_schedule

    opts = PlanOptions(variants=("baseline", "dualpipev"), time_limit_s=2, workers=1, family_memory=True)
    path = tmp_path_factory.mktemp("family-memory") / "tiny.json"
    save_schedule(build_schedule(load_scenario(TINY), opts), path)
    return path


@pytest.mark.swarm
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_like_single_process(tmp_path, request, single_process, family):
    """Capped forms within tiny's slots (the default), dualpipev under its own rule."""
    tiny_schedule = request.getfixturevalue(
        "family_memory_schedule" if family == "dualpipev" else "tiny_schedule"
    )
    base = free_base_port(6, seed=hash(family) % 1000)
    r = run_skippipe(
        [
            "run",
            "0",
            "6",
            family,
            "0",
            "--scenario",
            str(TINY),
            "--schedule",
            str(tiny_schedule),
            "--iterations",
            str(ITERATIONS),
            "--base-port",
            str(base),
            "--runs",
            str(tmp_path / "runs"),
            "--peer-timeout",
            "30",
            "--no-emulate-compute",
            "--no-emulate-links",
            "--dump-gradients",
        ],
        cwd=tmp_path,
        timeout_s=RUN_DEADLINE_S,
    )
    assert r.returncode == 0, r.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = read_jsonl(run_dir / "events")
    want_losses, want_grads = single_process
    for it, want in enumerate(want_losses):
        ends = [e for e in events if e["event"] == "iteration_end" and e["iteration"] == it]
        got = sum(e["loss_sum"] for e in ends) / sum(e["loss_count"] for e in ends)
        assert got == pytest.approx(want, rel=1e-5), (family, it)

    variant = json.loads(tiny_schedule.read_text())["variants"][family]
    stages = variant.get("allocation", json.loads(tiny_schedule.read_text())["allocation"])["stages"]
    for stage, nodes in enumerate(stages):  # dualpipev: each node holds a stage and its mirror
        for node in nodes:
            got = torch.load(run_dir / "grads" / f"node-{node}.pt", weights_only=True)[stage]
            assert set(got) == set(want_grads[stage])
            for k, want in want_grads[stage].items():
                torch.testing.assert_close(got[k], want, rtol=1e-4, atol=1e-6)

    ops = [e for e in events if e["event"] == "op"]
    n_w = sum(e["kind"] == "W" for e in ops)
    assert n_w == (sum(e["kind"] == "B" for e in ops) if family in ("zb-h1", "dualpipev") else 0)
    # nodes run their action lists exactly: each holds the activations the family's rule says
    sc = load_scenario(TINY)
    variant = load_schedule(tiny_schedule, sc)[0].variant(family)
    for e in events:
        if e["event"] == "iteration_end":
            assert e["peak_activations"] == peak_along(variant.actions(e["node"]), variant.split_backward)
