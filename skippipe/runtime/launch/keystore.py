"""The rendezvous's own store: a small key-value server that only holders of the run key reach,
for as long as the hosts of one run need it to meet (rendezvous.py).

Why not torch's TCPStore: it takes anyone, and holds whatever it is sent (150 sets of 7 MiB
from a stranger grew a launcher by 1 GB), for the whole run. Here a connection starts with the
challenge-response of auth.py (its own identities, so no message of it is valid between
nodes); before it succeeds a client can make the server read one 116-byte HELLO, nothing
more, within HANDSHAKE_S. After it, requests are bounded: a key of at most MAX_KEY_BYTES, a
value of at most MAX_VALUE_BYTES, at most `max_keys` keys and MAX_STORE_BYTES in all. A
client of another run (another key, so another run id) is told so in four bytes, and both
sides say "the run keys differ".

Wire: each message is a 4-byte big-endian length and that many bytes: parts, each a 4-byte
length and its bytes. Requests: [b"set", key, value] -> [b"ok"]; [b"cas", key, value] (set
unless present) -> [held value]; [b"get", key] -> [] or [value]; [b"check", key...] ->
[b"1" or b"0"]. An error is [b"error", why]. Values are the rendezvous's signed bytes; the
server parses none of them."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import struct
import threading

from ...errors import SkipPipeError
from ..net.auth import CHALLENGE_BYTES, HELLO_BYTES, MAGIC, PROOF_BYTES, RUN_ID_BYTES, AuthError, RunAuth

log = logging.getLogger("skippipe.runtime.launch.keystore")

SERVER_KEY = hashlib.sha256(b"skippipe rendezvous store").digest()  # identities in the handshake
CLIENT_KEY = hashlib.sha256(b"skippipe rendezvous client").digest()
KEYS_DIFFER = b"SPk!"  # the server's whole answer to a HELLO of another run
HANDSHAKE_S = 5.0  # a connection must authenticate within this
MAX_CLIENTS = 64  # connections at once beyond one per node of the run; more are closed at once
MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 128 * 1024**2  # a schedule of thousands of nodes fits
MAX_STORE_BYTES = 256 * 1024**2
ACCEPT_POLL_S = 0.2  # how often the accepting thread looks whether the server was closed
LENGTH = struct.Struct(">I")


class StoreError(SkipPipeError):
    """The store refused a request, or the connection to it failed."""


class KeysDiffer(StoreError):
    """The store belongs to a run with another key."""


# -- framing -------------------------------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1024**2))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def send_message(sock: socket.socket, parts: list[bytes]) -> None:
    body = b"".join(LENGTH.pack(len(p)) + p for p in parts)
    sock.sendall(LENGTH.pack(len(body)) + body)


def recv_message(sock: socket.socket, limit: int) -> list[bytes]:
    """One message's parts; ConnectionError for one longer than `limit` (nothing of it is read)."""
    (n,) = LENGTH.unpack(_recv_exact(sock, LENGTH.size))
    if n > limit:
        raise ConnectionError(f"a message of {n} bytes, more than {limit}")
    body, parts, at = _recv_exact(sock, n), [], 0
    while at < n:
        if at + LENGTH.size > n:
            raise ConnectionError("a malformed message")
        (size,) = LENGTH.unpack_from(body, at)
        parts.append(body[at + LENGTH.size : at + LENGTH.size + size])
        at += LENGTH.size + size
        if at > n:
            raise ConnectionError("a malformed message")
    return parts


REQUEST_LIMIT = MAX_KEY_BYTES + MAX_VALUE_BYTES + 64


