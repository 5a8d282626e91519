"""Measure a live cluster and describe it as a scenario file.

Every node runs one measurement process (`python -m skippipe measure`); node 0 coordinates.
Over our `Transport` it asks, one step at a time so that no two measurements share the CPU or
a link:

1. each node in turn to probe every higher-numbered node: RTT from small CONTROL ping-pongs,
   bandwidth from timed transfers of a `payload_bytes` payload (elapsed time from sending until
   the receiver's acknowledgement arrives, less one RTT); medians over `repeat` after `warmup`;
2. each node in turn to time one pipeline stage of the scenario's model on its device: forward
   and backward seconds per sample per layer (median of `repeat` after `warmup`), peak memory
   (`torch.cuda.max_memory_allocated` on CUDA, else the growth of the process's peak RSS) and
   the activation bytes one microbatch keeps for its backward (autograd's saved tensors).

Node 0 then renders a scenario (`render_scenario`): one location per node (`node-<i>`), links
with latency = RTT/2 and the measured bandwidth, the measured compute speed per location,
[model]/[pipeline]/[costs]/[training] from a template scenario, and a header comment with the
raw figures. `write_scenario` writes it atomically after `load_scenario` accepts it.

Protocol (CONTROL JSON bodies, field "op"): coordinator -> node: hello, probe {peer, repeat,
warmup, payload_bytes}, compute {model, n_stages, samples, repeat, warmup, seed}, bye;
node -> coordinator: ready {pid, host}, probe_result / compute_result {result} or {error};
prober -> peer: ping {seq} -> pong {seq}; a WEIGHTS message tagged BULK_TAG -> got {seq, bytes}.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import os
import resource
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import SkipPipeError
from ..runtime.transport import Transport, TransportError
from ..runtime.wire import Kind, Message

log = logging.getLogger(__name__)

MIB = 1024**2
GIB = 1024**3
COORDINATOR = 0  # node that drives the measurement and writes the scenario
BULK_TAG = 0x53504D45  # tags[0] of bandwidth payloads ("SPME")
TRANSFER_FLOOR_FRACTION = 0.1  # elapsed - RTT counts as at least this share of the elapsed time
CLOSE_GRACE_S = 1.0  # a closed coordinator connection means "gone" unless "bye" arrives by then
BYE_TIMEOUT_S = 2.0  # the coordinator's farewell to a node that may already be gone
SIGNIFICANT_DIGITS = 6  # figures written to the scenario file


class MeasureError(SkipPipeError):
    """A measurement that could not be completed (peer silent, gone, or failing)."""


@dataclass(frozen=True)
class Settings:
    """How much to measure. Times in seconds, sizes in bytes."""

    repeat: int = 5  # timed repetitions of every measurement (the median is kept)
    warmup: int = 1  # untimed repetitions before them
    payload_bytes: int = 4 * MIB  # bandwidth probe size
    timeout_s: float = 900.0  # the whole measurement, start-up included

    def __post_init__(self) -> None:
        if self.repeat < 1 or self.warmup < 0 or self.payload_bytes < 1 or self.timeout_s <= 0:
            raise SkipPipeError("measure: repeat and payload must be >= 1, warmup >= 0, timeout > 0")


@dataclass(frozen=True)
class ComputeTask:
    """What every node times: one stage of `model` (a ModelConfig as a dict) in `n_stages`."""

    model: dict
    n_stages: int
    samples: int  # sequences per timed forward/backward
    seed: int


@dataclass(frozen=True)
class NodeFigures:
    """One node's compute measurement (seconds per sample per layer, per timed repetition)."""

    node: int
    host: str
    device: str
    device_name: str
    samples: int
    layers: int
    forward_s: tuple[float, ...]
    backward_s: tuple[float, ...]
    peak_memory_bytes: int
    memory_kind: str  # how peak_memory_bytes was obtained
    activation_bytes: int  # saved for backward by one forward of `samples` sequences
    capacity_bytes: int  # device memory (CUDA) or host memory (CPU); 0 when unknown
    threads: int = 1  # torch CPU threads during the measurement

    @property
    def forward_median_s(self) -> float:
        return median(self.forward_s)

    @property
    def backward_median_s(self) -> float:
        return median(self.backward_s)


