"""One node process of a distributed run: its stage's weights, its operations, its messages.

Per iteration a node runs the operations the schedule gives it (dispatch.py decides which one
next): a data node embeds its microbatches and starts them along their paths; a forward runs
the stage's layers and sends the activations to the next hop (or back to the origin); the origin
computes the loss and sends the gradient back along the reversed path; each backward sends the
input gradient one hop back. When all its operations are done, the node sums its stage's
gradients with the live nodes of its stage (averaging.py), clips them, and takes exactly one
AdamW step; no barrier spans all nodes. Loss is divided by the iteration's microbatch count at
the origin, so summing a stage's partial gradients gives the full-batch gradient.

Failures (liveness.py, recovery.py): data messages carry their microbatch's path and attempt
number, so a node can serve a re-routed microbatch it was not planned for. When a peer dies the
iteration turns *degraded*: nodes run first come first served and end the iteration once every
live data node has reported DONE; each data node restarts its unfinished microbatches that
touched a dead node on a repaired path (attempt + 1). A node that already finished the
iteration still serves late operations for it, computing input gradients only. A restarted
attempt may repeat gradient contributions its failed attempt already made on later hops: a bias
of at most one microbatch per affected stage, in the failure's iteration only.

Emulation: each operation is padded to the scenario's compute time for this node, and each
message waits on its emulated link (scenario bytes, not the tiny model's), both x time_scale.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import faults as faults_mod
from .averaging import StageAverager, load_stage_state_vector, stage_state_vector
from ..costs import Costs
from ..train.data import prepare_data, training_batches
from ..dispatch import Dispatcher
from ..errors import SkipPipeError
from .linkemu import LinkEmulator, LinkModel
from .liveness import Liveness
from ..ops import B, F, L, Op, OpKind, next_op, node_of
from ..train.model import CheckpointInfo, build_stage, save_checkpoint, save_stage
from .recovery import live_variant, repair_path
from .runconfig import EventWriter, RunConfig, events_dir
from ..scenario import ModelConfig, load_scenario
from ..schedule import Hop, MicrobatchPath, load_schedule
from ..train.optim import TrainConfig, clip_stage, learning_rate, make_optimizer
from .transport import Transport, TransportError
from .wire import Kind, Message

log = logging.getLogger(__name__)

TAG_HOP, TAG_ATTEMPT, TAG_PATH_LO, TAG_PATH_HI = range(4)  # wire tags of FORWARD/BACKWARD
NODE_BITS = 15  # a path's node ids are packed 4 to a tag, as id + 1 (0 = no hop)
MAX_PATH_HOPS = 8
HELLO_RETRY_S = 0.1  # pause between start-up greetings while peers come up
CLOSE_GRACE_S = 0.2  # a closed connection counts as a crash unless "finished" arrives by then
STALL_FACTOR = 3  # no progress for this many peer timeouts: give up (a bug, not a failure)


def device_for(node_id: int) -> torch.device:
    """CUDA devices round-robin over the node ids, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{node_id % torch.cuda.device_count()}")
    return torch.device("cpu")


def stand_in(model: ModelConfig, settings: str) -> ModelConfig:
    """The model a node really runs: the scenario's, or a stand-in's dimensions with the
    scenario's layer count (so a CPU box can replay a large model's schedule)."""
    if not settings:
        return model
    return dataclasses.replace(load_scenario(settings).model, n_layers=model.n_layers)


