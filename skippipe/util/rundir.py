"""Run directories: every command that writes results makes one fresh directory under a runs/
root, named `<YYYYmmdd-HHMMSS>-<name>-<pid>` (a `-n` suffix when the name is taken)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import SkipPipeError

RUNS_DIR = Path(__file__).resolve().parents[2] / "runs"  # default root: runs/ in the repository
NAME_ATTEMPTS = 100  # suffixes tried when a name is taken (the same name twice in one second)


def new_run_dir(name: str, root: str | Path = RUNS_DIR) -> Path:
    """A fresh, created `root/<stamp>-<name>-<pid>[-n]` directory (parents made as needed).

    The pid keeps processes that start in the same second apart; the suffix keeps one
    process's runs apart."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{os.getpid()}"
    for n in range(NAME_ATTEMPTS):
        path = Path(root) / (stem + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise SkipPipeError(f"cannot create run directory {path}: {e.strerror}") from None
    raise SkipPipeError(f"cannot create a fresh run directory for {name} under {root}")


def shown(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it (shorter to print)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def writable_output(path: str | Path, option: str) -> Path:
    """`path` for a file a command will write, checked before any work (nothing is created):
    not a directory, and its directory exists writable or can be made."""
    path = Path(path)
    if path.is_dir():
        raise SkipPipeError(f"{option} {path}: is a directory")
    can_create(path.parent, f"{option} {path}")
    return path


def can_create(directory: str | Path, label: str) -> None:
    """One clear error unless `directory` exists writable or can be made in its nearest
    existing ancestor (checked with a probe file there: root passes os.access everywhere)."""
    here = Path(directory).absolute()
    while not here.exists():
        here = here.parent
    try:
        if not here.is_dir():
            raise NotADirectoryError(20, "not a directory")
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as e:
        raise SkipPipeError(f"{label}: cannot write in {here} ({e.strerror})") from None


def keep_in(directory: str | Path, path: str | Path) -> str:
    """Copy `path` into `directory` (made if missing) and return the name to record: relative,
    so that the directory stays usable when it is moved. A path that names no file is recorded
    as it is (nothing to keep)."""
    if not Path(path).is_file():
        return str(path)
    Path(directory).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, Path(directory) / Path(path).name)
    return Path(path).name


def resolve_in(directory: str | Path, recorded: str | Path) -> Path:
    """A path recorded in `directory`'s files: relative ones are relative to it."""
    return Path(directory) / recorded if not Path(recorded).is_absolute() else Path(recorded)
