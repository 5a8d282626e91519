"""The peer table of a measurement: every node id (0..N-1) -> (host, port), from a JSON file
{id: "host:port"} or from a node range with one host and consecutive ports."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import SkipPipeError

DEFAULT_BASE_PORT = 29600
LOCAL_HOST = "127.0.0.1"


def parse_nodes(spec: str) -> list[int]:
    """'0..3' (inclusive) or '0,1,2,3' -> [0, 1, 2, 3]."""
    try:
        if ".." in spec:
            first, last = (int(x) for x in spec.split("..", 1))
            return list(range(first, last + 1))
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SkipPipeError(f"--nodes {spec!r}: expected FIRST..LAST or a comma list") from None


def peer_table(args: argparse.Namespace) -> dict[int, tuple[str, int]]:
    if args.peers:
        try:
            raw = json.loads(Path(args.peers).read_text())
            peers = {int(k): (v.rsplit(":", 1)[0], int(v.rsplit(":", 1)[1])) for k, v in raw.items()}
        except (OSError, ValueError, IndexError, AttributeError) as e:
            raise SkipPipeError(f"{args.peers}: not a peer table {{id: \"host:port\"}} ({e})") from None
        if args.nodes and sorted(parse_nodes(args.nodes)) != sorted(peers):
            raise SkipPipeError(f"--nodes {args.nodes} differs from the nodes of {args.peers}")
    else:
        if not args.nodes:
            raise SkipPipeError("give --local N, or --nodes 0..N-1 (with --host/--base-port), or --peers FILE")
        base = DEFAULT_BASE_PORT if args.base_port is None else args.base_port
        peers = {n: (args.host, base + n) for n in parse_nodes(args.nodes)}
    if sorted(peers) != list(range(len(peers))) or len(peers) < 2:
        raise SkipPipeError(f"nodes must be 0..N-1 with N >= 2, got {sorted(peers)}")
    return peers
