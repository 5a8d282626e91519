"""Inference with failed nodes: perplexity of a trained run through its live nodes only.

The failed nodes are simply not started. The first live data node streams validation windows
through one live node of every stage that still has one (a stage with no live node is jumped
over, as SkipPipe's paths allow), each node runs its stage's layers without gradients, and the
origin scores the returning activations. The result must agree with single-process evaluation
with the same stages omitted (evaluate.py), which `python -m skippipe infer` prints beside it.

`compare_perplexity` is that command: `distributed_perplexity` starts the live nodes (each runs
`node_main`), `local_perplexity` evaluates the checkpoint in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...errors import SkipPipeError
from ...schedule_file import load_schedule
from ...train.checkpoint import STAGE_FILE, load_stage_file, read_checkpoint_info
from ...train.data import prepare_data, validation_batches
from ...train.model import Stage, build_stage, load_stage_state
from ...util.devices import device_for
from ...variants import variant
from ..net.frames import TransportConfig
from ..net.transport import Transport, TransportError
from ..net.wire import Kind, Message
from ..node.datamsg import pack_path, unpack_path
from ..node.messenger import NodeFailure
from ..node.runconfig import RunConfig, load_config

log = logging.getLogger(__name__)

TAG_HOP, TAG_PATH_LO, TAG_PATH_HI = 0, 2, 3  # as in node.py's data messages
RUN_TIMEOUT_S = 600.0  # the whole distributed inference


@dataclass(frozen=True)
class InferencePlan:
    live: tuple[int, ...]  # nodes running
    path: tuple[int, ...]  # origin first, then one live node per stage that has one
    omitted_stages: tuple[int, ...]  # stages without a live node
    samples: int  # sequences per batch
    max_batches: int


def plan(
    allocation: tuple[tuple[int, ...], ...], failed: set[int], samples: int, max_batches: int, all_nodes: int
) -> InferencePlan:
    live = tuple(n for n in range(all_nodes) if n not in failed)
    origins = [n for n in allocation[0] if n not in failed]
    if not origins:
        raise SkipPipeError("every data node failed: nothing can run inference")
    path, omitted = [origins[0]], []
    for stage, nodes in enumerate(allocation[1:], start=1):
        alive = [n for n in nodes if n not in failed]
        if alive:
            path.append(alive[0])
        else:
            omitted.append(stage)
    return InferencePlan(live, tuple(path), tuple(omitted), samples, max_batches)


def load_trained_stage(run_dir: Path, node: int, stage: int, n_stages: int, device) -> Stage:
    """The node's own saved stage if it has one, else the run's stage file. Inference scores at
    the origin: a model trained with its head on the last stage lends stage 0 a read-only copy
    of the head from the run's last stage file."""
    ckpt = run_dir / "checkpoint"
    info = read_checkpoint_info(ckpt)
    own = ckpt / "nodes" / f"node-{node}" / STAGE_FILE.format(stage=stage)
    path = own if own.is_file() else ckpt / STAGE_FILE.format(stage=stage)
    borrow = stage == 0 and info.loss_at == "last"
    module = build_stage(info.model, stage, n_stages, device, loss_at="origin" if borrow else info.loss_at)
    state = load_stage_file(path)
    if borrow:
        last = load_stage_file(ckpt / STAGE_FILE.format(stage=n_stages - 1))
        state = {**state, **{k: v for k, v in last.items() if not k.startswith("layers.")}}
    load_stage_state(module, state)
    return module.eval()


