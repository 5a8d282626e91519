"""Run configuration shared by the launcher and its node processes (`runs/<run-id>/config.json`),
and the writer of each node's JSONL event stream (`runs/<run-id>/events/node-N.jsonl`, the
simulator's timeline format: read it with timeline.read_jsonl)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from ...errors import SkipPipeError
from ...failures import FailureSpec
from ..net.auth import RunAuth

CONFIG_MODE = 0o600  # the config holds the run key: readable by its owner only


@dataclasses.dataclass(frozen=True)
class RunConfig:
    run_dir: str
    scenario_path: str
    scenario_overrides: dict
    schedule_path: str
    variant: str
    iterations: int
    time_scale: float  # emulated seconds = scenario seconds x time_scale (emulation.py): the one
    # source at run time; the scenario's [training] time_scale is only the launcher's default
    emulate_compute: bool  # pad each operation to the scenario's compute time
    emulate_links: bool  # delay each message by the scenario's link time
    peers: dict[int, tuple[str, int]]  # node id -> (host, port)
    local_nodes: tuple[int, ...]  # the nodes this launcher started
    data_nodes: tuple[int, ...]  # stage-0 nodes of the allocation
    epoch: float  # wall-clock time (time.time()) that event times count from
    seed: int
    peer_timeout_s: float  # wall seconds without progress before a peer is declared dead
    connect_timeout_s: float  # wall seconds to wait for every peer at start-up
    save_checkpoint: bool = False
    failures: tuple[FailureSpec, ...] = ()  # the failure plan (failures.py)
    dump_gradients: bool = False  # tests: write each stage's averaged gradients after iteration 0
    stand_in_model: str = ""  # settings file whose [model] (but not n_layers) the nodes run,
    # while emulation keeps the scenario's compute times and message sizes
    run_key: str = ""  # the run's secret (auth.py), hex; every node of the run holds the same

    def auth(self) -> RunAuth:
        """The run's key, with which nodes authenticate each other."""
        return RunAuth.from_hex(self.run_key, f"{self.run_dir}/config.json: run_key")

    def planned_crashes(self) -> set[int]:
        return {f.node for f in self.failures if f.stops}

    def expected_nodes(self, iteration: int) -> int:
        """How many of the local nodes should report `iteration` as finished."""
        gone = {f.node for f in self.failures if f.stops and f.iteration <= iteration}
        return len(set(self.local_nodes) - gone)


def save_config(cfg: RunConfig) -> Path:
    path = Path(cfg.run_dir) / "config.json"
    data = dataclasses.asdict(cfg)
    data["peers"] = [[n, h, p] for n, (h, p) in sorted(cfg.peers.items())]
    # paths inside the run directory are stored relative to it: a moved run still loads
    data["run_dir"] = "."
    data["schedule_path"] = _inside(cfg.schedule_path, cfg.run_dir)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CONFIG_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=1))
    return path


def load_config(path: str | Path) -> RunConfig:
    try:
        data = json.loads(Path(path).read_text())
        here = Path(path).resolve().parent
        data["run_dir"] = str(here / data["run_dir"])
        if data["schedule_path"]:  # absolute paths stay as they are
            data["schedule_path"] = str(here / data["schedule_path"])
        data["peers"] = {int(n): (str(h), int(p)) for n, h, p in data["peers"]}
        for key in ("local_nodes", "data_nodes"):
            data[key] = tuple(data[key])
        data["failures"] = tuple(FailureSpec.parse(f, f"{path}: failures") for f in data["failures"])
        return RunConfig(**data)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SkipPipeError(f"{path}: not a usable run config ({e})") from None


def _inside(path: str, run_dir: str) -> str:
    """`path` relative to `run_dir` when it lies inside it, else as given."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return path


def events_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "events"


class EventWriter:
    """Appends one node's events, `{"t": s since the run's epoch, "node": n, "event": ...}`,
    one JSON object a line (the simulator's timeline format)."""

    def __init__(self, path: Path, node: int, epoch: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.node, self.epoch = path, node, epoch
        self._file = open(path, "a", buffering=1)

    def now(self) -> float:
        return time.time() - self.epoch

    def write(self, event: str, t: float | None = None, **fields) -> None:
        record = {"t": round(self.now() if t is None else t, 6), "node": self.node, "event": event, **fields}
        self._file.write(json.dumps(record) + "\n")