# -- the server ------------------------------------------------------------------------------------
class StoreServer:
    """Serves the store on `endpoint` (binds it now: OSError when the port is taken) from
    background threads, until `close`."""

    def __init__(self, endpoint: tuple[str, int], auth: RunAuth, n_nodes: int) -> None:
        self.auth = auth
        self.max_keys = 8 * n_nodes + 64  # a node's entry and done mark, the schedule, slack
        self.data: dict[bytes, bytes] = {}
        self.size = 0
        self.lock = threading.Lock()
        self.other_keys = 0  # HELLOs of another run refused
        self.closed = threading.Event()
        self.clients: set[socket.socket] = set()
        self.slots = threading.BoundedSemaphore(n_nodes + MAX_CLIENTS)
        self.sock = socket.create_server(endpoint)  # SO_REUSEADDR, not SO_REUSEPORT: one owner
        self.sock.settimeout(ACCEPT_POLL_S)
        self.acceptor = threading.Thread(target=self._accept, name="rendezvous-store", daemon=True)
        self.acceptor.start()

    def close(self) -> None:
        """Stop serving: no new connection, open ones closed, the values dropped."""
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # stops listening; wakes the accepting thread
        self.acceptor.join(2 * ACCEPT_POLL_S)
        with self.lock:
            for conn in self.clients:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self.data.clear()

    def _accept(self) -> None:
        with self.sock:
            while not self.closed.is_set():
                try:
                    conn, addr = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return  # shut down
                if self.closed.is_set() or not self.slots.acquire(blocking=False):
                    conn.close()
                    continue
                threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()

    def _serve(self, conn: socket.socket, addr) -> None:
        with self.lock:
            self.clients.add(conn)
        try:
            conn.settimeout(HANDSHAKE_S)
            if self._authenticated(conn, addr):
                conn.settimeout(None)  # a registrant waits as long as its rendezvous does
                while not self.closed.is_set():
                    send_message(conn, self._answer(recv_message(conn, REQUEST_LIMIT)))
        except (OSError, ConnectionError, AuthError):
            pass  # a client that leaves, breaks the protocol or holds no key: closed
        finally:
            with self.lock:
                self.clients.discard(conn)
            conn.close()
            self.slots.release()

    def _authenticated(self, conn: socket.socket, addr) -> bool:
        hello = _recv_exact(conn, HELLO_BYTES)
        if hello.startswith(MAGIC) and hello[len(MAGIC) : len(MAGIC) + RUN_ID_BYTES] != self.auth.run_id:
            conn.sendall(KEYS_DIFFER)
            with self.lock:
                self.other_keys += 1
                first = self.other_keys == 1
            if first:
                log.warning(
                    "rendezvous: refused %s:%d, a host with another run key (the run keys differ)", *addr[:2]
                )
            return False
        key, nonce = self.auth.parse_hello(hello)
        if key != CLIENT_KEY:
            return False
        challenge, transcript = self.auth.challenge(SERVER_KEY, key, nonce)
        conn.sendall(challenge)
        self.auth.check_proof(_recv_exact(conn, PROOF_BYTES), transcript)
        return True

    def _answer(self, request: list[bytes]) -> list[bytes]:
        op, args = request[0] if request else b"", request[1:]
        if any(len(k) > MAX_KEY_BYTES for k in (args[1:] if op == b"check" else args[:1])):
            return [b"error", b"a key longer than %d bytes" % MAX_KEY_BYTES]
        with self.lock:
            if op == b"get" and len(args) == 1:
                return [self.data[args[0]]] if args[0] in self.data else []
            if op == b"check":
                return [b"1" if all(k in self.data for k in args) else b"0"]
            if op in (b"set", b"cas") and len(args) == 2:
                key, value = args
                if op == b"cas" and key in self.data:
                    return [self.data[key]]
                why = self._room_for(key, value)
                if why:
                    return [b"error", why.encode()]
                self.size += len(value) - len(self.data.get(key, b""))
                self.data[key] = value
                return [value] if op == b"cas" else [b"ok"]
        return [b"error", b"not a request"]

    def _room_for(self, key: bytes, value: bytes) -> str:
        if len(value) > MAX_VALUE_BYTES:
            return f"a value of {len(value)} bytes, more than {MAX_VALUE_BYTES}"
        if key not in self.data and len(self.data) >= self.max_keys:
            return f"the store holds its {self.max_keys} keys already"
        if self.size + len(value) - len(self.data.get(key, b"")) > MAX_STORE_BYTES:
            return f"the store holds {MAX_STORE_BYTES} bytes already"
        return ""


# -- the client ------------------------------------------------------------------------------------
class StoreClient:
    """One authenticated connection to a StoreServer; the calls TCPStore offers, as the
    rendezvous uses them. Raises KeysDiffer, StoreError, OSError."""

    def __init__(self, endpoint: tuple[str, int], auth: RunAuth, timeout_s: float) -> None:
        self.sock = socket.create_connection(endpoint, timeout=timeout_s)
        try:
            self._handshake(auth)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, auth: RunAuth) -> None:
        hello, nonce = auth.hello(CLIENT_KEY)
        self.sock.sendall(hello)
        head = _recv_exact(self.sock, len(KEYS_DIFFER))
        if head == KEYS_DIFFER:
            raise KeysDiffer("the run keys differ: the store there serves a run with another key")
        try:
            proof = auth.answer(
                head + _recv_exact(self.sock, CHALLENGE_BYTES - len(head)), CLIENT_KEY, SERVER_KEY, nonce
            )
        except AuthError as e:
            raise StoreError(f"not a SkipPipe rendezvous store ({e})") from None
        self.sock.sendall(proof)

    def close(self) -> None:
        self.sock.close()

    def _ask(self, *parts: bytes) -> list[bytes]:
        send_message(self.sock, list(parts))
        reply = recv_message(self.sock, REQUEST_LIMIT)
        if reply[:1] == [b"error"]:
            raise StoreError(f"the store refused it: {reply[1].decode(errors='replace')}")
        return reply

    def set(self, key: str, value: bytes) -> None:
        self._ask(b"set", key.encode(), bytes(value))

    def compare_set(self, key: str, expected: str, value: bytes) -> bytes:
        """Set `key` unless present (`expected` must be "": all the rendezvous asks); what it holds."""
        assert expected == ""
        return self._ask(b"cas", key.encode(), bytes(value))[0]

    def get(self, key: str) -> bytes:
        reply = self._ask(b"get", key.encode())
        if not reply:
            raise StoreError(f"no value for {key}")
        return reply[0]

    def check(self, keys: list[str]) -> bool:
        return self._ask(b"check", *(k.encode() for k in keys)) == [b"1"]