class InferenceNode:
    def __init__(self, cfg: RunConfig, node_id: int, p: InferencePlan):
        self.cfg, self.id, self.plan = cfg, node_id, p
        schedule, self.sc = load_schedule(cfg.schedule_path)
        self.schedule = schedule.for_variant(cfg.variant)
        self.stage = self.schedule.stage_of()[node_id]
        self.device = device_for(node_id)
        self.module = load_trained_stage(
            Path(cfg.run_dir), node_id, self.stage, self.sc.pipeline.n_stages, self.device
        )
        self.info = read_checkpoint_info(Path(cfg.run_dir) / "checkpoint")

    async def run(self) -> dict | None:
        host, port = self.cfg.peers[self.id]
        limits = TransportConfig.for_stage(self.module.cfg, self.plan.samples, self.module)
        async with Transport(
            self.id,
            host,
            port,
            self.cfg.peers,
            Path(self.cfg.run_dir) / "transport",
            auth=self.cfg.auth(),
            config=limits,
        ) as t:
            self.t = t
            await self._hello()
            if self.id == self.plan.path[0]:
                result = await self._score()
                for n in self.plan.live:
                    if n != self.id:
                        await t.send(n, Message.from_json(Kind.CONTROL, self.id, {"stop": 1}))
                return result
            await self._serve()
        return None

    async def _hello(self) -> None:
        others = set(self.plan.live) - {self.id}
        deadline = time.monotonic() + self.cfg.connect_timeout_s
        for n in sorted(others):
            await self.t.send(
                n,
                Message.from_json(Kind.CONTROL, self.id, {"hello": 1}),
                timeout_s=max(0.1, deadline - time.monotonic()),
            )
        heard: set[int] = set()
        self.early: list[Message] = []  # work that arrived before every greeting did
        while others - heard:
            msg = await self.t.recv(timeout_s=max(0.1, deadline - time.monotonic()))
            if msg.kind == Kind.CONTROL and "hello" in msg.json():
                heard.add(msg.sender)
            else:
                self.early.append(msg)

    async def _next(self) -> Message:
        if self.early:
            return self.early.pop(0)
        return await self.t.recv(timeout_s=self.cfg.peer_timeout_s * 10)

    async def _serve(self) -> None:
        while True:
            msg = await self._next()
            if msg.kind == Kind.CONTROL and "stop" in msg.json():
                return
            if msg.kind == Kind.FORWARD:
                with torch.no_grad():
                    out = self.module.run_layers(msg.to_torch().to(self.device)).cpu()
                await self._forward(out, msg.tags[TAG_HOP] + 1, msg.microbatch)

    async def _forward(self, h: torch.Tensor, hop: int, batch: int) -> None:
        path = self.plan.path
        dst = path[hop] if hop < len(path) else path[0]
        tags = (hop, 0, *pack_path(path))
        await self.t.send(dst, Message.from_tensor(Kind.FORWARD, self.id, h, microbatch=batch, tags=tags))

    async def _score(self) -> dict:
        data = prepare_data(None, self.info.model.vocab_size)
        batches = validation_batches(
            data.validation, self.plan.samples, self.info.model.ctx_tokens, self.plan.max_batches
        )
        nll, tokens = 0.0, 0
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            with torch.no_grad():
                h = self.module.run_layers(self.module.embed(batch[:, :-1])).cpu()
            await self._forward(h, 1, i)
            while True:
                msg = await self._next()
                if msg.kind == Kind.FORWARD and msg.microbatch == i:
                    break
            assert unpack_path(msg.tags[TAG_PATH_LO], msg.tags[TAG_PATH_HI]) == self.plan.path
            with torch.no_grad():
                token_nll = self.module.token_nll(msg.to_torch().to(self.device), batch[:, 1:])
            nll += float(token_nll.sum())
            tokens += token_nll.numel()
        return {"nll_sum": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens), **asdict(self.plan)}


def node_main(config_path: str, node_id: int, plan_path: str) -> int:
    cfg = load_config(config_path)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    p = InferencePlan(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in json.loads(Path(plan_path).read_text()).items()
        }
    )
    try:
        result = asyncio.run(InferenceNode(cfg, node_id, p).run())
    except (NodeFailure, TransportError, TimeoutError) as e:
        log.error("[node %d] inference failed: %s", node_id, e)
        return 1
    if result is not None:
        Path(plan_path).with_suffix(".result.json").write_text(json.dumps(result, indent=1))
    return 0


# ----------------------------------------------------------------------------------------------
# The `infer` command: start the live nodes, compare with single-process evaluation.


def parse_failed(text: str, n_nodes: int) -> set[int]:
    """'4,5' -> {4, 5}, each a node of the run."""
    try:
        failed = {int(x) for x in text.split(",") if x.strip()}
    except ValueError:
        raise SkipPipeError(f"--failed {text!r}: expected comma-separated node ids") from None
    bad = sorted(n for n in failed if not 0 <= n < n_nodes)
    if bad:
        raise SkipPipeError(f"--failed: node {bad[0]} is not in the run (0..{n_nodes - 1})")
    return failed