@dataclass(frozen=True)
class LinkFigures:
    """Measurements of the link a -> b (a < b): RTTs and transfer times in seconds."""

    a: int
    b: int
    rtt_s: tuple[float, ...]
    transfer_s: tuple[float, ...]  # send of the payload until its acknowledgement
    payload_bytes: int

    @property
    def rtt_median_s(self) -> float:
        return median(self.rtt_s)

    @property
    def latency_s(self) -> float:
        return self.rtt_median_s / 2

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return bandwidth(self.payload_bytes, self.transfer_s, self.rtt_median_s)


@dataclass(frozen=True)
class Measurements:
    nodes: tuple[NodeFigures, ...]  # by node id
    links: tuple[LinkFigures, ...]  # every unordered pair, a < b
    wall_s: float


# ----------------------------------------------------------------------------------------------
# Aggregation.

def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    if not values:
        raise MeasureError("no measurements to aggregate")
    return float(statistics.median(values))


def bandwidth(payload_bytes: int, transfer_s: Sequence[float], rtt_s: float) -> float:
    """Bytes per second: median over transfers of payload / (elapsed - RTT). The elapsed time
    includes the data's first-byte latency and the acknowledgement's way back (one RTT); jitter
    can make the difference tiny, so it counts as at least TRANSFER_FLOOR_FRACTION of it."""
    rates = [payload_bytes / max(t - rtt_s, t * TRANSFER_FLOOR_FRACTION) for t in transfer_s]
    return median(rates)


