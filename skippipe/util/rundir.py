"""Run directories: every command that writes results makes one fresh directory under a runs/
root, named `<YYYYmmdd-HHMMSS>-<name>-<pid>` (a `-n` suffix when the name is taken)."""
from __future__ import annotations

import os
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