def distributed_perplexity(run_dir: Path, failed: set[int], max_batches: int, samples: int = 0) -> dict:
    """Start the live nodes of `run_dir` for inference and return the origin's result."""
    from ...util.procs import supervised
    from .supervisor import Launcher  # the launcher plans schedules (OR-Tools): not for every node

    cfg = load_config(run_dir / "config.json")
    if not (run_dir / "checkpoint" / "checkpoint.json").is_file():
        raise SkipPipeError(f"{run_dir}: no checkpoint (train with --checkpoint)")
    if variant(cfg.variant).v_placed:  # inference nodes serve one stage each
        raise SkipPipeError(
            f"{run_dir}: {cfg.variant} nodes hold two stages; evaluate its checkpoint "
            f"in one process: python -m skippipe evaluate {run_dir / 'checkpoint'}"
        )
    sched, sc = load_schedule(cfg.schedule_path)
    p = plan(
        sched.allocation_of(cfg.variant),
        failed,
        samples or sc.pipeline.samples_per_microbatch,
        max_batches,
        len(sc.nodes),
    )
    plan_path = _plan_path(run_dir, failed)
    plan_path.write_text(json.dumps(asdict(p)))
    launcher = Launcher(cfg, p.live, command=("infer-node",), extra=(str(plan_path),))
    with supervised(launcher.children):
        launcher.start()
        finished = launcher.wait(RUN_TIMEOUT_S)
        culprits = sorted(launcher.failed()) if finished else sorted(launcher.children.running())
    _tidy_logs(run_dir, p.live, culprits, "failed" if finished else f"did not finish in {RUN_TIMEOUT_S:g} s")
    return json.loads(plan_path.with_suffix(".result.json").read_text())


def _tidy_logs(run_dir: Path, nodes, culprits: list[int], what: str) -> None:
    """Remove the inference logs of the nodes that did their part; keep the culprits' and name
    them in the error (a failed inference left every node's log behind, unnamed)."""
    for n in nodes:
        if n not in culprits:
            (run_dir / f"node-{n}-infer-node.log").unlink(missing_ok=True)
    if culprits:
        logs = ", ".join(str(run_dir / f"node-{n}-infer-node.log") for n in culprits)
        raise SkipPipeError(f"inference node(s) {', '.join(map(str, culprits))} {what}; see {logs}")


def _plan_path(run_dir: Path, failed: set[int]) -> Path:
    return run_dir / f"infer-failed-{'-'.join(map(str, sorted(failed))) or 'none'}.json"


@contextlib.contextmanager
def _removed_on_error(*paths: Path):
    """A failed command leaves none of `paths` (its plan, a partial result) behind."""
    try:
        yield
    except BaseException:
        for p in paths:
            p.unlink(missing_ok=True)
        raise


def local_perplexity(run_dir: Path, omitted, max_batches: int, samples: int) -> float:
    """Single-process perplexity of the run's checkpoint with `omitted` stages left out."""
    from ...train.checkpoint import load_checkpoint
    from ...train.evaluate import perplexity

    info, stages = load_checkpoint(run_dir / "checkpoint", "cpu")
    data = prepare_data(None, info.model.vocab_size)
    batches = validation_batches(data.validation, samples, info.model.ctx_tokens, max_batches)
    return perplexity(stages, batches, tuple(omitted)).perplexity


def compare_perplexity(
    run_dir: str | Path, failed: str, max_batches: int, samples: int = 0, say=print
) -> int:
    """Perplexity through the live nodes of `run_dir` (nodes `failed` down) beside the
    single-process figure with the same stages omitted; prints both."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.json")
    down = parse_failed(failed, len(cfg.peers))
    plan_path = _plan_path(run_dir, down)
    with _removed_on_error(plan_path, plan_path.with_suffix(".result.json")):
        result = distributed_perplexity(run_dir, down, max_batches, samples)
        local = local_perplexity(run_dir, result["omitted_stages"], max_batches, result["samples"])
    say(
        f"failed nodes {sorted(down) or 'none'}: path {result['path']}, stages omitted "
        f"{result['omitted_stages'] or 'none'}"
    )
    say(
        f"perplexity through live nodes {result['perplexity']:.4f} | single process, same stages "
        f"omitted {local:.4f} | relative difference {abs(result['perplexity'] / local - 1):.2e}"
    )
    return 0
