"""One node process of a distributed run: its lifecycle and its iteration loop.

Per iteration a node runs the operations the schedule gives it (dispatch.py decides which one
next; compute.py does the torch work): a data node embeds its microbatches and starts them along
their paths; a forward sends the activations to the next hop (or back to the origin); the origin
computes the loss and sends the gradient back along the reversed path; each backward sends the
input gradient one hop back (datamsg.py). When all its operations are done, the node sums its
stage's gradients with the live nodes of its stage (averaging.py) and takes exactly one AdamW
step; no barrier spans all nodes. Messages go through messenger.py, times are emulated by
emulation.py, operations run through operations.py; online variants choose each next hop as
they send (routes.py) and may move nodes between stages at iteration boundaries (moves.py: a
moved node takes a new module; membership.py keeps who serves which stage).

Failures (liveness.py, recovery.py): when a peer dies the iteration turns *degraded*: nodes run
first come first served and end the iteration once every live data node has reported DONE;
each data node restarts its unfinished microbatches that touched a dead node on a repaired path
(attempt + 1, announced with a Restart control message). A node that already finished the
iteration still serves late operations for it. A restarted attempt may repeat gradient
contributions its failed attempt already made on later hops: a bias of at most one microbatch
per affected stage, in the failure's iteration only. Restarted nodes come back via rejoin.py,
planned failures come from faults.py. A node whose side of the run loses a stage or the majority
stops (quorum.py); the run's first launcher hears of other hosts' nodes through gather.py.
What peers tell the node waits in notices.py until the loop looks; process.py runs a node as its
own process (config, logging, exit code).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ...costs import Costs
from ...recovery import live_variant
from ...scenario import load_scenario
from ...schedule_file import load_schedule
from ...train.recipe import recipe_config
from ...util.devices import device_for
from ..net.frames import TransportConfig
from ..net.transport import Transport
from .averaging import StageAverager
from .checkpoint import save_checkpoint
from .compute import StageCompute, batch_stream, stand_in
from .emulation import Emulation
from .faults import PHASE_OF, FailureInjector
from .gather import Gather
from .iteration import Iteration
from .liveness import Liveness
from .membership import Membership, rebalance_factor
from .messenger import STALL_FACTOR, Messenger, NodeFailure
from .moves import Moves
from .notices import Notices
from .operations import Operations
from .quorum import Quorum
from .rejoin import Rejoin
from .routes import Routes
from .runconfig import EventWriter, RunConfig, events_dir


class Node:
    def __init__(self, cfg: RunConfig, node_id: int, rejoin: bool = False):
        self.cfg, self.id, self.rejoining = cfg, node_id, rejoin
        self.sc = load_scenario(cfg.scenario_path, cfg.scenario_overrides)
        schedule, _ = load_schedule(cfg.schedule_path, self.sc)
        self.schedule = schedule.for_variant(cfg.variant)  # .allocation: the one this variant runs on
        self.variant = self.schedule.variant(cfg.variant)
        self.stage_of, self.stages_of = self.schedule.stage_of(), self.schedule.stages_of()
        self.stage = self.stage_of[node_id]  # its lower stage when it holds two (V placement)
        self.costs = Costs(self.sc)
        self.events = EventWriter(events_dir(cfg.run_dir) / f"node-{node_id}.jsonl", node_id, cfg.epoch)
        self.emulation = Emulation.from_config(cfg, self.costs, node_id, self.stages_of[node_id])
        self.n_microbatches = len(self.variant.paths)
        self.my_microbatches = [p.microbatch for p in self.variant.paths if p.origin == node_id]
        self.model_cfg = stand_in(self.sc.model, cfg.stand_in_model)
        self.compute = self._stage_compute(self.stage, self.stages_of[node_id])
        self.transport = Transport(
            node_id,
            *cfg.peers[node_id],
            cfg.peers,
            Path(cfg.run_dir) / "transport",
            auth=cfg.auth(),
            on_disconnect=self._closed,
            config=TransportConfig.for_stage(
                self.model_cfg, self.sc.pipeline.samples_per_microbatch, self.compute.chunks
            ),
        )
        self.live = Liveness(node_id, cfg.peers, self.transport, cfg.peer_timeout_s, self._on_dead)
        self.messenger = Messenger(
            node_id, self.transport, self.live, self.events, self.emulation, cfg.peer_timeout_s
        )
        self.members = Membership(
            node_id, self.schedule.allocation, self.stages_of, rebalance_factor(self.variant)
        )
        self.routes = Routes(node_id, self.variant, self.sc, self.members, self.messenger, self.emulation)
        self.ops = Operations(
            self.variant,
            self.costs.activation_bytes,
            self.routes,
            self.messenger,
            self.emulation,
            self.events,
            self.members,
        )
        self.ops.place(self.compute, self.stage)
        self.rejoin = Rejoin(cfg, self.messenger, lambda: self.compute, self.members)
        self.moves = Moves(cfg, node_id, self.members, self.routes, self.messenger, self.rejoin)
        self.quorum = Quorum(len(cfg.peers), self.messenger, self.members.allocation_at)
        self.gather = Gather(node_id, cfg.data_nodes, self.messenger)
        self.notices = Notices(
            self.messenger, self.live, self.gather, self.moves, self.rejoin
        )  # what peers tell
        self.steps = 0  # iterations this node took its step for
        self.averager = StageAverager(
            self.stage, self.compute.chunks, self.messenger, self.emulation, self.ops.serve_late
        )
        self.faults = FailureInjector(cfg.failures, node_id, self.events, self.emulation, self._silence)
        self.receiver: asyncio.Task | None = None
        self.data = None  # a data node's corpus and tokenizer
        self.news = False  # a peer died since the loop last looked

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        await self.quorum.guarded(self._run())  # QuorumLost: this side may not train on

    async def _run(self) -> None:
        async with self.transport:
            self.receiver = asyncio.create_task(self.messenger.receive_forever())
            first = await (
                self.rejoin.come_back()
                if self.rejoining
                else self.messenger.greet_all(
                    self.cfg.peers, self.notices.greeted, self.cfg.connect_timeout_s
                )
            )
            batches = await self.ops.in_worker(self._batches, first)
            self.live.start()
            self.events.write("ready", pid=os.getpid(), stage=self.stage, first_iteration=first)
            for it in range(first, self.cfg.iterations):
                await self.iteration(it, batches)
            self.quorum.over = True
            if self.cfg.save_checkpoint:
                save_checkpoint(self, self.cfg.iterations)
            self.gather.finished(self.cfg.iterations - first)  # the launcher compares views
            await self._goodbye()
            self.live.stop()
            self.receiver.cancel()

    def _stage_compute(self, stage: int, stages: tuple[int, ...]) -> StageCompute:
        recipe = recipe_config(self.sc, iterations=self.cfg.iterations, seed=self.cfg.seed)  # as `train`
        return StageCompute(
            self.sc,
            self.model_cfg,
            stage,
            device_for(self.id),
            recipe,
            self.n_microbatches,
            self.variant.split_backward,
            stages,
            self.variant.loss_at,
        )

    def _place(self, stage: int) -> StageCompute:
        """Rebalancing moved this node to `stage`: a fresh module (the caller loads its state)."""
        self.stage, self.emulation.chunks = stage, (stage,)
        self.compute = self._stage_compute(stage, (stage,))
        self.ops.place(self.compute, stage)
        self.averager = StageAverager(
            stage, self.compute.chunks, self.messenger, self.emulation, self.ops.serve_late
        )
        return self.compute

    def _batches(self, first_iteration: int):
        if not self.my_microbatches and self.variant.loss_at != "last":  # last: labels (compute.py)
            return None
        self.data, stream = batch_stream(
            self.sc, self.model_cfg, self.cfg.seed, self.n_microbatches, first_iteration
        )
        return stream

    async def _goodbye(self) -> None:
        """Keep serving late operations until every live peer is done too (or silent for the
        peer timeout)."""
        while set(self.live.live_peers()) - self.live.finished:
            if not await self.ops.serve_late():
                await self.messenger.wait(self.live.interval_s)
        await self.messenger.drain()

    def _silence(self) -> None:
        """A planned hang: stop beating and reading, stay alive."""
        self.live.stop()
        if self.receiver is not None:
            self.receiver.cancel()

    # -- what peers tell us -----------------------------------------------------------------
    def _closed(self, peer: int) -> None:
        self.live.closed(peer)  # no evidence yet: liveness reconnects to find out

    def _on_dead(self, peers: set[int], why: str) -> None:
        self.events.write("peer_dead", peers=sorted(peers), why=why, iteration=self.messenger.iteration_now)
        self.news = True
        self.messenger.wake()
        self.quorum.check(self.messenger.iteration_now)

    # -- one iteration ----------------------------------------------------------------------
    def _start_iteration(self, it: int, batches) -> Iteration:
        revived, dead = self.rejoin.revived(it), self.live.dead
        self.quorum.check(it)
        alloc, stages_of = self.members.begin(it)  # rebalancing may have moved nodes
        # the iteration where a node comes back runs degraded: not everyone may know yet
        cur = Iteration(
            it,
            live_variant(self.variant, dead, alloc),
            self.variant.memory_slots(self.id, self.sc),
            bool(dead) or bool(revived) or it == self.rejoin.joined_at,
            bool(self.my_microbatches),
            self.messenger,
            self.compute,
            alloc,
            stages_of,
            self.routes,
        )
        self.compute.begin_iteration(it)
        if batches is not None:
            for g in range(self.n_microbatches):
                tokens = next(batches)
                self.compute.batch[g] = tokens.to(self.compute.device)  # inputs; labels where L runs
                if g in cur.paths and cur.paths[g].origin == self.id:
                    cur.start_own(g)
        return cur

    async def iteration(self, it: int, batches) -> None:
        t0 = time.monotonic()
        self.events.write("iteration_start", iteration=it)
        cur = self._start_iteration(it, batches)
        self.news = bool(self.live.dead)
        done_ops, progress = 0, time.monotonic()
        stall_s = STALL_FACTOR * self.cfg.peer_timeout_s
        while not cur.over(self.notices.done_from.get(it, set())):
            if self.news:
                self.news = False
                cur.handle_deaths()
            cur.take_messages(self.notices.restarts.pop(it, []))
            if await self.ops.serve_late():
                continue
            op = cur.disp.next_op()
            if op is None:
                if time.monotonic() - progress > stall_s:
                    raise NodeFailure(
                        f"iteration {it}: no progress for {stall_s:g} s; waiting for {cur.disp.pending()[:4]}"
                    )
                await self.messenger.wait(self.live.interval_s)
                continue
            progress = time.monotonic()
            await self.faults.before(it, PHASE_OF[op.kind], done_ops)
            cur.disp.start(op)
            await self.ops.run(cur, op)
            cur.finished(op)
            done_ops += 1
        await self.faults.before(it, "averaging", 0)
        await self.averager.average(it, self.members.allocation[self.stage])
        if self.cfg.dump_gradients and it == 0:
            self.compute.save_gradients(Path(self.cfg.run_dir) / "grads" / f"node-{self.id}.pt")
        self.compute.step(it)
        self.rejoin.after_step(it)
        self.moves.after_step(it)
        await self.moves.take_stage(it + 1, self._place)
        self.messenger.close_iteration(it)
        self.notices.restarts.pop(it, None)
        self.events.write(
            "iteration_end",
            iteration=it,
            loss_sum=self.compute.loss_sum,
            loss_count=self.compute.loss_count,
            wall_s=time.monotonic() - t0,
            degraded=cur.degraded,
            peak_activations=cur.disp.peak,
        )
        self.steps += 1
        self.gather.after_iteration(it, self.compute.loss_sum, self.compute.loss_count)
