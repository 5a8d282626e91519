"""`python -m skippipe train SCHEDULE --variant V` reproduces a distributed run of the same
schedule (`./run.sh`): the same recipe (warm-up, cosine decay over the run's iterations), data
order, seeds, head placement and clipping, so the same loss at every iteration. Checked for
ca-partial (partial paths, loss at the origin) and 1F1B (full pipeline, loss on the last
stage), over enough iterations for the learning rate to change."""

import json

import pytest

from conftest import SETTINGS
from runtime_util import free_base_port, run_skippipe
from skippipe.train.study import StudyOptions, run_study

TINY = SETTINGS / "tiny.toml"
ITERATIONS = 3  # cosine decay: a different learning rate at each step
RUN_DEADLINE_S = 240  # generous: 2 shared cores, 6 processes each importing torch


def single_process_losses(schedule, variant, out) -> list[float]:
    opts = StudyOptions(
        str(schedule),
        variant,
        log_every=1,
        warmup=None,
        cosine=True,
        checkpoint_every=0,
        eval_batches=0,
        iterations=ITERATIONS,
        out=str(out),
        device="cpu",
    )
    assert run_study(opts, say=lambda line: None) == 0
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e["event"] == "iteration"]


@pytest.mark.swarm
@pytest.mark.parametrize("variant", ["ca-partial", "1f1b"])
def test_train_reproduces_the_run_loss_for_loss(tmp_path, tiny_schedule, variant):
    base = free_base_port(6, seed=hash(variant) % 1000)
    r = run_skippipe(
        [
            "run",
            "0",
            "6",
            variant,
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
        ],
        cwd=tmp_path,
        timeout_s=RUN_DEADLINE_S,
    )
    assert r.returncode == 0, r.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    distributed = [row["loss"] for row in json.loads((run_dir / "iterations.json").read_text())]
    single = single_process_losses(tiny_schedule, variant, tmp_path / "train")
    assert len(distributed) == len(single) == ITERATIONS
    assert distributed == pytest.approx(single, rel=1e-5, abs=1e-5)
    assert single[-1] < single[0]  # it trains
