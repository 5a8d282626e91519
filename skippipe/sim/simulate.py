"""Event simulator: one training iteration of one variant of a schedule, in seconds.

Semantics (shared with the CP-SAT planner and the distributed runtime):

* A microbatch runs F at hops 0..k-1, L (loss) at its origin or at its last hop (the variant's
  `loss_at`), then B at hops k-1..0; durations come from `Costs.op_s`.
* Between consecutive operations on different nodes one message of `Costs.activation_bytes`
  travels on the directed link (src, dst). The link is a FIFO server, busy for
  `Costs.serialization_s` per message in order of hand-off time (ties: sending node, then
  microbatch, kind, hop); the message arrives `Costs.propagation_s` after its serialization ends.
* A node runs one operation at a time, chosen by the runtime's own rule (dispatch.Dispatcher):
  a variant whose dispatch is "planned" (and `use_order`) runs exactly its action lists;
  otherwise first come first served by arrival time, ties: B, then L, then F, then the lower
  microbatch id, then the lower hop.
* A node has `memory_slots` activation slots (or the variant's own limit, possibly unlimited:
  VariantSchedule.memory_slots): an F takes one when it starts, the B of the same (microbatch,
  hop) frees it when it ends (W when the variant splits the backward). An F without a free slot
  cannot start. Each node's peak is reported.
* A split backward: B (input gradient) hands its output on as above and makes W (weight
  gradient) ready on its own node at once; W's result goes nowhere (the optimizer step).
* Every microbatch's F at hop 0 is ready at t = 0 at its origin. A message that arrives at the
  instant a node becomes free (a zero-latency link) is in before the node picks its next op.
* Each stage averages its gradients for `Costs.averaging_s` as soon as all of its nodes have
  finished all their operations; the iteration ends when the last stage's averaging ends.

A deadlock (operations left, no event pending) raises `SimulationError` naming the stuck nodes.
What a run reports (SimResult, NodeStats) is result.py's.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from dataclasses import dataclass

from ..costs import Costs
from ..dispatch import Dispatcher
from ..errors import SkipPipeError
from ..ops import F, Op, OpKind, local_next, next_op, node_of, node_ops
from ..placement import averaging_ends
from ..scenario import Scenario
from ..schedule import Schedule, VariantSchedule
from .result import NodeStats, SimResult, waiting_time

log = logging.getLogger(__name__)

SIMULTANEOUS_S = 1e-9  # events closer than this (float noise) are handled as one instant
MAX_LISTED = 4  # ops / slot holders named per node in a deadlock message
_END, _ARRIVE = 0, 1  # event classes; within one instant ends are handled before arrivals


class SimulationError(SkipPipeError):
    """The schedule cannot run to completion (deadlock) or its order is inconsistent."""


def simulate(
    schedule: Schedule,
    variant: str,
    scenario: Scenario,
    use_order: bool = True,
    *,
    iteration: int = 0,
    floating: frozenset[OpKind] = frozenset(),
) -> SimResult:
    """Simulate one iteration of `variant`; `iteration` only labels the events; `floating`
    kinds run as soon as they arrive in planned mode (dispatch.Dispatcher; planners' dry runs).

    Raises SimulationError on a deadlock or an order that does not list each op of a node once."""
    sim = _Simulation(
        schedule.for_variant(variant), schedule.variant(variant), scenario, use_order, iteration, floating
    )
    result = sim.run()
    mode = "planned order" if result.used_order else "fcfs"
    log.debug(
        "simulated %s (%s): iteration %.3f s, makespan %.3f s",
        variant,
        mode,
        result.iteration_s,
        result.makespan_s,
    )
    return result


# ----------------------------------------------------------------------------------------------


@dataclass
class _NodeState:
    """Per-node state during one simulation (internal): the shared dispatch rule plus stats."""

    stage: int
    disp: Dispatcher
    last_end_s: float = 0.0


class _Simulation:
    """Heap-based event loop over op ends and message arrivals (internal; times in seconds)."""

    def __init__(
        self,
        schedule: Schedule,
        v: VariantSchedule,
        scenario: Scenario,
        use_order: bool,
        iteration: int,
        floating: frozenset[OpKind],
    ):
        self.schedule, self.v, self.iteration = schedule, v, iteration
        self.costs = Costs(scenario)
        self.ordered = use_order and v.planned
        self.split = v.split_backward
        stage_of = schedule.stage_of()
        wanted = self._initial_ops(v)
        self.state = {
            n.id: _NodeState(
                stage_of.get(n.id, -1),
                Dispatcher(
                    self._node_order(n.id, wanted.get(n.id, [])),
                    v.memory_slots(n.id, scenario),
                    self.ordered,
                    self.split,
                    frozenset(floating),
                ),
            )
            for n in scenario.nodes
        }
        self.heap: list[tuple[float, int, int, int, Op]] = []
        self.seq = itertools.count()
        self.link_free_s: dict[tuple[int, int], float] = {}
        self.arrival_s: dict[Op, float] = {}
        self.start_s: dict[Op, float] = {}
        self.events: list[dict] = []
        self.now = 0.0
        self.slow: dict[int, float] = {}  # node -> factor on its op, send and averaging times (as
        #                                    runtime/node/emulation.py slows a node: a straggler)

    def _initial_ops(self, v: VariantSchedule) -> dict[int, list[Op]]:
        """node -> the operations it is known to run when the iteration starts."""
        return node_ops(v.paths, self.split, v.loss_at)

    def _node_order(self, node: int, wanted: list[Op]) -> list[Op]:
        if not self.ordered:
            return wanted
        got = [Op(o.kind, o.microbatch, o.hop) for o in self.v.order.get(node, ())]
        if len(got) != len(set(got)) or set(got) != set(wanted):
            raise SimulationError(
                f"variant {self.v.name}: node {node}'s planned order must list "
                f"each of its {len(wanted)} operations exactly once"
            )
        return got

    # -- topology ---------------------------------------------------------------------------

    def node_of(self, op: Op) -> int:
        return node_of(op, self.v.path(op.microbatch).nodes, self.v.loss_at)

    def successor(self, op: Op) -> Op | None:
        """The next operation of the same microbatch, or None after B at hop 0."""
        return next_op(op, len(self.v.path(op.microbatch).hops))

    def op_s(self, op: Op, node: int) -> float:
        return self.costs.op_s(op.kind, node, self.split) * self.slow.get(node, 1.0)

    # -- event loop -------------------------------------------------------------------------

    def run(self) -> SimResult:
        for p in self.v.paths:
            self._push(0.0, _ARRIVE, p.origin, F(p.microbatch, 0))
        while self.heap:
            batch = self._pop_instant()
            touched: set[int] = set()
            while batch:
                for _, _, what, node, op in sorted(batch, key=_batch_key):
                    touched.add(node)
                    if what == _END:
                        touched |= self._finish(node, op)
                    else:
                        self._arrive(node, op)
                # a message on a zero-latency link arrives at this same instant: a node picks
                # its next op only after it is in
                same_instant = self.heap and self.heap[0][0] <= self.now + SIMULTANEOUS_S
                batch = self._pop_instant() if same_instant else []
            for node in sorted(touched):
                self._dispatch(node)
        if any(st.disp.left for st in self.state.values()):
            raise SimulationError(self._deadlock_message())
        return self._result()

    def _push(self, t: float, what: int, node: int, op: Op) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), what, node, op))

    def _pop_instant(self) -> list[tuple]:
        """All events within SIMULTANEOUS_S of the earliest; `now` becomes the latest of them."""
        first = heapq.heappop(self.heap)
        batch = [first]
        while self.heap and self.heap[0][0] <= first[0] + SIMULTANEOUS_S:
            batch.append(heapq.heappop(self.heap))
        self.now = max(self.now, max(e[0] for e in batch))
        return batch

    def _arrive(self, node: int, op: Op) -> None:
        self.state[node].disp.arrive(op, self.now)
        self.arrival_s[op] = self.now

    def _finish(self, node: int, op: Op) -> set[int]:
        """An op ended on `node`: free its slot (B), hand its output on. Returns touched nodes."""
        st = self.state[node]
        end = self.start_s[op] + self.op_s(op, node)
        st.disp.finish(op)
        st.last_end_s = end
        local = local_next(op, self.split)
        if local is not None:  # W: ready on this node as soon as B ends
            self._arrive(node, local)
        nxt = self.successor(op)
        if nxt is None:
            return set()
        dst = self.node_of(nxt)
        if dst == node:
            self._arrive(node, nxt)
            return {node}
        self._send(node, dst, nxt, end)
        return set()

    def _send(self, src: int, dst: int, op: Op, handoff_s: float) -> None:
        """Queue one message on the directed link src -> dst (FIFO) and schedule its arrival."""
        wire_start = max(handoff_s, self.link_free_s.get((src, dst), 0.0))
        wire_end = wire_start + self.costs.serialization_s(src, dst) * self.slow.get(src, 1.0)
        self.link_free_s[(src, dst)] = wire_end
        arrive = wire_end + self.costs.propagation_s(src, dst)
        self._push(arrive, _ARRIVE, dst, op)
        self.events.append(
            {
                "t": handoff_s,
                "node": src,
                "event": "send",
                "dst": dst,
                "microbatch": op.microbatch,
                "bytes": self.costs.activation_bytes,
                "arrive": arrive,
                "wire_start": wire_start,
                "iteration": self.iteration,
            }
        )

    def _dispatch(self, node: int) -> None:
        st = self.state[node]
        op = st.disp.next_op()
        if op is None:
            return
        st.disp.start(op)
        self.start_s[op] = self.now
        dur = self.op_s(op, node)
        self._push(self.now + dur, _END, node, op)
        self.events.append(
            {
                "t": self.now,
                "node": node,
                "event": "op",
                "kind": op.kind.value,
                "microbatch": op.microbatch,
                "hop": op.hop,
                "stage": st.stage,
                "dur": dur,
                "iteration": self.iteration,
            }
        )

    # -- outcome ----------------------------------------------------------------------------

    def _deadlock_message(self) -> str:
        left = sum(st.disp.left for st in self.state.values())
        stuck = [f"node {n}: {self._blocked(st)}" for n, st in sorted(self.state.items()) if st.disp.left]
        mode = "planned order" if self.ordered else "fcfs"
        return (
            f"variant {self.v.name} ({mode}): deadlock at t={self.now:.6f}s with {left} "
            f"operations left; " + "; ".join(stuck)
        )

    def _blocked(self, st: _NodeState) -> str:
        d = st.disp
        slots = (
            f"memory full ({len(d.held)} slots held by "
            f"{_listed(f'mb{op.microbatch} hop{op.hop}' for op in d.held)})"
        )
        op = d.next_planned()
        if op is not None:
            why = slots if op in d.arrived else "input not arrived"
            return f"next in order {_fmt(op)}: {why}"
        if d.arrived:
            arrived = sorted(d.arrived, key=lambda o: o.sort_key)
            return f"arrived {_listed(_fmt(op) for op in arrived)}, {slots}"
        return f"{st.disp.left} operations, none arrived"

    def _result(self) -> SimResult:
        costs, alloc = self.costs, self.schedule.allocation
        done = tuple(max((self.state[n].last_end_s for n in nodes), default=0.0) for nodes in alloc)
        avg = tuple(
            costs.averaging_s(s, nodes, self.v.loss_at)
            * max((self.slow.get(n, 1.0) for n in nodes), default=1.0)
            for s, nodes in enumerate(alloc)
        )  # a straggler slows its stage's ring
        ends = averaging_ends(done, avg, alloc)  # a V group averages its two stages in turn
        for s, nodes in enumerate(alloc):
            for n in nodes:
                self.events.append(
                    {
                        "t": ends[s] - avg[s],
                        "node": n,
                        "event": "op",
                        "kind": "AVG",
                        "microbatch": None,
                        "hop": None,
                        "stage": s,
                        "dur": avg[s],
                        "iteration": self.iteration,
                    }
                )
        iteration_s = max(ends, default=0.0)
        last = (OpKind.B, OpKind.W) if self.split else (OpKind.B,)
        makespan_s = max(
            (
                self.start_s[op] + self.op_s(op, p.origin)
                for p in self.v.paths
                for op in (Op(kind, p.microbatch, 0) for kind in last)
            ),
            default=0.0,
        )
        ops_of: dict[int, list[Op]] = {n: [] for n in self.state}
        for op in self.start_s:
            ops_of[self.node_of(op)].append(op)
        held = self.schedule.stages_of()
        stats = tuple(
            self._stats(n, ops_of[n], sum(avg[s] for s in held.get(n, ())), iteration_s)
            for n in sorted(self.state)
        )
        events = tuple(sorted(self.events, key=lambda e: (e["t"], e["node"])))
        return SimResult(
            self.v.name, self.ordered, iteration_s, makespan_s, stats, events, avg, done, self._run_order()
        )

    def _stats(self, node: int, ops: list[Op], averaging_s: float, iteration_s: float) -> NodeStats:
        busy = sorted((self.start_s[op], self.start_s[op] + self.op_s(op, node)) for op in ops)
        pending = [(self.arrival_s[op], self.start_s[op]) for op in ops]
        busy_s = sum(e - s for s, e in busy)
        waiting_s = waiting_time(pending, busy)
        idle_s = max(0.0, iteration_s - busy_s - averaging_s - waiting_s)
        return NodeStats(
            node,
            self.state[node].stage,
            busy_s,
            averaging_s,
            waiting_s,
            idle_s,
            len(ops),
            self.state[node].disp.peak,
        )

    def _run_order(self) -> dict[int, tuple[Op, ...]]:
        by_node: dict[int, list[Op]] = {}
        for op, t in sorted(self.start_s.items(), key=lambda item: item[1]):
            by_node.setdefault(self.node_of(op), []).append(op.at(t))
        return {n: tuple(ops) for n, ops in sorted(by_node.items())}


def _batch_key(event: tuple) -> tuple:
    """Deterministic order inside one instant: ends first, then by node and operation."""
    _, _, what, node, op = event
    return what, node, *op.sort_key


def _fmt(op: Op) -> str:
    return f"{op.kind.value} mb{op.microbatch} hop{op.hop}"


def _listed(items) -> str:
    items = list(items)
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more