def significant(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """x rounded to `digits` significant digits (positive stays positive)."""
    return float(f"{x:.{digits}g}")


# ----------------------------------------------------------------------------------------------
# Compute: one stage of the model on this process's device.

def device_for(name: str):
    import torch

    from ..train.model import pick_device
    return pick_device() if name == "auto" else torch.device(name)


def measure_compute(task: ComputeTask, repeat: int, warmup: int, device, node: int = 0) -> NodeFigures:
    """Time forward and backward of stage 1 (layers only) on `device` with `task.samples`
    sequences; seconds per sample per layer for each timed repetition."""
    import torch

    from ..train.model import build_stage
    from ..scenario import ModelConfig

    cfg = ModelConfig(**task.model)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    _warm_up_libraries(cfg, device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss = _RssPeak()
    stage = build_stage(cfg, 1, task.n_stages, device, task.seed)
    layers = len(stage.layer_ids)
    gen = torch.Generator().manual_seed(task.seed)
    shape = (task.samples, cfg.ctx_tokens, cfg.d_model)
    h = torch.randn(shape, generator=gen).to(device)
    grad = torch.randn(shape, generator=gen).to(device)
    forward, backward = [], []
    per = task.samples * layers
    for i in range(warmup + repeat):
        x = h.detach().requires_grad_(True)  # as received from a peer: its gradient goes back
        sync()
        t0 = time.perf_counter()
        out = stage.run_layers(x)
        sync()
        t1 = time.perf_counter()
        out.backward(grad)
        sync()
        t2 = time.perf_counter()
        stage.zero_grad(set_to_none=True)
        del out, x
        if i >= warmup:
            forward.append((t1 - t0) / per)
            backward.append((t2 - t1) / per)
    act = _saved_bytes(stage, h, {p.untyped_storage().data_ptr() for p in stage.parameters()})
    if cuda:
        peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
        capacity = int(torch.cuda.get_device_properties(device).total_memory)
        name = torch.cuda.get_device_name(device)
    else:
        (peak, kind), capacity, name = rss.growth(), _host_memory_bytes(), _cpu_name()
    return NodeFigures(node, socket.gethostname(), str(device), name, task.samples, layers,
                       tuple(forward), tuple(backward), peak, kind, act, capacity,
                       torch.get_num_threads())


def _warm_up_libraries(cfg, device) -> None:
    """Build and run a minimal model of the same architecture once, so that one-time library
    set-up (lazy imports, allocator and thread pools: ~90 MB of RSS on CPU) is not counted
    as the stage's memory."""
    import torch

    from ..train.model import build_stage

    mini = dataclasses.replace(cfg, d_model=8, n_heads=2, n_layers=2, ffn_hidden=8, ctx_tokens=4,
                               vocab_size=16)
    stage = build_stage(mini, 1, 2, device, 0)
    x = torch.zeros(1, mini.ctx_tokens, mini.d_model, device=device, requires_grad=True)
    stage.run_layers(x).sum().backward()


def _saved_bytes(stage, h, param_ptrs: set[int]) -> int:
    """Bytes autograd keeps from one forward (activations, not parameters)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stage.run_layers(h.detach().requires_grad_(True))
    del out
    return int(sum(seen.values()))


class _RssPeak:
    """Growth of this process's peak resident set from construction to `growth()` (Linux:
    the peak is reset through /proc/self/clear_refs; elsewhere ru_maxrss, a lower bound)."""

    def __init__(self) -> None:
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            pass
        self.start = _status_kib("VmRSS") * 1024 if self.reset else _maxrss_bytes()

    def growth(self) -> tuple[int, str]:
        if self.reset:
            return max(0, _status_kib("VmHWM") * 1024 - self.start), "peak RSS growth"
        return max(0, _maxrss_bytes() - self.start), "ru_maxrss growth (lower bound)"


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def _host_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"cpu x{os.cpu_count()}"


# ----------------------------------------------------------------------------------------------
# The measurement process of one node.

class _NodeLog(logging.LoggerAdapter):
    """Prefixes every record with `[node N]`."""

    def process(self, msg, kwargs):
        return f"[node {self.extra['node']}] {msg}", kwargs


def _ctrl(sender: int, body: dict) -> Message:
    return Message.from_json(Kind.CONTROL, sender, body)


class MeasureNode:
    """One node's measurement process: serves probes and compute requests; node 0 also
    coordinates (`coordinate`). `peers` maps every node id (0..N-1) to (host, port)."""

    def __init__(self, node_id: int, peers: Mapping[int, tuple[str, int]], settings: Settings,
                 device: str = "auto", threads: int | None = 1, run_dir: str | Path | None = None,
                 listen_host: str | None = None, say: Callable[[str], None] = lambda line: None):
        if sorted(peers) != list(range(len(peers))) or node_id not in peers:
            raise MeasureError(f"node ids must be 0..N-1 and include {node_id}, got {sorted(peers)}")
        if len(peers) < 2:
            raise MeasureError("measuring needs at least 2 nodes")
        self.id, self.peers, self.settings = node_id, dict(peers), settings
        self.device_name, self.threads, self.say = device, threads, say
        self.log = _NodeLog(log, {"node": node_id})
        host, port = self.peers[node_id]
        self.transport = Transport(node_id, listen_host or host, port, self.peers,
                                   Path(run_dir) / "transport" if run_dir else None,
                                   on_disconnect=self._closed)
        self.deadline = time.monotonic() + settings.timeout_s
        self.replies: dict[tuple[int, str], asyncio.Queue] = collections.defaultdict(asyncio.Queue)
        self.tasks: set[asyncio.Task] = set()
        self.done: asyncio.Event | None = None  # made inside the loop: "bye" arrived
        self.lost: dict[int, asyncio.Event] = {}  # peer -> its connection closed before "bye"
        self.device = None

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise MeasureError(f"[node {self.id}] measurement did not finish within "
                               f"{self.settings.timeout_s:g} s")
        return left

    async def run(self, task: ComputeTask | None = None) -> Measurements | None:
        """Serve until the coordinator says bye; node 0 coordinates with `task` and returns
        the measurements."""
        self.device = device_for(self.device_name)  # imports torch before anything is timed
        if self.threads:
            import torch
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
            await asyncio.wait({want, lost}, timeout=self.remaining(),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (want, lost):
                f.cancel()
        if want.done() and not want.cancelled():
            return want.result()
        if lost.done() and not lost.cancelled():
            return None
        raise MeasureError(f"[node {self.id}] {what}: the measurement did not finish within "
                           f"{self.settings.timeout_s:g} s")

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
            await self.send(msg.sender, _ctrl(self.id, {"op": "ready", "pid": os.getpid(),
                                                        "host": socket.gethostname()}))
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
            how = Settings(int(body["repeat"]), int(body["warmup"]),
                           int(body.get("payload_bytes", 1)), self.settings.timeout_s)
            if op == "probe":
                result = await self.probe(int(body["peer"]), how)
            else:
                task = ComputeTask(body["model"], int(body["n_stages"]), int(body["samples"]),
                                   int(body["seed"]))
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
        body = await self._first(self.replies[(sender, op)].get(), sender,
                                 f"waiting for {op} from node {sender}")
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
        bulk = Message.from_tensor(Kind.WEIGHTS, self.id, np.zeros(s.payload_bytes, np.uint8),
                                   tags=(BULK_TAG,))
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
        return await asyncio.to_thread(measure_compute, task, s.repeat, s.warmup, self.device, self.id)

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
                        link = _link_from(await self.ask(a, body, "probe_result"))
                    links.append(link)
                    self.say(f"link {a}-{b}: rtt {link.rtt_median_s * 1e3:.3f} ms, bandwidth "
                             f"{link.bandwidth_bytes_per_s / GIB:.3f} GiB/s")
            nodes = []
            for node in range(n):
                if node == self.id:
                    fig = await self.compute(task, self.settings)
                else:
                    body = {"op": "compute", **how, **dataclasses.asdict(task)}
                    fig = _node_from(await self.ask(node, body, "compute_result"))
                nodes.append(fig)
                self.say(f"node {node}: forward {fig.forward_median_s:.3g} s, backward "
                         f"{fig.backward_median_s:.3g} s per sample per layer on {fig.device}")
        finally:
            for node in range(1, n):
                try:
                    await self.transport.send(node, _ctrl(self.id, {"op": "bye"}),
                                              timeout_s=BYE_TIMEOUT_S)
                except TransportError:
                    pass
        return Measurements(tuple(nodes), tuple(links), time.monotonic() - start)


def _link_from(d: dict) -> LinkFigures:
    return LinkFigures(int(d["a"]), int(d["b"]), tuple(map(float, d["rtt_s"])),
                       tuple(map(float, d["transfer_s"])), int(d["payload_bytes"]))


def _node_from(d: dict) -> NodeFigures:
    fields = {f.name: d[f.name] for f in dataclasses.fields(NodeFigures)}
    fields["forward_s"], fields["backward_s"] = tuple(d["forward_s"]), tuple(d["backward_s"])
    return NodeFigures(**fields)


def measure(node_id: int, peers: Mapping[int, tuple[str, int]], settings: Settings,
            task: ComputeTask | None = None, **kwargs) -> Measurements | None:
    """Run one node's measurement process to the end (blocking)."""
    return asyncio.run(MeasureNode(node_id, peers, settings, **kwargs).run(task))


# ----------------------------------------------------------------------------------------------
# From measurements to a scenario file.

def proportional(weights: Sequence[int], total: int) -> list[int]:
    """`total` split into len(weights) integers >= 1, proportional to `weights` (largest
    remainder; ties go to the lower index)."""
    n = len(weights)
    if total < n:
        raise MeasureError(f"{total} nodes cannot fill {n} stages")
    exact = [total * w / sum(weights) for w in weights]
    sizes = [max(1, math.floor(e)) for e in exact]
    while sum(sizes) < total:
        sizes[min(range(n), key=lambda i: (sizes[i] - exact[i], i))] += 1
    while sum(sizes) > total:
        sizes[min((i for i in range(n) if sizes[i] > 1), key=lambda i: (exact[i] - sizes[i], i))] -= 1
    return sizes


def fit_pipeline(pipeline: dict, n_layers: int, n_nodes: int,
                 stage_sizes: Sequence[int] | None = None) -> tuple[dict, list[str]]:
    """The template's [pipeline] table for `n_nodes` nodes: `stage_sizes` when given, else the
    template's when they sum to n_nodes, else the template's proportions over as many stages
    as the nodes allow (fewer only when there are fewer nodes than stages: the most that
    divide the layers); path_length capped at the stage count. Returns the table and notes."""
    sizes = [int(s) for s in pipeline["stage_sizes"]]
    if stage_sizes is not None:
        new = [int(s) for s in stage_sizes]
    elif sum(sizes) == n_nodes:
        new = sizes
    else:
        s = len(sizes)
        if n_nodes < s:
            s = next((c for c in range(n_nodes, 1, -1) if n_layers % c == 0), 0)
            if not s:
                raise MeasureError(f"{n_nodes} nodes cannot hold {n_layers} layers in 2 or more stages")
        new = proportional(sizes[:s], n_nodes)
    out, notes = {**pipeline, "stage_sizes": new}, []
    if new != sizes:
        notes.append(f"pipeline.stage_sizes {sizes} -> {new} for {n_nodes} nodes")
    if out["path_length"] > len(new):
        notes.append(f"pipeline.path_length {out['path_length']} -> {len(new)} (stages)")
        out["path_length"] = len(new)
    return out, notes


def location(node: int) -> str:
    return f"node-{node}"


def render_scenario(template, meas: Measurements, settings: Settings, name: str, command: str,
                    stage_sizes: Sequence[int] | None = None, when: str | None = None) -> str:
    """Scenario TOML text for the measured cluster; [model]/[costs]/[training] and (fitted to
    the node count) [pipeline] come from `template`, a loaded Scenario."""
    n = len(meas.nodes)
    pipeline, notes = fit_pipeline(dataclasses.asdict(template.pipeline), template.model.n_layers,
                                   n, stage_sizes)
    when = when or time.strftime("%Y-%m-%d %H:%M:%S %Z")
    locs = [location(f.node) for f in meas.nodes]
    links = [{"a": location(l.a), "b": location(l.b), "latency_ms": significant(l.latency_s * 1e3),
              "bandwidth_gib_s": significant(l.bandwidth_bytes_per_s / GIB)} for l in meas.links]
    doc = {
        "name": name,
        "description": f"{n} nodes measured {when}; model and training from {template.name}",
        "model": dataclasses.asdict(template.model),
        "pipeline": pipeline,
        "costs": dataclasses.asdict(template.costs),
        "training": dataclasses.asdict(template.training),
        "network": {
            "name": f"{name}-links",
            "locations": locs,
            "compute_s_per_sample_per_layer": {loc: significant(f.forward_median_s)
                                               for loc, f in zip(locs, meas.nodes)},
            "same_location_link": {"latency_ms": min(l["latency_ms"] for l in links),
                                   "bandwidth_gib_s": max(l["bandwidth_gib_s"] for l in links)},
            "links": links,
        },
        "nodes": [{"location": loc, "memory_slots": pipeline["memory_slots"]} for loc in locs],
    }
    header = [f"Measured by: {command}", f"Date: {when}; {n} nodes, {meas.wall_s:.1f} s of measuring.",
              f"Template: {template.source} ({template.name}): [model] [pipeline] [costs] [training] "
              "copied", *notes,
              "Locations node-<i> are the nodes; same_location_link (unused: one node per location) "
              "holds the fastest measured figures.",
              "compute_s_per_sample_per_layer = measured forward; backward is costs.backward_factor "
              "x forward (measured ratio below).", "",
              *summary_lines(meas, settings),
              *memory_warnings(meas, pipeline["memory_slots"])]
    return dump_toml(doc, header)


def summary_lines(meas: Measurements, settings: Settings) -> list[str]:
    """The raw figures, one line per node and per link."""
    f0 = meas.nodes[0]
    lines = [f"Compute: one stage of {f0.layers} layers, {f0.samples} samples per timing, "
             f"{f0.threads} CPU thread(s), median of {settings.repeat} after {settings.warmup} "
             "warm-up; seconds per sample per layer",
             f"{'node':>4}  {'host':<12} {'device':<7} {'forward s':>10} {'(min..max)':>22}  "
             f"{'backward s':>10} {'bwd/fwd':>7}  {'peak MiB':>9}  {'act MiB/mb':>10}"]
    for f in meas.nodes:
        spread = f"({min(f.forward_s):.3g}..{max(f.forward_s):.3g})"
        lines.append(f"{f.node:>4}  {f.host[:12]:<12} {f.device:<7} {f.forward_median_s:>10.4g} "
                     f"{spread:>22}  {f.backward_median_s:>10.4g} "
                     f"{f.backward_median_s / f.forward_median_s:>7.2f}  "
                     f"{f.peak_memory_bytes / MIB:>9.1f}  {f.activation_bytes / MIB:>10.2f}")
    names = {f.device_name for f in meas.nodes}
    devices = (f"all {names.pop()}" if len(names) == 1
               else ", ".join(f"{f.node}: {f.device_name}" for f in meas.nodes))
    kinds = " / ".join(sorted({f.memory_kind for f in meas.nodes}))
    lines.append(f"peak memory: {kinds} (stage, gradients, activations); devices: {devices}")
    lines.append(f"Links: RTT = median of {settings.repeat} CONTROL ping-pongs; bandwidth = payload / "
                 f"(elapsed - RTT), median of {settings.repeat} transfers of "
                 f"{settings.payload_bytes / MIB:g} MiB; latency = RTT / 2")
    lines.append(f"{'link':>6}  {'rtt ms':>8} {'(min..max)':>19}  {'transfer ms':>11} "
                 f"{'(min..max)':>19}  {'latency ms':>10}  {'GiB/s':>8}")
    for l in meas.links:
        lines.append(f"{f'{l.a}-{l.b}':>6}  {l.rtt_median_s * 1e3:>8.3f} "
                     f"{f'({min(l.rtt_s) * 1e3:.3f}..{max(l.rtt_s) * 1e3:.3f})':>19}  "
                     f"{median(l.transfer_s) * 1e3:>11.3f} "
                     f"{f'({min(l.transfer_s) * 1e3:.3f}..{max(l.transfer_s) * 1e3:.3f})':>19}  "
                     f"{l.latency_s * 1e3:>10.4f}  {l.bandwidth_bytes_per_s / GIB:>8.3f}")
    return lines


def memory_warnings(meas: Measurements, slots: int) -> list[str]:
    """Nodes whose memory cannot hold `slots` microbatches' activations besides the stage."""
    out = []
    for f in meas.nodes:
        need = f.peak_memory_bytes + (slots - 1) * f.activation_bytes
        if f.capacity_bytes and need > f.capacity_bytes:
            out.append(f"WARNING: node {f.node} needs ~{need / GIB:.2f} GiB for {slots} memory slots, "
                       f"its device has {f.capacity_bytes / GIB:.2f} GiB")
    return out


def write_scenario(text: str, out: str | Path):
    """Write `text` to `out` atomically once load_scenario accepts it; returns the Scenario."""
    from ..scenario import load_scenario

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        load_scenario(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return load_scenario(out)


# ----------------------------------------------------------------------------------------------
# A small TOML writer (tomllib only reads).

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def dump_toml(doc: dict, header: Sequence[str] = ()) -> str:
    """TOML text for `doc`: top-level values first, then one [table] per dict value and one
    [[array]] entry per dict of a list of dicts. Inside a table, dicts are inline tables and a
    list of dicts is a multi-line array of inline tables. `header` lines become comments."""
    lines = [f"# {h}".rstrip() for h in header]
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in doc.items() if _dict_list(v)}
    for key, value in doc.items():
        if key not in tables and key not in arrays:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for key, table in tables.items():
        lines += ["", f"[{toml_key(key)}]", *_table_body(table)]
    for key, items in arrays.items():
        for item in items:
            lines += ["", f"[[{toml_key(key)}]]", *_table_body(item)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _dict_list(v) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def _table_body(table: dict) -> list[str]:
    out = []
    for key, value in table.items():
        if _dict_list(value):
            out += [f"{toml_key(key)} = [", *(f"  {toml_value(v)}," for v in value), "]"]
        else:
            out.append(f"{toml_key(key)} = {toml_value(value)}")
    return out


def toml_key(key: str) -> str:
    key = str(key)
    return key if key and set(key) <= _BARE_KEY else toml_string(key)


def toml_string(s: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F
                                              else c) for c in s) + '"'


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)  # shortest round trip; inf, -inf and nan are TOML too
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }" \
            if v else "{}"
    raise TypeError(f"no TOML form for {type(v).__name__}")
