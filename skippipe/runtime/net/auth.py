"""Run identity and peer authentication: a per-run secret key and the challenge–response that
every connection between nodes starts with.

The launcher creates a random 32-byte key per run (`RunAuth.generate`), stored in the run's
config; hosts of a multi-host run share one key through `--run-key-file PATH` or the
environment variable SKIPPIPE_RUN_KEY (64 hex digits). The run id is derived from the key, so
two runs on the same ports never merge: a connection from another run is refused before any
frame is read.

Handshake (connector C, acceptor A; node keys are DecCom's 32-byte keys of the node ids)::

    C -> A  HELLO      magic | run id | key(C) | nonce(C)
    A -> C  CHALLENGE  magic | run id | key(A) | nonce(A) | HMAC(k, "A" | transcript)
    C -> A  PROOF      HMAC(k, "C" | transcript)
    transcript = run id | key(C) | key(A) | nonce(C) | nonce(A)

Both sides prove they hold the key, each over fresh nonces from `secrets` (no replay), with the
role in the MAC (a reflected challenge is not a proof). A then knows the connection comes from
node C of this run: every frame on it must name C as its sender. Without the key an attacker
gets a challenge it cannot answer, and is closed at the handshake deadline.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass

from ...errors import SkipPipeError

KEY_BYTES = 32
NONCE_BYTES = 32
MAC_BYTES = 32  # HMAC-SHA256
RUN_ID_BYTES = 16
NODE_KEY_BYTES = 32  # DecCom node key: SHA-256 of the node id
MAGIC = b"SPa1"  # SkipPipe authenticated stream, version 1
KEY_ENV = "SKIPPIPE_RUN_KEY"
PUBLIC_KEY = hashlib.sha256(b"skippipe public key: no authentication").digest()

HELLO_BYTES = len(MAGIC) + RUN_ID_BYTES + NODE_KEY_BYTES + NONCE_BYTES
CHALLENGE_BYTES = len(MAGIC) + RUN_ID_BYTES + NODE_KEY_BYTES + NONCE_BYTES + MAC_BYTES
PROOF_BYTES = MAC_BYTES


class AuthError(SkipPipeError):
    """A handshake that failed, or a run key that cannot be used."""


@dataclass(frozen=True)
class RunAuth:
    """The secret of one run; `run_id` (derived) names the run on the wire and in logs."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise AuthError(f"a run key has {KEY_BYTES} bytes, got {len(self.key)}")

    @classmethod
    def generate(cls) -> RunAuth:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def public(cls) -> RunAuth:
        """A well-known key: the same handshake and sender binding, but no secret. Only the
        `measure` command uses it (when no key is given), so probes need no key distribution."""
        return cls(PUBLIC_KEY)

    @classmethod
    def from_hex(cls, text: str, where: str) -> RunAuth:
        try:
            return cls(bytes.fromhex(text.strip()))
        except (ValueError, AuthError):
            raise AuthError(f"{where}: a run key is {2 * KEY_BYTES} hex digits") from None

    @classmethod
    def load(cls, key_file: str | None = None, fresh: bool = True) -> RunAuth | None:
        """The key of `key_file`, else of $SKIPPIPE_RUN_KEY, else a new one (`fresh`) or None."""
        if key_file:
            try:
                with open(key_file, encoding="ascii") as f:
                    mode = os.fstat(f.fileno()).st_mode
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise AuthError(f"--run-key-file {key_file}: cannot read it ({e})") from None
            if mode & 0o077:  # as ssh does with a private key: others may have it already
                raise AuthError(
                    f"--run-key-file {key_file}: others may read or change it (mode "
                    f"{stat.S_IMODE(mode):04o}); make it private: chmod 600 {key_file}"
                )
            return cls.from_hex(text, f"--run-key-file {key_file}")
        if os.environ.get(KEY_ENV):
            return cls.from_hex(os.environ[KEY_ENV], KEY_ENV)
        return cls.generate() if fresh else None

    @property
    def run_id(self) -> bytes:
        return hashlib.sha256(b"skippipe run id" + self.key).digest()[:RUN_ID_BYTES]

    def mac(self, role: bytes, transcript: bytes) -> bytes:
        return hmac.new(self.key, role + transcript, hashlib.sha256).digest()

    # -- the three handshake messages ----------------------------------------------------------
    def hello(self, my_key: bytes) -> tuple[bytes, bytes]:
        """(HELLO, its nonce)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + self.run_id + my_key + nonce, nonce

    def parse_hello(self, data: bytes) -> tuple[bytes, bytes]:
        """(connector's node key, its nonce); AuthError for another protocol or run."""
        self._check_head(data)
        at = len(MAGIC) + RUN_ID_BYTES
        return data[at : at + NODE_KEY_BYTES], data[at + NODE_KEY_BYTES :]

    def challenge(self, my_key: bytes, their_key: bytes, their_nonce: bytes) -> tuple[bytes, bytes]:
        """(CHALLENGE, the transcript both MACs cover)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        transcript = self.run_id + their_key + my_key + their_nonce + nonce
        return MAGIC + self.run_id + my_key + nonce + self.mac(b"A", transcript), transcript

    def answer(self, data: bytes, my_key: bytes, expected_key: bytes, my_nonce: bytes) -> bytes:
        """The PROOF for a CHALLENGE from the node we meant to reach; AuthError otherwise."""
        self._check_head(data)
        at = len(MAGIC) + RUN_ID_BYTES
        their_key = data[at : at + NODE_KEY_BYTES]
        nonce = data[at + NODE_KEY_BYTES : at + NODE_KEY_BYTES + NONCE_BYTES]
        if their_key != expected_key:
            raise AuthError("the peer answered as another node")
        transcript = self.run_id + my_key + their_key + my_nonce + nonce
        if not hmac.compare_digest(data[-MAC_BYTES:], self.mac(b"A", transcript)):
            raise AuthError("the peer does not hold this run's key")
        return self.mac(b"C", transcript)

    def check_proof(self, proof: bytes, transcript: bytes) -> None:
        if not hmac.compare_digest(proof, self.mac(b"C", transcript)):
            raise AuthError("the peer does not hold this run's key")

    def _check_head(self, data: bytes) -> None:
        if data[: len(MAGIC)] != MAGIC:
            raise AuthError("not a SkipPipe connection (wrong magic)")
        theirs = data[len(MAGIC) : len(MAGIC) + RUN_ID_BYTES]
        if theirs != self.run_id:
            raise AuthError(
                f"from another run (run id {theirs.hex()}, ours {self.run_id.hex()}: the run keys differ)"
            )
