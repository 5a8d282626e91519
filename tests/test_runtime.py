"""Node processes on loopback: a swarm trains, the distributed result equals single-process
training, junk on the wire does not crash a node, and no process is left behind."""

import json
import math
import socket
import threading
import time

import pytest
import torch

from conftest import SETTINGS
from runtime_util import alive, free_base_port, run_skippipe
from skippipe.scenario import load_scenario
from skippipe.timeline import read_jsonl
from skippipe.train.data import prepare_data, training_batches
from skippipe.train.local import baseline_paths
from skippipe.train.model import build_stages, forward_path

TINY = SETTINGS / "tiny.toml"
RUN_DEADLINE_S = 240  # generous: 2 shared cores, 6 processes each importing torch
READY_DEADLINE_S = 120


def _run(tmp_path, schedule, variant, *extra):
    base = free_base_port(6, seed=hash(variant) % 1000)
    args = [
        "run",
        "0",
        "6",
        variant,
        "0",
        "--scenario",
        str(TINY),
        "--schedule",
        str(schedule),
        "--base-port",
        str(base),
        "--runs",
        str(tmp_path / "runs"),
        "--peer-timeout",
        "30",
        *extra,
    ]
    return base, args


def _run_dir(tmp_path):
    dirs = list((tmp_path / "runs").iterdir())
    assert len(dirs) == 1
    return dirs[0]


def _wait_ready(tmp_path, node: int) -> bool:
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        for f in (tmp_path / "runs").glob(f"*/events/node-{node}.jsonl"):
            if '"ready"' in f.read_text():
                return True
        time.sleep(0.05)  # polling a file another process writes
    return False


def _send_junk(tmp_path, port: int, sent: threading.Event):
    if not _wait_ready(tmp_path, 0):
        return
    for junk in (
        b"\x00" * 64,
        b"\xe4\xe5\xf3\xc6" + b"\x01" * 32 + (40).to_bytes(32, "big") + b"SP" + b"\xff" * 38,
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(junk)
    sent.set()


@pytest.mark.swarm
def test_swarm_trains_ca_partial_and_survives_junk(tmp_path, tiny_schedule):
    base, args = _run(tmp_path, tiny_schedule, "ca-partial", "--iterations", "2")
    sent = threading.Event()
    junk = threading.Thread(target=_send_junk, args=(tmp_path, base, sent), daemon=True)
    junk.start()
    r = run_skippipe(args, cwd=tmp_path, timeout_s=RUN_DEADLINE_S)
    junk.join(timeout=10)
    assert r.returncode == 0, r.stdout
    assert sent.is_set()
    run_dir = _run_dir(tmp_path)
    rows = json.loads((run_dir / "iterations.json").read_text())
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    assert "summary:" in r.stdout and "iteration   1" in r.stdout
    events = read_jsonl(run_dir / "events")
    pids = [e["pid"] for e in events if e["event"] == "ready"]
    assert len(pids) == 6 and not any(alive(p) for p in pids)
    ops = [e for e in events if e["event"] == "op" and e["kind"] in "FLB"]
    assert len(ops) == 2 * 6 * (2 * 3 + 1)  # 2 iterations x 6 microbatches x (3 F + L + 3 B)


@pytest.mark.swarm
def test_distributed_gradients_equal_single_process(tmp_path, tiny_schedule):
    _, args = _run(
        tmp_path,
        tiny_schedule,
        "baseline",
        "--iterations",
        "1",
        "--no-emulate-compute",
        "--no-emulate-links",
        "--dump-gradients",
    )
    r = run_skippipe(args, cwd=tmp_path, timeout_s=RUN_DEADLINE_S)
    assert r.returncode == 0, r.stdout
    run_dir = _run_dir(tmp_path)

    sc = load_scenario(TINY)
    torch.manual_seed(sc.training.seed)
    stages = build_stages(sc.model, sc.pipeline.n_stages, sc.training.seed, "cpu", loss_at="last")
    data = prepare_data(None, sc.model.vocab_size)
    batches = training_batches(
        data.train, sc.pipeline.samples_per_microbatch, sc.model.ctx_tokens, sc.training.seed
    )
    paths = baseline_paths(sc.pipeline.n_stages, 6)
    losses = []
    for path in paths:
        loss = forward_path(stages, next(batches), path)
        (loss / len(paths)).backward()
        losses.append(loss.item())

    ends = [e for e in read_jsonl(run_dir / "events") if e["event"] == "iteration_end"]
    dist_loss = sum(e["loss_sum"] for e in ends) / sum(e["loss_count"] for e in ends)
    assert dist_loss == pytest.approx(sum(losses) / len(losses), rel=1e-5)

    cfg = json.loads((run_dir / "config.json").read_text())
    stage_of = {
        n: s
        for s, nodes in enumerate(json.loads(tiny_schedule.read_text())["allocation"]["stages"])
        for n in nodes
    }
    assert len(cfg["peers"]) == 6
    for node, stage in stage_of.items():
        got = torch.load(run_dir / "grads" / f"node-{node}.pt", weights_only=True)[stage]
        want = {k: p.grad for k, p in stages[stage].named_parameters()}
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6)


@pytest.mark.swarm
def test_a_busy_port_is_one_clear_error(tmp_path, tiny_schedule):
    base, args = _run(tmp_path, tiny_schedule, "random", "--iterations", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 2))
        s.listen()
        r = run_skippipe(args, cwd=tmp_path, timeout_s=RUN_DEADLINE_S)
    assert r.returncode == 2
    assert (
        r.stdout.strip()
        .splitlines()[-1]
        .startswith(f"error: port 127.0.0.1:{base + 2} for node 2 is not free")
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
