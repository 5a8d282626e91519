"""Per-port lock files: a launcher holds one per port of its nodes from its check until its
nodes are gone, so a second run on the same ports stops with one line instead of merging into
the first training. The kernel drops a lock when its holder dies, however it dies.

The files live in a directory of the user's own (`skippipe-ports-UID` in the temporary
directory), mode 0700: another user can neither take a user's ports away ("permission
denied") nor plant a file or link there. A directory that is not the user's own, or that
others may write, is refused, not repaired (someone else made it). Lock files are opened with
O_NOFOLLOW, so a link planted anyway is never followed, and removed when the run ends."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SkipPipeError

LOCK_DIR = Path(tempfile.gettempdir()) / f"skippipe-ports-{os.getuid()}"
OPEN_TRIES = 20  # a lock file removed by its last holder between our open and our lock: retry


class PortHeld(SkipPipeError):
    """Another run holds the port's lock (it chose the port and has not bound it yet, or runs on it)."""


def lock_dir(path: Path | None = None) -> Path:
    """The user's lock directory, made when missing; one clear error when it is not safe."""
    path = path or LOCK_DIR
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SkipPipeError(f"cannot make the port-lock directory {path} ({e.strerror})") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SkipPipeError(f"port-lock directory {path} is not a directory (a link or a file); remove it")
    if st.st_uid != os.getuid():
        raise SkipPipeError(
            f"port-lock directory {path} belongs to uid {st.st_uid}, not to you "
            f"(uid {os.getuid()}); remove it or set TMPDIR"
        )
    if st.st_mode & 0o077:
        raise SkipPipeError(
            f"port-lock directory {path} has mode {stat.S_IMODE(st.st_mode):04o}, "
            f"others may use it; make it 0700 (chmod 700 {path})"
        )
    return path


@contextlib.contextmanager
def port_lock(directory: Path, host: str, port: int, node: int) -> Iterator[None]:
    """Hold host:port's lock file for the context; it is removed on leaving."""
    path = directory / f"{host}-{port}.lock"
    fd = _locked(path, host, port, node)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still locked: a waiter that opened this file sees it is gone
        os.close(fd)  # closing drops the lock


def _locked(path: Path, host: str, port: int, node: int) -> int:
    """An open descriptor of `path` that holds its lock; the file is the one at `path` now
    (its previous holder may have removed it after we opened it)."""
    for _ in range(OPEN_TRIES):
        fd = _open(path, host, port)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PortHeld(
                f"port {host}:{port} for node {node} is held by another run "
                f"(launcher pid {owner}); wait for it or choose another "
                f"--base-port"
            ) from None
        try:
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise SkipPipeError(f"cannot lock port {host}:{port} ({path} keeps changing)")


def _open(path: Path, host: str, port: int) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        why = "a symbolic link: not followed" if e.errno == errno.ELOOP else e.strerror
        raise SkipPipeError(f"cannot lock port {host}:{port} ({path}: {why})") from None
