"""The nodes' routing (runtime/node/routes.py's `Routes`, one per node) and the simulator's
(sim/online.py) make the same decisions on the same scenario and seed: the simulator runs an
iteration, and at each of its steps the runtime's own objects are fed what a node would see then
(the forward's duration, the data messages with their encoded reports and stage sets, the live
nodes); their chosen paths and routing events must equal the simulator's."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from schedules import TINY_ALLOCATION, timed_schedule, tiny
from skippipe.events import Rerouted, StageSetChosen
from skippipe.ops import Op
from skippipe.runtime.net.wire import Kind, Message
from skippipe.runtime.node.datamsg import HOP_BITS
from skippipe.runtime.node.membership import Membership
from skippipe.runtime.node.routes import Routes
from skippipe.schedule import MicrobatchPath
from skippipe.sim.online import _Online
from test_routing import _online

COMPARED = (StageSetChosen.name, Rerouted.name)  # the events routes.py writes itself


class _Log:
    """A node's event log as the runtime's EventWriter writes it (without time and node)."""

    def __init__(self):
        self.lines = []

    def write(self, event, **fields):
        self.lines.append({"event": event, **fields})


def _runtime_routes(sched, variant, sc, seed):
    """One real `Routes` per node of a run with routing seed `seed`, with the messenger parts
    it uses: nobody dead, a log, and a record of Reroute notices."""
    v = sched.variant(variant)
    v = dataclasses.replace(v, routing=dataclasses.replace(v.routing, seed=seed))
    out = {}
    for node in range(len(sc.nodes)):
        told = []
        m = SimpleNamespace(
            live=SimpleNamespace(dead=set()),
            events=_Log(),
            tell=lambda dst, notice, told=told: told.append((dst, notice)),
        )
        emulation = SimpleNamespace(scenario_s=lambda s: s)
        members = Membership(node, sched.allocation, sched.stages_of(), rebalance=0.0)
        r = Routes(node, v, sc, members, m, emulation)
        r.told = told
        out[node] = r
    return out


class _Mirrored(_Online):
    """The simulator, with every routing step replayed on the runtime's Routes and compared."""

    def __init__(self, sched, variant, sc, seed, slow):
        super().__init__(sched, variant, sc, seed, slow, 0)
        self.routes = _runtime_routes(sched, variant, sc, seed)
        for r in self.routes.values():
            r.begin_iteration(sched.variant(variant))
        self.messages: dict[tuple[int, Op], Message] = {}
        self.compared = []

    def _route(self, node, op):
        mb, before = op.microbatch, self.paths[op.microbatch]
        super()._route(node, op)
        path = MicrobatchPath(mb, before[0].node, before)
        got = self.routes[node].route(self.iteration, path, op, self.op_s(op, node))
        assert got.hops == self.paths[mb], f"node {node}, {op}"
        self.compared.append(got.hops)

    def check_logs(self) -> list[dict]:
        """Every node's routing events equal the simulator's for it; returns them."""
        for node, r in self.routes.items():
            sim = [
                {k: v for k, v in e.items() if k not in ("t", "node")}
                for e in self.events
                if e["event"] in COMPARED and e["node"] == node
            ]
            assert r.m.events.lines == sim, f"node {node}"
        return [line for r in self.routes.values() for line in r.m.events.lines]

    def _send(self, src, dst, op, handoff_s):
        """The runtime's data message for `op`, its routing bits from the sender's Routes."""
        self.routes[src].queue = len(self.state[src].disp.arrived)
        bits = self.routes[src].report(op.microbatch)
        kind = Kind.BACKWARD if op.kind.value == "B" else Kind.FORWARD
        self.messages[(dst, op)] = Message.from_tensor(
            kind,
            src,
            torch.zeros(1),
            iteration=self.iteration,
            microbatch=op.microbatch,
            tags=(op.hop | bits << HOP_BITS, 0, 0, 0),
        )
        super()._send(src, dst, op, handoff_s)

    def _arrive(self, node, op):
        msg = self.messages.pop((node, op), None)
        if msg is not None:
            self.routes[node].observe(msg)
        super()._arrive(node, op)


@pytest.mark.parametrize("variant", ["swarm", "swarm-skip"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nodes_route_online_variants_as_the_simulator_does(variant, seed):
    sc = tiny()
    sched = _online(sc, variant, TINY_ALLOCATION)
    run = _Mirrored(sched, variant, sc, seed, {3: 4.0})
    run.run()
    logs = run.check_logs()
    assert len(run.compared) >= len(sched.variant(variant).paths) * (sc.pipeline.path_length - 1)
    chosen = [line for line in logs if line["event"] == StageSetChosen.name]
    assert len(chosen) == (len(sched.variant(variant).paths) if variant == "swarm-skip" else 0)


@pytest.mark.parametrize("seed", [0, 3])
def test_nodes_repair_around_a_straggler_as_the_simulator_does(seed):
    sc = tiny()
    plan = timed_schedule(sc).variants["ca-partial"]
    sched = _online(sc, "ca-repair", TINY_ALLOCATION, plan=plan)
    run = _Mirrored(sched, "ca-repair", sc, seed, {2: 10.0})
    run.run()
    logs = run.check_logs()
    rerouted = [line for line in logs if line["event"] == Rerouted.name]
    assert rerouted and all(line["avoided"] == 2 for line in rerouted)
    told = [n.reroute for r in run.routes.values() for dst, n in r.told if dst == 2]
    assert sorted(told) == sorted(line["microbatch"] for line in rerouted)  # the avoided hop is told
