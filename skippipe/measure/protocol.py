"""The measurement protocol between live nodes: every node runs one `MeasureNode`; node 0
(COORDINATOR) drives it over our `Transport`, one step at a time so that no two measurements
share the CPU or a link:

1. each node in turn probes every higher-numbered node: RTT from small CONTROL ping-pongs,
   bandwidth from timed transfers of a `payload_bytes` payload (elapsed time from sending until
   the receiver's acknowledgement arrives, less one RTT); medians over `repeat` after `warmup`;
2. each node in turn times one pipeline stage of the scenario's model on its device
   (`compute.measure_compute`).

Messages (CONTROL JSON bodies, field "op"): coordinator -> node: hello, probe {peer, repeat,
warmup, payload_bytes}, compute {model, n_stages, samples, repeat, warmup, seed}, bye;
node -> coordinator: ready {pid, host}, probe_result / compute_result {result} or {error};
prober -> peer: ping {seq} -> pong {seq}; a WEIGHTS message tagged BULK_TAG -> got {seq, bytes}.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..errors import SkipPipeError
from ..runtime.net.auth import RunAuth
from ..runtime.net.frames import TransportConfig, frame_limit
from ..runtime.net.transport import Transport, TransportError
from ..runtime.net.wire import Kind, Message
from .compute import measure_compute
from .figures import (
    GIB,
    ComputeTask,
    LinkFigures,
    MeasureError,
    Measurements,
    NodeFigures,
    Settings,
    link_from_dict,
    node_from_dict,
)

log = logging.getLogger(__name__)

COORDINATOR = 0  # node that drives the measurement and writes the scenario
BULK_TAG = 0x53504D45  # tags[0] of bandwidth payloads ("SPME")
CLOSE_GRACE_S = 1.0  # a closed coordinator connection means "gone" unless "bye" arrives by then
BYE_TIMEOUT_S = 2.0  # the coordinator's farewell to a node that may already be gone


class _NodeLog(logging.LoggerAdapter):
    """Prefixes every record with `[node N]`."""

    def process(self, msg, kwargs):
        return f"[node {self.extra['node']}] {msg}", kwargs


def _ctrl(sender: int, body: dict) -> Message:
    return Message.from_json(Kind.CONTROL, sender, body)


class MeasureNode:
    """One node's measurement process: serves probes and compute requests; node 0 also
    coordinates (`coordinate`). `peers` maps every node id (0..N-1) to (host, port)."""

    def __init__(
        self,
        node_id: int,
        peers: Mapping[int, tuple[str, int]],
        settings: Settings,
        device: str = "auto",
        threads: int | None = 1,
        run_dir: str | Path | None = None,
        listen_host: str | None = None,
        say: Callable[[str], None] = lambda line: None,
    ):
        if sorted(peers) != list(range(len(peers))) or node_id not in peers:
            raise MeasureError(f"node ids must be 0..N-1 and include {node_id}, got {sorted(peers)}")
        if len(peers) < 2:
            raise MeasureError("measuring needs at least 2 nodes")
        self.id, self.peers, self.settings = node_id, dict(peers), settings
        self.device_name, self.threads, self.say = device, threads, say
        self.log = _NodeLog(log, {"node": node_id})
        host, port = self.peers[node_id]
        # probes carry no secrets: the run key if one is given, else the public key (auth.py)
        auth = RunAuth.load(fresh=False) or RunAuth.public()
        self.transport = Transport(
            node_id,
            listen_host or host,
            port,
            self.peers,
            Path(run_dir) / "transport" if run_dir else None,
            auth=auth,
            config=TransportConfig(max_frame_bytes=frame_limit(settings.payload_bytes)),
            on_disconnect=self._closed,
        )
        self.deadline = time.monotonic() + settings.timeout_s
        self.replies: dict[tuple[int, str], asyncio.Queue] = collections.defaultdict(asyncio.Queue)
        self.tasks: set[asyncio.Task] = set()
        self.done: asyncio.Event | None = None  # made inside the loop: "bye" arrived
        self.lost: dict[int, asyncio.Event] = {}  # peer -> its connection closed before "bye"

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise MeasureError(
                f"[node {self.id}] measurement did not finish within {self.settings.timeout_s:g} s"
            )
        return left

    async def run(self, task: ComputeTask | None = None) -> Measurements | None:
        """Serve until the coordinator says bye; node 0 coordinates with `task` and returns
        the measurements."""
        import torch  # loaded here, before anything is timed, not by the --local launcher

        if self.threads:
            torch.set_num_threads(self.threads)  # node processes run with one (see node.py)
        self.done = asyncio.Event()
        async with self.transport:
            receiver = asyncio.create_task(self._receive())
            try:
                if self.id == COORDINATOR:
                    return await self.coordinate(task)
                await self._serve()
                return None
            finally:
                receiver.cancel()
                for t in list(self.tasks):
                    t.cancel()
                await asyncio.gather(receiver, *self.tasks, return_exceptions=True)

    async def _serve(self) -> None:
        if not await self._first(self.done.wait(), COORDINATOR, "waiting for the coordinator"):
            raise MeasureError(f"[node {self.id}] coordinator (node {COORDINATOR}) went away")

    async def _first(self, aw, peer: int, what: str):
        """The result of `aw`, or None when `peer`'s connection closes first; MeasureError
        (naming `what`) at the deadline."""
        want = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self._lost(peer).wait())
        try:
            await asyncio.wait({want, lost}, timeout=self.remaining(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (want, lost):
                f.cancel()
        if want.done() and not want.cancelled():
            return want.result()
        if lost.done() and not lost.cancelled():
            return None
        raise MeasureError(
            f"[node {self.id}] {what}: the measurement did not finish within {self.settings.timeout_s:g} s"
        )

    def _lost(self, peer: int) -> asyncio.Event:
        return self.lost.setdefault(peer, asyncio.Event())

    def _closed(self, peer: int) -> None:
        # the peer's last messages (its result, "bye") may still sit in the inbox: look later
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._lose, peer)

    def _lose(self, peer: int) -> None:
        if self.done is not None and not self.done.is_set():
            self._lost(peer).set()

    # -- receiving ----------------------------------------------------------------------------
    async def _receive(self) -> None:
        while True:
            msg = await self.transport.recv()
            try:
                await self._dispatch(msg)
            except SkipPipeError as e:  # wire, transport or a peer gone: keep serving
                self.log.warning("message from node %d: %s", msg.sender, e)

    async def _dispatch(self, msg: Message) -> None:
        if msg.kind == Kind.WEIGHTS and msg.tags[0] == BULK_TAG:
            body = {"op": "got", "seq": msg.microbatch, "bytes": memoryview(msg.payload).nbytes}
            return await self.send(msg.sender, _ctrl(self.id, body))
        if msg.kind != Kind.CONTROL:
            return self.log.warning("unexpected %s message from node %d", msg.kind.name, msg.sender)
        body = msg.json()
        op = body.get("op")
        if op == "ping":
            await self.send(msg.sender, _ctrl(self.id, {"op": "pong", "seq": body.get("seq")}))
        elif op == "hello":
            await self.send(
                msg.sender, _ctrl(self.id, {"op": "ready", "pid": os.getpid(), "host": socket.gethostname()})
            )
        elif op in ("probe", "compute"):
            self._spawn(self._answer(msg.sender, op, body))
        elif op == "bye":
            self.done.set()
        else:
            await self.replies[(msg.sender, op)].put(body)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, requester: int, op: str, body: dict) -> None:
        try:
            how = Settings(
                int(body["repeat"]),
                int(body["warmup"]),
                int(body.get("payload_bytes", 1)),
                self.settings.timeout_s,
            )
            if op == "probe":
                result = await self.probe(int(body["peer"]), how)
            else:
                task = ComputeTask(
                    body["model"], int(body["n_stages"]), int(body["samples"]), int(body["seed"])
                )
                result = await self.compute(task, how)
            reply = {"op": f"{op}_result", "result": dataclasses.asdict(result)}
        except Exception as e:  # noqa: BLE001 - reported to the coordinator, which fails
            self.log.exception("%s failed", op)
            reply = {"op": f"{op}_result", "error": f"node {self.id}: {type(e).__name__}: {e}"}
        await self.send(requester, _ctrl(self.id, reply))

    async def send(self, peer: int, msg: Message) -> None:
        """Send within the deadline; MeasureError as soon as `peer`'s connection closes."""

        async def sent() -> bool:
            await self.transport.send(peer, msg, self.remaining())
            return True

        if not await self._first(sent(), peer, f"sending to node {peer}"):
            raise MeasureError(f"[node {self.id}] node {peer} went away")

    async def reply(self, sender: int, op: str) -> dict:
        """The next `op` message from `sender`; MeasureError when it goes away or at the
        deadline."""
        body = await self._first(
            self.replies[(sender, op)].get(), sender, f"waiting for {op} from node {sender}"
        )
        if body is None:
            raise MeasureError(f"[node {self.id}] node {sender} went away (waiting for {op})")
        return body

    # -- measuring ----------------------------------------------------------------------------
    async def probe(self, peer: int, s: Settings) -> LinkFigures:
        """RTTs and payload transfer times from this node to `peer`."""
        send = self.send
        rtts, transfers = [], []
        for i in range(s.warmup + s.repeat):
            t0 = time.perf_counter()
            await send(peer, _ctrl(self.id, {"op": "ping", "seq": i}))
            got = await self.reply(peer, "pong")
            if i >= s.warmup:
                rtts.append(time.perf_counter() - t0)
            if got.get("seq") != i:
                raise MeasureError(f"node {peer} answered ping {i} with {got.get('seq')}")
        bulk = Message.from_tensor(
            Kind.WEIGHTS, self.id, np.zeros(s.payload_bytes, np.uint8), tags=(BULK_TAG,)
        )
        for i in range(s.warmup + s.repeat):
            msg = dataclasses.replace(bulk, microbatch=i)
            t0 = time.perf_counter()
            await send(peer, msg)
            got = await self.reply(peer, "got")
            if i >= s.warmup:
                transfers.append(time.perf_counter() - t0)
            if got.get("seq") != i or got.get("bytes") != s.payload_bytes:
                raise MeasureError(f"node {peer} acknowledged {got} for transfer {i}")
        return LinkFigures(self.id, peer, tuple(rtts), tuple(transfers), s.payload_bytes)

    async def compute(self, task: ComputeTask, s: Settings) -> NodeFigures:
        """Time `task` on this node's device: a device it lacks is an error for the
        coordinator to report, like any other failure here."""
        from ..util.devices import resolve_device  # imports torch: not at the launcher's import

        device = resolve_device(self.device_name)
        return await asyncio.to_thread(measure_compute, task, s.repeat, s.warmup, device, self.id)

    async def ask(self, node: int, body: dict, reply_op: str) -> dict:
        """Send a request to `node` and wait for its result (node 0 runs its own directly)."""
        await self.send(node, _ctrl(self.id, body))
        answer = await self.reply(node, reply_op)
        if "error" in answer:
            raise MeasureError(str(answer["error"]))
        return answer["result"]

    async def coordinate(self, task: ComputeTask) -> Measurements:
        n, s = len(self.peers), self.settings
        how = {"repeat": s.repeat, "warmup": s.warmup, "payload_bytes": s.payload_bytes}
        try:  # every node that came up is told "bye" at the end, whatever happened
            for node in range(1, n):  # start-up barrier: the send retries until the node listens
                self.log.info("waiting for node %d at %s:%d", node, *self.peers[node])
                await self.send(node, _ctrl(self.id, {"op": "hello"}))
                info = await self.reply(node, "ready")
                self.say(f"node {node} ready ({info.get('host')}, pid {info.get('pid')})")
            start = time.monotonic()  # every node is up: from here on it is measuring
            links = []
            for a in range(n):
                for b in range(a + 1, n):
                    if a == self.id:
                        link = await self.probe(b, self.settings)
                    else:
                        body = {"op": "probe", "peer": b, **how}
                        link = link_from_dict(await self.ask(a, body, "probe_result"))
                    links.append(link)
                    self.say(
                        f"link {a}-{b}: rtt {link.rtt_median_s * 1e3:.3f} ms, bandwidth "
                        f"{link.bandwidth_bytes_per_s / GIB:.3f} GiB/s"
                    )
            nodes = []
            for node in range(n):
                if node == self.id:
                    fig = await self.compute(task, self.settings)
                else:
                    body = {"op": "compute", **how, **dataclasses.asdict(task)}
                    fig = node_from_dict(await self.ask(node, body, "compute_result"))
                nodes.append(fig)
                self.say(
                    f"node {node}: forward {fig.forward_median_s:.3g} s, backward "
                    f"{fig.backward_median_s:.3g} s per sample per layer on {fig.device}"
                )
        finally:
            for node in range(1, n):
                try:
                    await self.transport.send(node, _ctrl(self.id, {"op": "bye"}), timeout_s=BYE_TIMEOUT_S)
                except TransportError:
                    pass
        return Measurements(tuple(nodes), tuple(links), time.monotonic() - start)


def measure(
    node_id: int,
    peers: Mapping[int, tuple[str, int]],
    settings: Settings,
    task: ComputeTask | None = None,
    **kwargs,
) -> Measurements | None:
    """Run one node's measurement process to the end (blocking)."""
    return asyncio.run(MeasureNode(node_id, peers, settings, **kwargs).run(task))