def pack_path(nodes: tuple[int, ...]) -> tuple[int, int]:
    if len(nodes) > MAX_PATH_HOPS or max(nodes) >= 2**NODE_BITS - 1:
        raise ValueError(f"path {nodes} too long or node ids too large for the wire tags")
    words = [0, 0]
    for i, n in enumerate(nodes):
        words[i // 4] |= (n + 1) << (NODE_BITS * (i % 4))
    return words[0], words[1]


def unpack_path(lo: int, hi: int) -> tuple[int, ...]:
    nodes = []
    for word in (lo, hi):
        for i in range(4):
            v = (word >> (NODE_BITS * i)) & (2**NODE_BITS - 1)
            if v:
                nodes.append(v - 1)
    return tuple(nodes)


class NodeFailure(Exception):
    """This node cannot go on."""


class Node:
    def __init__(self, cfg: RunConfig, node_id: int, rejoin: bool = False):
        self.cfg, self.id, self.rejoin = cfg, node_id, rejoin
        self.sc = load_scenario(cfg.scenario_path, cfg.scenario_overrides)
        self.schedule, _ = load_schedule(cfg.schedule_path, self.sc)
        self.variant = self.schedule.variant(cfg.variant)
        self.stage_of = self.schedule.stage_of()
        self.stage = self.stage_of[node_id]
        self.data_nodes = set(self.schedule.allocation[0])
        self.costs = Costs(self.sc)
        self.train_cfg = TrainConfig.from_scenario(self.sc, seed=cfg.seed)
        self.events = EventWriter(events_dir(cfg.run_dir) / f"node-{node_id}.jsonl", node_id, cfg.epoch)
        self.device = device_for(node_id)
        self.model_cfg = stand_in(self.sc.model, cfg.stand_in_model)
        self.module = build_stage(self.model_cfg, self.stage, self.sc.pipeline.n_stages, self.device, cfg.seed)
        self.optimizer = make_optimizer([self.module], self.train_cfg)
        self.pool = ThreadPoolExecutor(max_workers=1)  # torch work off the event loop, in order
        self.failures = [f for f in cfg.failures if f["node"] == node_id]
        self.slow = 1.0
        self.inbox: dict[int, list[Message]] = {}  # iteration -> messages not yet used
        self.wake = asyncio.Event()
        self.sends: set[asyncio.Task] = set()
        self.n_microbatches = len(self.variant.paths)
        self.my_microbatches = [p.microbatch for p in self.variant.paths if p.origin == node_id]
        self.iteration_now = 0
        self.late: list[Message] = []  # operations of iterations this node already finished
        self.late_saved: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.done_from: dict[int, set[int]] = {}  # iteration -> data nodes that reported DONE
        self.news = False  # a peer died since the loop last looked
        self.rejoin_requests: set[int] = set()  # restarted peers asking to come back
        self.revive_at: dict[int, set[int]] = {}  # iteration -> peers planned in again from then
        self.sponsoring: dict[int, set[int]] = {}  # after this iteration, send these peers our state
        self.welcome: dict | None = None  # rejoining: the sponsor's plan and our stage's state
        self.greeted: set[int] = set()  # peers whose start-up greeting arrived

    # -- set-up -----------------------------------------------------------------------------
    def _emulator(self) -> LinkEmulator | None:
        if not self.cfg.emulate_links:
            return None
        models = {}
        for n in self.sc.nodes:
            if n.id != self.id:
                link = self.sc.link(self.id, n.id)
                models[n.id] = LinkModel(link.latency_s, link.bandwidth_bytes_per_s,
                                         self.sc.costs.per_hop_overhead_s, self.cfg.time_scale)
        return LinkEmulator(self.id, models)

    def _batches(self, first_iteration: int = 0):
        """The same token stream as single-process training: iteration i, microbatch g is
        batch i * N + g."""
        if not self.my_microbatches:
            return None
        self.data = prepare_data(None, self.model_cfg.vocab_size)
        stream = training_batches(self.data.train, self.sc.pipeline.samples_per_microbatch,
                                  self.model_cfg.ctx_tokens, self.cfg.seed)
        for _ in range(first_iteration * self.n_microbatches):
            next(stream)
        return stream

    async def run(self) -> None:
        host, port = self.cfg.peers[self.id]
        self.transport = Transport(self.id, host, port, self.cfg.peers,
                                   Path(self.cfg.run_dir) / "transport", on_disconnect=self._closed)
        self.emulator = self._emulator()
        self.live = Liveness(self.id, list(self.cfg.peers), self.transport, self.cfg.peer_timeout_s,
                             self._on_dead)
        loop = asyncio.get_running_loop()
        async with self.transport:
            self.receiver = asyncio.create_task(self._receive())
            first = await self._come_back() if self.rejoin else await self._hello()
            batches = await loop.run_in_executor(self.pool, self._batches, first)
            self.live.start()
            self.averager = StageAverager(self, self.schedule.allocation[self.stage])
            self.events.write("ready", pid=os.getpid(), stage=self.stage, first_iteration=first)
            for it in range(first, self.cfg.iterations):
                await self.iteration(it, batches)
            if self.cfg.save_checkpoint:
                self._save_checkpoint()
            self.events.write("finished")
            await self._goodbye()
            self.live.stop()
            self.receiver.cancel()

    async def _hello(self) -> int:
        """Start-up barrier: greet every peer until it answers, within connect_timeout_s.
        Returns the first iteration to run (0)."""
        deadline = time.monotonic() + self.cfg.connect_timeout_s
        unsent = {n for n in self.cfg.peers if n != self.id}
        while unsent or set(self.cfg.peers) - self.greeted - {self.id}:
            for n in sorted(unsent):
                try:
                    await self.transport.send(n, Message.from_json(Kind.CONTROL, self.id, {"hello": 1}),
                                              timeout_s=max(0.1, deadline - time.monotonic()))
                    unsent.discard(n)
                except TransportError:
                    pass
            if time.monotonic() > deadline:
                missing = sorted(unsent | (set(self.cfg.peers) - self.greeted - {self.id}))
                raise NodeFailure(f"peers {missing} did not come up within {self.cfg.connect_timeout_s:g} s")
            await self._wait(HELLO_RETRY_S)
        return 0

    async def _come_back(self) -> int:
        """Rejoin a running training: ask every peer, then wait for the stage peer that
        sponsors us to send the iteration we start at, the dead set and our stage's state."""
        for n in self.cfg.peers:
            if n != self.id:
                asyncio.create_task(self._send_direct(n, Message.from_json(Kind.CONTROL, self.id, {"rejoin": 1})))
        deadline = time.monotonic() + self.cfg.connect_timeout_s + STALL_FACTOR * self.cfg.peer_timeout_s
        while self.welcome is None or "state" not in self.welcome:
            if time.monotonic() > deadline:
                raise NodeFailure("no live peer of this stage sponsored the rejoin in time")
            await self._wait(deadline - time.monotonic())
        w = self.welcome
        load_stage_state_vector(self.module, self.optimizer, w["state"], w["steps"])
        self.live.dead |= set(w["dead"])
        self.force_degraded = {w["iteration"]}
        self.events.write("rejoined", iteration=w["iteration"], sponsor=w["sponsor"])
        return w["iteration"]

    async def _send_direct(self, dst: int, msg: Message) -> None:
        """A control send that ignores the dead set (to or about a rejoining node)."""
        try:
            await self.transport.send(dst, msg, timeout_s=self.cfg.peer_timeout_s)
        except TransportError as e:
            log.warning("control message to node %d failed: %s", dst, e)

    async def _goodbye(self) -> None:
        """Tell every peer we are done, and keep serving late operations until every live peer
        is done too (or silent for the peer timeout)."""
        for n in self.live.live_peers():
            self._spawn_send(n, Message.from_json(Kind.CONTROL, self.id, {"finished": 1}))
        while set(self.live.live_peers()) - self.live.finished:
            if not await self._serve_late():
                await self._wait(self.live.interval_s)
        await self._drain_sends()

    # -- receiving --------------------------------------------------------------------------
    def _closed(self, peer: int) -> None:
        # the peer's last messages ("finished") may still sit in the inbox: look a bit later
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self.live.closed, peer)

    def _on_dead(self, peers: set[int], why: str) -> None:
        self.events.write("peer_dead", peers=sorted(peers), why=why, iteration=self.iteration_now)
        self.news = True
        self.wake.set()

    async def _receive(self) -> None:
        while True:
            msg = await self.transport.recv()
            self.live.seen(msg.sender)
            if msg.kind == Kind.CONTROL:
                self._control(msg)
            elif msg.kind == Kind.WEIGHTS:
                self.welcome = {**(self.welcome or {}), "state": msg.to_torch()}
            elif msg.kind == Kind.DONE:
                self.done_from.setdefault(msg.iteration, set()).add(msg.sender)
            elif msg.kind in (Kind.FORWARD, Kind.BACKWARD) and msg.iteration < self.iteration_now:
                self.late.append(msg)
            elif msg.kind != Kind.HEARTBEAT:
                self.inbox.setdefault(msg.iteration, []).append(msg)
            self.wake.set()

    def _control(self, msg: Message) -> None:
        body = msg.json()
        if "hello" in body:
            self.greeted.add(msg.sender)
        if "finished" in body:
            self.live.finished.add(msg.sender)
        if "dead" in body:
            self.live.declare(set(body["dead"]), f"reported by node {msg.sender}")
        if "restart" in body:
            self.inbox.setdefault(int(body["iteration"]), []).append(msg)
        if "rejoin" in body:
            self.rejoin_requests.add(msg.sender)
            self.wake.set()
        if "rejoin_at" in body:
            self.revive_at.setdefault(int(body["rejoin_at"]), set()).add(int(body["node"]))
        if "welcome" in body:
            self.welcome = {**(self.welcome or {}), "iteration": int(body["welcome"]), "dead": body["dead"],
                            "steps": body["steps"], "sponsor": msg.sender}

    async def _wait(self, timeout_s: float) -> None:
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), max(0.0, timeout_s))
        except TimeoutError:
            pass

    # -- one iteration ----------------------------------------------------------------------
    def _start_iteration(self, it: int, batches) -> Dispatcher:
        revived = self.revive_at.pop(it, set())
        for r in revived:
            self.live.revive(r)
        dead = self.live.dead
        variant = live_variant(self.variant, dead, self.schedule.allocation)
        self.paths = {p.microbatch: p for p in variant.paths}
        self.attempt = {mb: 0 for mb in self.paths}
        self.tensors: dict[Op, torch.Tensor] = {}
        self.saved: dict[tuple[int, int], tuple[torch.Tensor | None, torch.Tensor]] = {}
        # the iteration where a node comes back runs degraded: not everyone may know yet
        self.degraded = bool(dead) or bool(revived) or it in getattr(self, "force_degraded", ())
        self.completed: set[int] = set()
        self.loss_sum, self.loss_count = 0.0, 0
        disp = Dispatcher(variant.actions(self.id), self.sc.nodes[self.id].memory_slots,
                          planned=variant.planned)
        self.batch = {}
        if batches is not None:
            for g in range(self.n_microbatches):
                tokens = next(batches)
                if g in self.paths and self.paths[g].origin == self.id:
                    self.batch[g] = tokens.to(self.device)
                    disp.arrive(F(g, 0), time.monotonic())
        return disp

    async def iteration(self, it: int, batches) -> None:
        t0 = time.monotonic()
        self.iteration_now = it
        self.events.write("iteration_start", iteration=it)
        disp = self._start_iteration(it, batches)
        self.news = bool(self.live.dead)
        done_ops, progress = 0, time.monotonic()
        while not self._iteration_over(it, disp):
            if self.news:
                self._handle_deaths(it, disp)
            self._take_messages(it, disp)
            if await self._serve_late():
                continue
            op = disp.next_op()
            if op is None:
                if time.monotonic() - progress > STALL_FACTOR * self.cfg.peer_timeout_s:
                    raise NodeFailure(f"iteration {it}: no progress for {STALL_FACTOR * self.cfg.peer_timeout_s:g} s; "
                                      f"waiting for {disp.pending()[:4]}")
                await self._wait(self.live.interval_s)
                continue
            progress = time.monotonic()
            await self._maybe_fail(it, op.kind.value, done_ops)
            disp.start(op)
            await self._run_op(it, op)
            disp.finish(op)
            done_ops += 1
            self._note_completion(it, op)
        await self._maybe_fail(it, "averaging", 0)
        await self.averager.average(it)
        if self.cfg.dump_gradients and it == 0:
            self._dump_gradients()
        self._step(it)
        self._sponsor(it)
        self.iteration_now = it + 1
        self.late += [m for m in self.inbox.pop(it, []) if m.kind in (Kind.FORWARD, Kind.BACKWARD)]
        self.events.write("iteration_end", iteration=it, loss_sum=self.loss_sum,
                          loss_count=self.loss_count, wall_s=time.monotonic() - t0,
                          degraded=self.degraded)

    def _sponsor(self, it: int) -> None:
        """Plan restarted stage peers back in: the lowest live node of their stage announces
        the iteration they join at (two ahead, so every stage peer hears it before starting
        it: stage peers are at most one iteration apart) and sends them its state just before."""
        for r in sorted(self.rejoin_requests):
            peers = [n for n in self.schedule.allocation[self.stage_of[r]] if n != r and n not in self.live.dead]
            if peers and peers[0] == self.id:
                join = it + 2
                self.revive_at.setdefault(join, set()).add(r)
                self.sponsoring.setdefault(join - 1, set()).add(r)
                for n in self.live.live_peers():
                    if n != r:
                        self._spawn_send(n, Message.from_json(Kind.CONTROL, self.id, {"rejoin_at": join, "node": r}))
                self.events.write("sponsor", peer=r, join_iteration=join)
        self.rejoin_requests.clear()
        for r in self.sponsoring.pop(it, set()):
            state, steps = stage_state_vector(self.module, self.optimizer)
            dead = sorted(self.live.dead - {r})
            asyncio.create_task(self._send_state(r, it + 1, dead, steps, state))

    async def _send_state(self, r: int, join: int, dead: list[int], steps: list[int], state) -> None:
        await self._send_direct(r, Message.from_json(Kind.CONTROL, self.id, {
            "welcome": join, "dead": dead, "steps": steps}))
        await self._send_direct(r, Message.from_tensor(Kind.WEIGHTS, self.id, state, iteration=join))

    def _iteration_over(self, it: int, disp: Dispatcher) -> bool:
        if disp.running is not None:
            return False
        if not self.degraded:
            return disp.done
        if self._own_unfinished():
            return False
        waiting = (self.data_nodes - {self.id} - self.live.dead) - self.done_from.get(it, set())
        return not waiting

    def _note_completion(self, it: int, op: Op) -> None:
        """After B at hop 0 of its last own microbatch a data node reports DONE to everyone."""
        if op.kind is OpKind.B and op.hop == 0:
            self.completed.add(op.microbatch)
            if not self._own_unfinished():
                self._report_done(it)

    def _own_unfinished(self) -> set[int]:
        """This data node's microbatches of the iteration that have not come back yet."""
        return {mb for mb, p in self.paths.items() if p.origin == self.id} - self.completed

    def _report_done(self, it: int) -> None:
        for n in self.live.live_peers():
            self._spawn_send(n, Message(Kind.DONE, self.id, iteration=it))

    # -- failures ---------------------------------------------------------------------------
    def _handle_deaths(self, it: int, disp: Dispatcher) -> None:
        """Turn degraded; restart own unfinished microbatches that touched a dead node."""
        self.news = False
        self.degraded = True
        disp.planned = False
        dead = self.live.dead
        reporter = min(self.data_nodes - dead, default=None) == self.id  # logs losses once
        for mb, path in list(self.paths.items()):
            if path.origin in dead:
                self._forget(mb, disp)
                del self.paths[mb]
                if reporter:
                    self.events.write("microbatch_lost", iteration=it, microbatch=mb, why="its data node died")
            elif path.origin == self.id and mb not in self.completed and set(path.nodes) & dead:
                self._restart(it, mb, disp)
        if self.my_microbatches and not self._own_unfinished():
            self._report_done(it)  # again: peers that just turned degraded wait for it

    def _forget(self, mb: int, disp: Dispatcher) -> None:
        disp.forget(mb)
        self.tensors = {op: t for op, t in self.tensors.items() if op.microbatch != mb}
        self.saved = {key: v for key, v in self.saved.items() if key[0] != mb}

    def _restart(self, it: int, mb: int, disp: Dispatcher) -> None:
        new = repair_path(self.paths[mb], self.live.dead, self.schedule.allocation)
        self._forget(mb, disp)
        if new is None:
            del self.paths[mb]
            self.events.write("microbatch_lost", iteration=it, microbatch=mb)
            return
        self.attempt[mb] += 1
        self.paths[mb] = new
        self.events.write("microbatch_rerouted", iteration=it, microbatch=mb,
                          attempt=self.attempt[mb], nodes=list(new.nodes))
        for n in self.live.live_peers():
            self._spawn_send(n, Message.from_json(Kind.CONTROL, self.id, {
                "restart": mb, "attempt": self.attempt[mb], "iteration": it}))
        disp.add([F(mb, 0)])
        disp.arrive(F(mb, 0), time.monotonic())

    # -- messages of this iteration ---------------------------------------------------------
    def _take_messages(self, it: int, disp: Dispatcher) -> None:
        """Move this iteration's operation inputs into the dispatcher."""
        keep = []
        for msg in self.inbox.pop(it, []):
            if msg.kind == Kind.AVERAGE:
                keep.append(msg)
            elif msg.kind == Kind.CONTROL:
                self._restart_notice(msg.json(), disp)
            elif not self._accept(msg, disp):
                keep.append(msg)
        if keep:
            self.inbox.setdefault(it, []).extend(keep)

    def _restart_notice(self, body: dict, disp: Dispatcher) -> None:
        mb, attempt = int(body["restart"]), int(body["attempt"])
        if attempt > self.attempt.get(mb, 0):
            self._forget(mb, disp)
            self.attempt[mb] = attempt
            self.degraded = True

    def _accept(self, msg: Message, disp: Dispatcher) -> bool:
        """Use a data message; False keeps it for later (a newer attempt not announced yet)."""
        mb, attempt = msg.microbatch, msg.tags[TAG_ATTEMPT]
        if mb not in self.paths or attempt < self.attempt.get(mb, 0):
            return True  # a lost microbatch or a superseded attempt: drop it
        if attempt > self.attempt.get(mb, 0):
            return False
        path = self._path_of(msg)
        self.paths[mb] = path
        op = self._op_of(msg, path)
        if op not in disp.pending():
            disp.add([op])
        self.tensors[op] = msg.to_torch().to(self.device)
        disp.arrive(op, time.monotonic())
        return True

    def _path_of(self, msg: Message) -> MicrobatchPath:
        nodes = unpack_path(msg.tags[TAG_PATH_LO], msg.tags[TAG_PATH_HI])
        return MicrobatchPath(msg.microbatch, nodes[0], tuple(Hop(self.stage_of[n], n) for n in nodes))

    @staticmethod
    def _op_of(msg: Message, path: MicrobatchPath) -> Op:
        hop = msg.tags[TAG_HOP]
        if msg.kind == Kind.FORWARD:
            return L(msg.microbatch) if hop == len(path.hops) else F(msg.microbatch, hop)
        return B(msg.microbatch, hop)

    def _step(self, it: int) -> None:
        clip_stage(self.module, self.train_cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(it, self.train_cfg)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _save_checkpoint(self) -> None:
        """Every node saves its stage under checkpoint/nodes/node-N/; the lowest live node of
        each stage also writes checkpoint/stage-S.pt, and the first live data node the
        description, so the directory loads like a single-process checkpoint."""
        directory = Path(self.cfg.run_dir) / "checkpoint"
        (directory / "nodes" / f"node-{self.id}").mkdir(parents=True, exist_ok=True)
        save_stage(self.module, directory / "nodes" / f"node-{self.id}")
        live = [n for n in self.schedule.allocation[self.stage] if n not in self.live.dead]
        if live and live[0] == self.id:
            save_stage(self.module, directory)
            if self.stage == 0:
                tokens = (self.cfg.iterations * self.n_microbatches * self.sc.pipeline.samples_per_microbatch
                          * self.model_cfg.ctx_tokens)
                save_checkpoint([], directory, CheckpointInfo(
                    self.model_cfg, self.sc.pipeline.n_stages, self.cfg.iterations, tokens, self.cfg.variant,
                    self.sc.name, self.sc.content_hash, self.data.corpus_name, str(self.data.tokenizer_path),
                    self.cfg.seed))

    def _dump_gradients(self) -> None:
        """Tests: the stage's summed gradients of iteration 0, before clipping and the step."""
        directory = Path(self.cfg.run_dir) / "grads"
        directory.mkdir(exist_ok=True)
        grads = {k: p.grad.detach().cpu() for k, p in self.module.named_parameters() if p.grad is not None}
        torch.save(grads, directory / f"node-{self.id}.pt")

    # -- operations -------------------------------------------------------------------------
    async def _run_op(self, it: int, op: Op) -> None:
        mb = op.microbatch
        start, t_event = time.monotonic(), self.events.now()
        path = self.paths[mb]
        out = await asyncio.get_running_loop().run_in_executor(self.pool, self._compute, op)
        await self._pad(op.kind, start)
        self.events.write("op", t=t_event, kind=op.kind.value, microbatch=mb, hop=op.hop, stage=self.stage,
                          dur=self.events.now() - t_event, iteration=it)
        self._send_on(it, path, op, out, self.attempt[mb])

    async def _pad(self, kind: OpKind, start: float) -> None:
        if self.cfg.emulate_compute:
            target = self.costs.op_s(kind, self.id) * self.cfg.time_scale * self.slow
            await asyncio.sleep(max(0.0, target - (time.monotonic() - start)))

    def _send_on(self, it: int, path: MicrobatchPath, op: Op, out, attempt: int) -> None:
        nxt = next_op(op, len(path.hops))
        if nxt is None:
            return
        dst = node_of(nxt, path.nodes)
        wire_kind = Kind.BACKWARD if nxt.kind is OpKind.B else Kind.FORWARD
        tag = len(path.hops) if nxt.kind is OpKind.L else nxt.hop
        msg = Message.from_tensor(wire_kind, self.id, out, iteration=it, microbatch=op.microbatch,
                                  tags=(tag, attempt, *pack_path(path.nodes)))
        self._spawn_send(dst, msg, nominal_bytes=self.costs.activation_bytes)

    def _compute(self, op: Op) -> torch.Tensor | None:
        """The torch work of one operation; returns the tensor to send on (CPU, contiguous)."""
        kind, mb, hop = op.kind, op.microbatch, op.hop
        if kind is OpKind.F:
            if hop == 0:
                x, out = None, self.module.run_layers(self.module.embed(self.batch[mb][:, :-1]))
            else:
                x = self.tensors.pop(op).requires_grad_(True)
                out = self.module.run_layers(x)
            self.saved[(mb, hop)] = (x, out)
            return out.detach().cpu()
        if kind is OpKind.L:
            h = self.tensors.pop(op).requires_grad_(True)
            loss = self.module.loss(h, self.batch[mb][:, 1:])
            (loss / self.n_microbatches).backward()
            self.loss_sum += float(loss.detach())
            self.loss_count += 1
            return h.grad.detach().cpu()
        grad = self.tensors.pop(op)
        x, out = self.saved.pop((mb, hop))
        out.backward(grad)
        return None if x is None else x.grad.detach().cpu()

    # -- late operations --------------------------------------------------------------------
    async def _serve_late(self) -> bool:
        """Run one operation of an iteration this node already finished (a re-routed
        microbatch): forward with the current weights, backward to the input only, so the
        stepped weights' gradients stay untouched. Returns whether it ran one."""
        if not self.late:
            return False
        msg = self.late.pop(0)
        path = self._path_of(msg)
        op = self._op_of(msg, path)
        start = time.monotonic()
        out = await asyncio.get_running_loop().run_in_executor(self.pool, self._compute_late, msg, op)
        await self._pad(op.kind, start)
        self.events.write("late_op", kind=op.kind.value, microbatch=op.microbatch, hop=op.hop,
                          iteration=msg.iteration)
        if out is not None:
            self._send_on(msg.iteration, path, op, out, msg.tags[TAG_ATTEMPT])
        return True

    def _compute_late(self, msg: Message, op: Op):
        key = (msg.iteration, op.microbatch, op.hop)
        t = msg.to_torch().to(self.device)
        if op.kind is OpKind.F:
            x = t.requires_grad_(True)
            out = self.module.run_layers(x)
            self.late_saved[key] = (x, out)
            return out.detach().cpu()
        if key not in self.late_saved:
            return None  # its forward ran before this node knew: nothing to send back
        x, out = self.late_saved.pop(key)
        (grad,) = torch.autograd.grad(out, x, t)
        return grad.detach().cpu()

    # -- sending ----------------------------------------------------------------------------
    def _spawn_send(self, dst: int, msg: Message, nominal_bytes: int | None = None) -> None:
        task = asyncio.create_task(self._send(dst, msg, nominal_bytes))
        self.sends.add(task)
        task.add_done_callback(self.sends.discard)

    async def _send(self, dst: int, msg: Message, nominal_bytes: int | None) -> None:
        if dst in self.live.dead:
            return
        t = self.events.now()
        try:
            if self.emulator is not None and nominal_bytes is not None:
                async with self.emulator.transmit(dst, int(nominal_bytes * self.slow)):
                    await self.transport.send(dst, msg, timeout_s=self.cfg.peer_timeout_s)
            else:
                await self.transport.send(dst, msg, timeout_s=self.cfg.peer_timeout_s)
        except TransportError as e:
            self.live.declare({dst}, f"send failed: {e}")
            return
        if nominal_bytes is not None:
            self.events.write("send", t=t, dst=dst, microbatch=msg.microbatch,
                              bytes=nominal_bytes, arrive=self.events.now(), iteration=msg.iteration)

    async def _drain_sends(self) -> None:
        if self.sends:
            await asyncio.gather(*self.sends, return_exceptions=True)

    # -- failure injection ------------------------------------------------------------------
    async def _maybe_fail(self, it: int, kind: str, done_ops: int) -> None:
        phase = {"F": "forward", "L": "backward", "B": "backward"}.get(kind, kind)
        for f in list(self.failures):
            if f["iteration"] == it and f["phase"] in (phase, "start") and done_ops >= f["after_ops"]:
                self.failures.remove(f)
                self.events.write("fault", how=f["how"], phase=f["phase"], iteration=it)
                if f["how"] == "crash":
                    os.kill(os.getpid(), signal.SIGKILL)  # like kill -9: no clean-up at all
                if f["how"] == "hang":
                    self.live.stop()
                    self.receiver.cancel()
                    await asyncio.Event().wait()  # answer nothing until the launcher stops us
                self.slow = f.get("factor", faults_mod.DEFAULT_SLOW_FACTOR)


def main(config_path: str, node_id: int, rejoin: bool = False) -> int:
    from .runconfig import load_config
    cfg = load_config(config_path)
    torch.set_num_threads(1)  # many node processes share the host's cores
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [node {node_id}] %(message)s")
    node = Node(cfg, node_id, rejoin)
    try:
        asyncio.run(node.run())
    except (NodeFailure, SkipPipeError) as e:
        log.error("%s", e)
        node.events.write("error", message=str(e))
        return 1
    return 0
