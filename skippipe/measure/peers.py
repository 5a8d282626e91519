"""The peer table of a measurement: every node id (0..N-1) -> (host, port), from a JSON file
{id: "host:port"} or from a node range with one host and consecutive ports (util.peers reads
and builds both; here: the `measure` options and the rule that the nodes are 0..N-1, N >= 2)."""

from __future__ import annotations

import argparse

from ..errors import SkipPipeError
from ..util.peers import Peers, load_peers, local_peers
from ..util.ports import LOOPBACK

DEFAULT_BASE_PORT = 29600  # apart from `run`'s 29500: a measurement next to a run does not clash
LOCAL_HOST = LOOPBACK


def parse_nodes(spec: str) -> list[int]:
    """'0..3' (inclusive) or '0,1,2,3' -> [0, 1, 2, 3]."""
    try:
        if ".." in spec:
            first, last = (int(x) for x in spec.split("..", 1))
            return list(range(first, last + 1))
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SkipPipeError(f"--nodes {spec!r}: expected FIRST..LAST or a comma list") from None


def peer_table(args: argparse.Namespace) -> Peers:
    """The table from --peers (checked against --nodes when both are given), else from
    --nodes with --host and --base-port."""
    if args.peers:
        peers = load_peers(args.peers)
        if args.nodes and sorted(parse_nodes(args.nodes)) != sorted(peers):
            raise SkipPipeError(f"--nodes {args.nodes} differs from the nodes of {args.peers}")
    else:
        if not args.nodes:
            raise SkipPipeError(
                "give --local N, or --nodes 0..N-1 (with --host/--base-port), or --peers FILE"
            )
        base = DEFAULT_BASE_PORT if args.base_port is None else args.base_port
        peers = local_peers(parse_nodes(args.nodes), args.host, base)
    if sorted(peers) != list(range(len(peers))) or len(peers) < 2:
        raise SkipPipeError(f"nodes must be 0..N-1 with N >= 2, got {sorted(peers)}")
    return peers
