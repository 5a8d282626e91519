"""Loopback transports and hand-made peers for the transport and attack tests."""

import asyncio

from skippipe.runtime.net.auth import CHALLENGE_BYTES, RunAuth
from skippipe.runtime.net.connection import LENGTH_BYTES
from skippipe.runtime.net.deccom_adapter import node_key
from skippipe.runtime.net.transport import Transport

AUTH = RunAuth(bytes(range(32)))  # the test run's key


def node(*args, **kwargs) -> Transport:
    """A Transport of the test run (key AUTH)."""
    return Transport(*args, auth=kwargs.pop("auth", AUTH), **kwargs)


def framed(data: bytes) -> bytes:
    return len(data).to_bytes(LENGTH_BYTES, "big") + data


async def raw_connect(t: Transport, as_node: int, auth: RunAuth = AUTH):
    """A bare TCP connection to `t` that authenticates as `as_node` with `auth`'s key (the
    connector's side of the handshake, by hand); then anything may be written on it."""
    reader, writer = await asyncio.open_connection(*t.address)
    hello, nonce = auth.hello(node_key(as_node))
    writer.write(hello)
    challenge = await reader.readexactly(CHALLENGE_BYTES)
    writer.write(auth.answer(challenge, node_key(as_node), node_key(t.node_id), nonce))
    return reader, writer
