"""Rendezvous: the nodes of a multi-host run find each other through one address, HOST:PORT.

The address book is a small store (keystore.py) that the first process on the rendezvous host
to bind PORT serves (a launcher or a node); every other process is its client. Under torchrun
its agent already serves a torch.distributed TCPStore on that address, to anyone and for the
whole run (torchrun's own, which this package cannot close): the nodes put one signed entry
there, the address of our store, which the first node to claim that entry serves on a free port;
everything else goes through our store. Each registrant claims its node ids once
(compare-and-set: a second claim of an id is an error), writes its nodes' reachable addresses
with the run's setup, waits until every node of the scenario has registered, and reads the
others'. The host of node 0 then publishes the
schedule every node runs, so the hosts need not plan the same schedule themselves. Each
registrant marks its nodes done once it has what it needs (`finish`); the serving process
stops serving when every node is done (or at the rendezvous deadline), before training starts.

Our store answers only holders of the run key, and bounds what they can make it hold; a host
with another key is told "the run keys differ" (under torchrun: it finds the store's address
signed with another key). TCPStore has no authentication, so every value is also signed:
`HMAC-SHA256(run key, "R" | key | payload)` in hex, a space, then the payload (JSON, or the
schedule's bytes). A value is parsed only after its MAC checks, nothing is
unpickled, and the keys live under the run id (derived from the key), so runs sharing a store
never meet. A holder of no key can still delete or overwrite the entry in torchrun's TCPStore
(the run then stops with one error line), but never place a node in the run.
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
import json
import os
import secrets
import socket
import time

from ...errors import SkipPipeError
from ...util.peers import Peers, parse_address
from ..net.auth import RunAuth
from .keystore import KeysDiffer, StoreClient, StoreError, StoreServer

DEFAULT_TIMEOUT_S = 300.0  # wall seconds for every node to register (torchrun waits 900)
POLL_S = 0.1  # how often a waiting registrant looks for the missing keys
CONNECT_RETRY_S = 0.2  # pause between connection attempts while the store comes up
ROLE = b"R"  # in the MAC: a rendezvous entry is never valid as a handshake MAC
SCHEDULE = "schedule"
AGENT_STORE = "TORCHELASTIC_USE_AGENT_STORE"  # torchrun sets it: its agent serves the store


class RendezvousError(SkipPipeError):
    """The rendezvous failed: unreachable store, a missing, forged or doubly claimed node."""


def parse_endpoint(text: str, option: str = "--rendezvous") -> tuple[str, int]:
    """'host:port' -> (host, port); one clear error otherwise."""
    try:
        return parse_address(text)
    except ValueError as e:
        raise RendezvousError(f"{option} {text!r}: not HOST:PORT ({e})") from None


def reachable_address(endpoint: tuple[str, int]) -> str:
    """This host's address on the route to the rendezvous host: what the other hosts can reach
    (a UDP connect only asks the kernel for the route; nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(endpoint)
        except OSError as e:
            raise RendezvousError(
                f"rendezvous {_shown(endpoint)}: no route to it ({e.strerror or e})"
            ) from None
        return s.getsockname()[0]


def _is_local(host: str) -> bool:
    """Whether `host` is an address of this machine (so this process may serve the store)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError:
            return False
    return True


def _shown(endpoint: tuple[str, int]) -> str:
    return f"{endpoint[0]}:{endpoint[1]}"


class Rendezvous:
    """One process's view of the run's address book at `endpoint`."""

    def __init__(
        self,
        endpoint: tuple[str, int],
        auth: RunAuth,
        n_nodes: int,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        scope: str = "",
    ):
        self.endpoint, self.auth, self.n_nodes, self.timeout_s = endpoint, auth, n_nodes, timeout_s
        # scope: a torchrun restart registers afresh in the agent's long-lived store
        self.prefix = f"skippipe/{auth.run_id.hex()}/{scope}/"
        self.scope = scope
        self.where = f"rendezvous {_shown(endpoint)}"
        self.server: StoreServer | None = None  # the store, when this process serves it
        self.store: StoreClient | None = None
        self.store = self._open(time.monotonic() + timeout_s)

    @property
    def serves(self) -> bool:
        """Whether this process serves the store."""
        return self.server is not None

    def close(self) -> None:
        """Drop the connection to the store, and stop serving it when this process does."""
        if self.store is not None:
            self.store.close()
        self.store = None
        if self.server is not None:
            self.server.close()

    def finish(self, nodes) -> None:
        """Mark this process's `nodes` done (they have the table and the schedule); the serving
        process waits until every node is done, or the deadline, so no host loses the store
        while it still needs it. Then the store is closed (and no longer served)."""
        for n in nodes:
            self._call("finishing", self.store.set, self.prefix + f"done/{n}", b"1")
        if self.server is not None:
            with contextlib.suppress(RendezvousError):  # a host that never comes: stop anyway
                self._await(
                    [f"done/{n}" for n in range(self.n_nodes)],
                    self.timeout_s,
                    "waiting for every node to have the schedule",
                )
        self.close()

    def __enter__(self) -> Rendezvous:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the store ------------------------------------------------------------------------------
    def _open(self, deadline: float):
        if os.environ.get(AGENT_STORE) == "True":
            return self._open_agent_store(deadline)
        if _is_local(self.endpoint[0]):
            try:
                self.server = StoreServer(self.endpoint, self.auth, self.n_nodes)
            except OSError:
                pass  # the port is taken: another process here serves it (or something else does)
        while True:
            self._await_listener(deadline)
            try:
                return StoreClient(self.endpoint, self.auth, self.timeout_s)
            except KeysDiffer:
                self.close()
                raise RendezvousError(
                    f"{self.where}: the run keys differ: the store there serves a "
                    f"run with another key; give every host the same --run-key-file "
                    f"or SKIPPIPE_RUN_KEY"
                ) from None
            except (StoreError, OSError) as e:
                # a store that is starting or busy (a loaded host) may drop a handshake: try
                # again until the deadline, as for a store not yet listening
                if time.monotonic() > deadline:
                    self.close()
                    raise RendezvousError(
                        f"{self.where}: no rendezvous store answers there "
                        f"({getattr(e, 'strerror', None) or e})"
                    ) from None
                time.sleep(CONNECT_RETRY_S)

    def _open_agent_store(self, deadline: float) -> StoreClient:
        """Under torchrun: our store, at the address that the first node to claim it put into
        torchrun's TCPStore (signed, under a key of no run id, so that a node with another key
        finds it and says the keys differ); the TCPStore is then left alone."""
        from torch.distributed import DistError, TCPStore

        self._await_listener(deadline)
        try:
            agent = TCPStore(
                *self.endpoint, is_master=False, timeout=datetime.timedelta(seconds=self.timeout_s)
            )
        except DistError as e:  # its message carries a C++ stack trace: the first line only
            why = str(e).splitlines()[0]
            raise RendezvousError(f"{self.where}: no store answers there ({why})") from None
        name = f"skippipe/{self.scope}/store"
        server = StoreServer((reachable_address(self.endpoint), 0), self.auth, self.n_nodes)
        offer = self._signed(name, "{}:{}".format(*server.sock.getsockname()[:2]).encode())
        try:
            held = agent.compare_set(name, "", offer)
        except DistError as e:
            server.close()
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise RendezvousError(f"{self.where}: the store failed while claiming it ({why})") from None
        del agent  # torchrun's store is not used again
        if held == offer:
            self.server = server
        else:
            server.close()
        address = self._checked(name, held, "the store's address in torchrun's store").decode()
        try:
            return StoreClient(parse_endpoint(address), self.auth, max(0.1, deadline - time.monotonic()))
        except (StoreError, OSError) as e:
            self.close()
            raise RendezvousError(
                f"{self.where}: the store at {address} does not answer ({getattr(e, 'strerror', None) or e})"
            ) from None

    def _await_listener(self, deadline: float) -> None:
        """Wait for something to listen at the endpoint with plain sockets: torch's own retries
        fill the console with C++ stack traces."""
        while True:
            try:
                socket.create_connection(self.endpoint, timeout=max(0.1, deadline - time.monotonic())).close()
                return
            except OSError as e:
                if time.monotonic() > deadline:
                    raise RendezvousError(
                        f"{self.where}: unreachable within {self.timeout_s:g} s "
                        f"({e.strerror or e}); is the first host started?"
                    ) from None
            time.sleep(CONNECT_RETRY_S)  # a connection refused returns at once: pace the retries

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (StoreError, OSError) as e:
            why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
            raise RendezvousError(f"{self.where}: the store failed while {what} ({why})") from None

    def _await(self, names: list[str], seconds: float, what: str) -> None:
        """Wait until every key of `names` is in the store (polling `check`: a blocking wait
        logs C++ warnings at its timeout)."""
        deadline = time.monotonic() + seconds
        keys = [self.prefix + n for n in names]
        while not self._call(what, self.store.check, keys):
            if time.monotonic() > deadline:
                missing = [n for n, k in zip(names, keys) if not self._call(what, self.store.check, [k])]
                raise RendezvousError(
                    f"{self.where}: {what}: still missing {', '.join(missing)} after "
                    f"{seconds:g} s{self._other_keys()}"
                )
            time.sleep(POLL_S)

    def _other_keys(self) -> str:
        """What to add to a timeout when hosts with another key were turned away."""
        if self.server is None or not self.server.other_keys:
            return ""
        return (
            f"; {self.server.other_keys} connection(s) with another run key were refused: the run "
            f"keys differ (give every host the same --run-key-file or SKIPPIPE_RUN_KEY)"
        )

    # -- signed values ----------------------------------------------------------------------------
    def _sign(self, name: str, payload: bytes) -> bytes:
        return self._signed(self.prefix + name, payload)

    def _signed(self, key: str, payload: bytes) -> bytes:
        return self.auth.mac(ROLE, key.encode() + b"\0" + payload).hex().encode() + b" " + payload

    def _verify(self, name: str, value: bytes, what: str) -> bytes:
        return self._checked(self.prefix + name, value, what)

    def _checked(self, key: str, value: bytes, what: str) -> bytes:
        mac, _, payload = bytes(value).partition(b" ")
        if not hmac.compare_digest(mac, self._signed(key, payload).partition(b" ")[0]):
            raise RendezvousError(
                f"{self.where}: {what} is not signed with this run's key: the run "
                f"keys differ, or a process without the key wrote it; refusing it"
            )
        return payload

    # -- the address book --------------------------------------------------------------------------
    def register(self, mine: Peers, setup: dict) -> Peers:
        """Claim this process's nodes with their addresses, wait for every node of the run and
        return the whole table. `setup` (JSON-able) must be the same on every host."""
        start = time.monotonic()
        setup = json.loads(json.dumps(setup))  # compared as the others' arrive: through JSON
        token = secrets.token_hex(8)  # tells our own entry from another claimant's equal one
        for n, (host, port) in sorted(mine.items()):
            entry = json.dumps({"node": n, "host": host, "port": port, "by": token, "setup": setup}).encode()
            value = self._sign(f"node/{n}", entry)
            held = self._call("registering", self.store.compare_set, self.prefix + f"node/{n}", "", value)
            if held != value:
                other = self._entry(n, held)
                raise RendezvousError(
                    f"{self.where}: node {n} is claimed twice: {other['host']}:"
                    f"{other['port']} holds it, {host}:{port} asked; give every "
                    f"host its own node range (rank)"
                )
        names = [f"node/{n}" for n in range(self.n_nodes)]
        self._await(names, self.timeout_s - (time.monotonic() - start), "waiting for every node to register")
        entries = {
            n: self._entry(n, self._call("reading", self.store.get, self.prefix + f"node/{n}"))
            for n in range(self.n_nodes)
        }
        return self._table(entries, setup)

    def _entry(self, n: int, value: bytes) -> dict:
        entry = json.loads(self._verify(f"node/{n}", value, f"node {n}'s entry"))
        if entry.get("node") != n:
            raise RendezvousError(f"{self.where}: node {n}'s entry names node {entry.get('node')}")
        return entry

    def _table(self, entries: dict[int, dict], setup: dict) -> Peers:
        """The peer table, once every entry agrees with our setup and no address is taken twice."""
        peers: Peers = {}
        taken: dict[tuple[str, int], int] = {}  # address -> the node that registered it
        for n, e in sorted(entries.items()):
            where = f"{e['host']}:{e['port']}"
            theirs = e.get("setup", {})
            for key in sorted(set(setup) | set(theirs)):
                if setup.get(key) != theirs.get(key):
                    raise RendezvousError(
                        f"{self.where}: node {n} ({where}) runs {key} "
                        f"{theirs.get(key)!r}, this host {setup.get(key)!r}; start "
                        f"every host with the same scenario, setting and options"
                    )
            address = (str(e["host"]), int(e["port"]))
            if address in taken:
                raise RendezvousError(f"{self.where}: nodes {taken[address]} and {n} both registered {where}")
            peers[n], taken[address] = address, n
        return peers

    # -- the schedule -------------------------------------------------------------------------------
    def publish(self, name: str, data: bytes) -> None:
        """Make `data` (e.g. node 0's schedule) readable by every node of the run."""
        self._call(f"publishing the {name}", self.store.set, self.prefix + name, self._sign(name, data))

    def fetch(self, name: str, timeout_s: float) -> bytes:
        """What another process published as `name`, waiting up to `timeout_s` for it."""
        self._await([name], timeout_s, f"waiting for node 0's host to publish the {name}")
        return self._verify(
            name, self._call(f"reading the {name}", self.store.get, self.prefix + name), f"the {name}"
        )
