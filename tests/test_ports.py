"""util/ports.py: free ports, free ranges, and the pre-flight check of a node table."""

from __future__ import annotations

import os
import socket
import time

import pytest

from skippipe.errors import SkipPipeError
from skippipe.util.ports import LOOPBACK, check_ports, free_port, free_port_range, port_free
from skippipe.util.procs import wait_until

TIME_WAIT = "06"  # TCP state code in /proc/net/tcp


def _in_time_wait(port: int) -> bool:
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(int(r[1].split(":")[1], 16) == port and r[3] == TIME_WAIT for r in rows)


def _leave_in_time_wait(port: int) -> None:
    """One connection to `port` that the listening side closes first, so its end of the
    connection (local port `port`) sits in TIME_WAIT after everything is closed."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen()
        client = socket.create_connection((LOOPBACK, port))
        served, _ = listener.accept()
        served.close()  # the active close: this end goes to TIME_WAIT
        client.recv(1)  # the FIN arrived
        client.close()


def test_a_port_left_in_time_wait_passes_the_check():
    port = free_port()
    _leave_in_time_wait(port)
    assert wait_until(lambda: _in_time_wait(port), timeout_s=5, poll_s=0.01)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind((LOOPBACK, port))  # what a check without SO_REUSEADDR would have tripped on
    assert port_free(LOOPBACK, port)
    check_ports({0: (LOOPBACK, port)}, [0])


def test_a_listening_port_is_busy():
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free(LOOPBACK, port)
        with pytest.raises(SkipPipeError, match=f"port {LOOPBACK}:{port} for node 2 is not free"):
            check_ports({1: (LOOPBACK, free_port()), 2: (LOOPBACK, port)}, [1, 2])


def test_a_udp_bound_port_is_busy():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        assert not port_free(LOOPBACK, s.getsockname()[1])


def test_free_range_is_free_and_differs_between_calls():
    base = free_port_range(6, seed=1)
    assert all(port_free(LOOPBACK, base + i) for i in range(6))
    bases = {free_port_range(6, seed=1) for _ in range(5)}
    assert len(bases) > 1  # the clock is mixed in: concurrent callers spread out
    started = time.monotonic()
    free_port_range(20)
    assert time.monotonic() - started < 5


def test_reserved_ports_refuse_a_second_run_and_are_free_again_after(tmp_path):
    from skippipe.util.ports import reserve_ports

    peers = {0: (LOOPBACK, free_port()), 1: (LOOPBACK, free_port())}
    with reserve_ports(peers, [0, 1]):
        with pytest.raises(
            SkipPipeError,
            match=f"port {LOOPBACK}:{peers[1][1]} for node 1 is held by "
            f"another run \\(launcher pid {os.getpid()}\\)",
        ):
            with reserve_ports({1: peers[1]}, [1]):
                pass
    with reserve_ports(peers, [0, 1]):  # released on leaving
        pass


def test_a_host_that_is_not_this_machine_is_one_clear_error():
    from skippipe.util.ports import check_host

    with pytest.raises(SkipPipeError, match="does not resolve"):
        check_host("no-such-host.invalid")
    with pytest.raises(SkipPipeError, match="not an address of this machine"):
        check_host("192.0.2.1")


def _own_lock_dir(tmp_path, monkeypatch):
    """reserve_ports with its lock directory in `tmp_path` (not the user's real one)."""
    from skippipe.util import portlock

    path = tmp_path / "locks"
    monkeypatch.setattr(portlock, "LOCK_DIR", path)
    return path


def test_lock_files_are_private_and_removed_at_the_end(tmp_path, monkeypatch):
    from skippipe.util.ports import reserve_ports

    locks = _own_lock_dir(tmp_path, monkeypatch)
    peers = {0: (LOOPBACK, free_port()), 1: (LOOPBACK, free_port())}
    with reserve_ports(peers, [0, 1]):
        assert os.stat(locks).st_mode & 0o777 == 0o700
        assert sorted(p.name for p in locks.iterdir()) == sorted(f"{h}-{p}.lock" for h, p in peers.values())
        assert all(p.stat().st_mode & 0o077 == 0 for p in locks.iterdir())
    assert list(locks.iterdir()) == []


def test_a_link_planted_in_the_lock_directory_is_not_followed(tmp_path, monkeypatch):
    from skippipe.util.ports import reserve_ports

    locks = _own_lock_dir(tmp_path, monkeypatch)
    locks.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    port = free_port()
    (locks / f"{LOOPBACK}-{port}.lock").symlink_to(victim)
    with pytest.raises(SkipPipeError, match="a symbolic link: not followed"):
        with reserve_ports({0: (LOOPBACK, port)}, [0]):
            pass
    assert victim.read_text() == "precious"


def test_a_lock_directory_others_may_use_is_refused(tmp_path, monkeypatch):
    from skippipe.util import portlock
    from skippipe.util.ports import reserve_ports

    locks = _own_lock_dir(tmp_path, monkeypatch)
    peers = {0: (LOOPBACK, free_port())}
    locks.mkdir()
    os.chmod(locks, 0o777)
    with pytest.raises(SkipPipeError, match="has mode 0777, others may use it"):
        with reserve_ports(peers, [0]):
            pass
    os.chmod(locks, 0o700)
    monkeypatch.setattr(portlock.os, "getuid", lambda: os.stat(locks).st_uid + 1)
    with pytest.raises(SkipPipeError, match="belongs to uid .*, not to you"):
        with reserve_ports(peers, [0]):
            pass
    monkeypatch.undo()
    locks.rmdir()
    locks.symlink_to(tmp_path)
    monkeypatch.setattr(portlock, "LOCK_DIR", locks)
    with pytest.raises(SkipPipeError, match="is not a directory"):
        with reserve_ports(peers, [0]):
            pass


def test_free_ports_pass_over_a_port_another_run_chose_and_has_not_bound(tmp_path, monkeypatch):
    """Two launchers meeting at a rendezvous each choose free ports (--base-port 0): a port
    another run has chosen and locked but not bound yet probes as free, and taking it failed the
    second launcher before it registered. It is passed over now, and nothing is left locked."""
    from skippipe.util import portlock, ports

    locks = _own_lock_dir(tmp_path, monkeypatch)
    taken, other = free_port(), free_port()
    picks = iter([taken, other])
    monkeypatch.setattr(ports, "free_port", lambda host: next(picks))
    with ports.reserve_ports({9: (LOOPBACK, taken)}, [9]):  # the other run: locked, not bound
        with pytest.raises(portlock.PortHeld):  # what the launcher used to do: pick, then lock
            with ports.reserve_ports({1: (LOOPBACK, taken)}, [1]):
                pass
        with ports.reserve_free_ports(LOOPBACK, [1]) as peers:
            assert peers == {1: (LOOPBACK, other)}
            assert (locks / f"{LOOPBACK}-{other}.lock").exists()
    assert list(locks.iterdir()) == []
