"""Files that readers never see half-written, even with several writers (Ray workers, fresh ClientApp
processes, the ServerApp)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (atomic on POSIX).

    The temporary name is unique per process and call, so concurrent writers never write into one
    file; the last rename wins. A kill mid-write leaves the old file (and at most a stray temporary).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
