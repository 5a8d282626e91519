"""Ports on this host: is one free, find a free range, check a node table's before starting.

A node binds a TCP listener and a UDP socket on its port (DecCom's transport), so a port is
free only when both binds succeed. The TCP probe sets SO_REUSEADDR, as the nodes' listener
does: a port whose last connection still sits in TIME_WAIT (a rerun right after a run) is
free for them, and must be for the check too. A live listener still fails the probe.

A launcher also holds a lock file per port (`reserve_ports`, portlock.py) from its check until
its nodes are gone: a second run on the same ports, started while the first still plans or
starts its nodes (before they bind), gets one clear error instead of merging into the first."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Iterable, Iterator, Mapping

from ..errors import SkipPipeError
from . import portlock

LOOPBACK = "127.0.0.1"
PORT_RANGE = (20000, 32768)  # where free ranges are looked for: below Linux's ephemeral ports, which
# outgoing connections take at any moment (a chosen port must stay free until its node binds it)
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
    """One clear error for a port this host's `nodes` need that something else holds (or an
    address this host cannot listen on)."""
    for n in nodes:
        host, port = peers[n]
        check_host(host)
        err = bind_error(host, port)
        if err is not None:
            raise SkipPipeError(
                f"port {host}:{port} for node {n} is not free ({err.strerror}); choose another --base-port"
            )


def check_host(host: str) -> None:
    """One clear error for a host name that does not resolve or is not an address of this host."""
    try:
        socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):  # the resolver's words vary from host to host
        raise SkipPipeError(f"host {host!r} does not resolve; check --host or --peers") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as e:
            raise SkipPipeError(
                f"host {host!r} is not an address of this machine ({e.strerror}); check --host or --peers"
            ) from None


@contextlib.contextmanager
def reserve_free_ports(host: str, nodes: Iterable[int]) -> Iterator[dict[int, tuple[str, int]]]:
    """A free port on `host` for each of `nodes`, held as `reserve_ports` holds them: each one is
    locked first and then checked, and one that another run holds (chosen by it but not bound
    yet) or that is taken meanwhile is passed over for another, never an error."""
    check_host(host)
    directory = portlock.lock_dir()
    with contextlib.ExitStack() as held:
        yield {n: (host, _claim_free_port(held, directory, host, n)) for n in nodes}


def _claim_free_port(held: contextlib.ExitStack, directory, host: str, node: int) -> int:
    for _ in range(RANGE_TRIES):
        port = free_port(host)
        with contextlib.ExitStack() as attempt:
            try:
                attempt.enter_context(portlock.port_lock(directory, host, port, node))
            except portlock.PortHeld:
                continue
            if port_free(host, port):
                held.enter_context(attempt.pop_all())
                return port
    raise SkipPipeError(f"no free port found on {host} for node {node}")


@contextlib.contextmanager
def reserve_ports(peers: Mapping[int, tuple[str, int]], nodes: Iterable[int]) -> Iterator[None]:
    """Hold this host's ports of `nodes` for one run: lock each port's file (another run that
    holds one is named in the error), then check that each port is free."""
    for n in nodes:
        check_host(peers[n][0])  # a bad address is the user's to fix, whoever holds the ports
    directory = portlock.lock_dir()
    with contextlib.ExitStack() as held:
        for n in nodes:
            host, port = peers[n]
            held.enter_context(portlock.port_lock(directory, host, port, n))
        check_ports(peers, nodes)
        yield
