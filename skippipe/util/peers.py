"""Peer tables {node id: (host, port)}: every node's address, on one host or read from a
peers.json file ({"0": "host:port", ...}, as every host of a multi-host run is given)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SkipPipeError

Peers = dict[int, tuple[str, int]]
PORT_MAX = 65535


def local_peers(nodes, host: str, base_port: int) -> Peers:
    """Node i listens on host:base_port+i."""
    return {n: (host, base_port + n) for n in nodes}


def load_peers(path: str | Path, n_nodes: int | None = None) -> Peers:
    """The table in `path`; with `n_nodes`, every node 0..n_nodes-1 must have an address."""
    try:
        raw = json.loads(Path(path).read_text())
        peers = {int(k): parse_address(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as e:
        raise SkipPipeError(f'{path}: not a peer table {{id: "host:port"}} ({e})') from None
    if n_nodes is not None:
        missing = sorted(set(range(n_nodes)) - set(peers))
        if missing:
            raise SkipPipeError(f"{path}: no address for node {missing[0]}")
    return peers


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' -> (host, port); ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    if not 0 < int(port) <= PORT_MAX:
        raise ValueError(f"{text!r}: port outside 1..{PORT_MAX}")
    return host, int(port)
