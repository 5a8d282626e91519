"""Files written whole or not at all: through a temporary file beside the target and a rename,
so a killed process never leaves half a file for a reader (a cache, a result, a report)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SHARED_FILE_MODE = 0o644  # readable by every user of the checkout (caches, results, reports)


def write_atomic(path: Path, data: bytes, mode: int = SHARED_FILE_MODE) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
