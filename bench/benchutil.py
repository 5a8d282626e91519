"""Small helpers shared by the bench scripts."""
from __future__ import annotations

import socket


def free_base_port(n: int, start: int) -> int:
    """The first base port from `start` on with n consecutive free TCP ports on 127.0.0.1."""
    base = start
    while True:
        try:
            for i in range(n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            base += n
