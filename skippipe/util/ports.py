"""Ports on this host: is one free, find a free range, check a node table's before starting.

A node binds a TCP listener and a UDP socket on its port (DecCom's transport), so a port is
free only when both binds succeed. The TCP probe sets SO_REUSEADDR, as the nodes' listener
does: a port whose last connection still sits in TIME_WAIT (a rerun right after a run) is
free for them, and must be for the check too. A live listener still fails the probe."""
from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Iterable, Mapping

from ..errors import SkipPipeError

LOOPBACK = "127.0.0.1"
PORT_RANGE = (20000, 60000)  # where free ranges are looked for (below the ephemeral ports)
RANGE_TRIES = 200  # random base ports tried before giving up


def port_free(host: str, port: int) -> bool:
    """True when a node could bind `port` on `host` for TCP and UDP now."""
    return bind_error(host, port) is None


def bind_error(host: str, port: int) -> OSError | None:
    """Why a node could not bind `port` (TCP listener with SO_REUSEADDR, then UDP), or None."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                return e
    return None


def free_port_range(n: int, seed: int | None = None, host: str = LOOPBACK) -> int:
    """A base port with ports base..base+n-1 all free on `host`.

    Bases are drawn at random (mixed with `seed`, the pid and the clock) so that concurrent
    callers, e.g. tests in parallel, rarely probe the same range."""
    rng = random.Random(f"{seed}-{os.getpid()}-{time.monotonic_ns()}")
    for _ in range(RANGE_TRIES):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - n)
        if all(port_free(host, base + i) for i in range(n)):
            return base
    raise SkipPipeError(f"no {n} consecutive free ports found on {host}")


def free_port(host: str = LOOPBACK) -> int:
    """One free port on `host`."""
    return free_port_range(1, host=host)


def check_ports(peers: Mapping[int, tuple[str, int]], nodes: Iterable[int]) -> None:
    """One clear error for a port this host's `nodes` need that something else holds."""
    for n in nodes:
        host, port = peers[n]
        err = bind_error(host, port)
        if err is not None:
            raise SkipPipeError(f"port {host}:{port} for node {n} is not free ({err.strerror}); "
                                f"choose another --base-port")
