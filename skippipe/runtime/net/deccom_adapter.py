"""DecCom 0.1.0 made fit for SkipPipe's transport: quiet modules, node identity, and the UDP and
peer-discovery layers under the stream layer (`streams.py`).

What comes from DecCom here: node identity (a `Peer` whose public key is the decimal node id, so
the 32-byte node key is SHA256(str(node_id)), as in the SkipPipe reference trainer; a name, not
a proof: connections prove it with the run key, see auth.py) and peer
discovery (`FixedPeers` over a static table {node_id: (host, port)}, or `KademliaDiscovery` from
a bootstrap address, both over DecCom's UDP `DefaultProtocol`).

What is replaced, and why (faults of deccom 0.1.0 found by reading its source):
- Every stream event appends to `log<key>.txt` in the working directory and modules print to
  stdout. We replace `print` and `open` inside DecCom's modules: prints become DEBUG records of
  the `skippipe.deccom` logger; its log files go to `<run_dir>/deccom/` of the node they name
  (`log_to`), or to that logger when the node has no run directory.
- `FixedPeers` calls its connected callback with one argument instead of two (TypeError on the
  first datagram) and introduces itself only after a fixed 2 s; with a static table we need no
  introductions, so they are skipped and the callback arity is fixed.
- `KademliaDiscovery.find_peer` poisons later lookups of a key when a waiting lookup is
  cancelled; the stream layer runs lookups as shielded tasks and polls them, never cancels.
"""

from __future__ import annotations

import builtins
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from deccom.cryptofuncs.hash import SHA256
from deccom.peers.peer import Peer
from deccom.protocols.defaultprotocol import DefaultProtocol
from deccom.protocols.peerdiscovery.abstractpeerdiscovery import AbstractPeerDiscovery
from deccom.protocols.peerdiscovery.fixedpeers import FixedPeers
from deccom.protocols.peerdiscovery.kademliadiscovery import KademliaDiscovery

deccom_logger = logging.getLogger("skippipe.deccom")

KADEMLIA_REFRESH_S = 5  # seconds between DecCom Kademlia table refreshes (its default is 60)


# ---------------------------------------------------------------------------------------------
# Keeping DecCom quiet: its modules get their own `print` and `open`.

_RUN_DIRS: dict[str, Path] = {}  # DecCom public key (str node id) -> run directory
_LOG_NAME = re.compile(r"^log(?P<key>.+)\.txt$")


class _LogSink:
    """File-like object turning DecCom's log-file writes into logging records."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, text: str) -> int:
        for line in str(text).splitlines():
            if line.strip():
                deccom_logger.debug("%s: %s", self.name, line)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _LogSink:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _deccom_open(file, mode="r", *args, **kwargs):
    """DecCom only appends to `log<key>.txt`; send that to the node's run dir or to logging."""
    if not isinstance(file, (str, os.PathLike)) or not any(c in mode for c in "wax+"):
        return builtins.open(file, mode, *args, **kwargs)
    name = os.path.basename(os.fspath(file))
    match = _LOG_NAME.match(name)
    run_dir = _RUN_DIRS.get(match.group("key")) if match else None
    if run_dir is None:
        return _LogSink(name)
    target = run_dir / "deccom"
    target.mkdir(parents=True, exist_ok=True)
    return builtins.open(target / name, mode, *args, **kwargs)


def _deccom_print(*args, sep=" ", end="\n", file=None, flush=False) -> None:
    deccom_logger.debug("%s", sep.join(str(a) for a in args))


def quiet_deccom() -> None:
    """Replace `print` and `open` in every loaded DecCom module (idempotent; call again after
    importing more of DecCom)."""
    for name, module in list(sys.modules.items()):
        if module is not None and (name == "deccom" or name.startswith("deccom.")):
            module.print = _deccom_print
            module.open = _deccom_open


def log_to(node_id: int, run_dir: Path) -> None:
    """DecCom's log files of node `node_id` go to `run_dir`/deccom/ from now on."""
    _RUN_DIRS[str(node_id)] = run_dir


def stop_logging_to(node_id: int) -> None:
    """Node `node_id`'s DecCom log files go to the logger again."""
    _RUN_DIRS.pop(str(node_id), None)


quiet_deccom()


# ---------------------------------------------------------------------------------------------
# Node identity and the layers below the streams.


def node_key(node_id: int) -> bytes:
    """DecCom node key of a SkipPipe node: SHA256 of its decimal id."""
    return SHA256(str(node_id))


def node_id_of(peer: Peer | None) -> int | None:
    """The SkipPipe node id a DecCom peer stands for, if its key matches its public key."""
    if peer is None or not isinstance(peer.pub_key, str) or not peer.pub_key.isdecimal():
        return None
    node = int(peer.pub_key)
    return node if node_key(node) == peer.id_node else None


class QuietUdp(DefaultProtocol):
    """DecCom's UDP layer without the log file per unmatched datagram."""

    async def call_callback(self, addr, data):
        try:
            self.callback(addr, data)
        except Exception:  # a bad datagram must not stop the node
            deccom_logger.debug("datagram from %s failed", addr, exc_info=True)


class StaticPeers(FixedPeers):
    """FixedPeers without the delayed introductions, with the callback arity fixed."""

    async def start(self, p: Peer):
        await AbstractPeerDiscovery.start(self, p)

    def set_static(self, peer: Peer) -> None:
        old = self.peers.get(peer.id_node)
        if old is not None:
            self.a_to_p.pop(old.addr, None)
        self.p_to_a[peer.id_node] = peer.addr
        self.a_to_p[peer.addr] = peer
        self.peers[peer.id_node] = peer

    def process_datagram(self, addr, data):
        peer = self.a_to_p.get(addr)
        if peer is None or not data:
            return
        if addr not in self.introduced:
            self.introduced.append(addr)
            self.connected_callback(addr, peer)
        if data[0] == FixedPeers.EXIT:
            self.remove_peer(addr, peer.id_node)


def discovery_layer(
    node_id: int, peers: Mapping[int, tuple[str, int]] | None, bootstrap: tuple[str, int] | None
):
    """DecCom peer discovery over quiet UDP: the static table `peers` (this node's own entry
    skipped), else Kademlia from the `bootstrap` address (None: this node starts a network)."""
    if peers is not None:
        table = [Peer((h, p), pub_key=str(n), tcp=p) for n, (h, p) in peers.items() if n != node_id]
        discovery = StaticPeers(table)
    else:
        seeds = []
        if bootstrap is not None:
            host, port = bootstrap
            seeds.append(Peer((host, port), pub_key="bootstrap", tcp=port))
        discovery = KademliaDiscovery(seeds, interval=KADEMLIA_REFRESH_S)
    discovery.set_lower(QuietUdp())
    return discovery
