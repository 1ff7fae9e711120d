"""A building's verified index kept on disk, so that later processes of the same run skip re-listing it.

Opening a building lists every domain folder and stats every file for the cache fingerprint: about
1.6 s for a 4,000-view building with nine tasks on our CI machine. A deployed SuperNode runs each
message in a fresh process, so each train and evaluate message paid that. Here the result of one
full check (view keys and the names of the cached arrays) is saved beside the arrays under a
*token*. A later open that presents the same token takes it back instead, if every domain folder it
lists still has the modification time it had (so any file added, removed or renamed there forces a
full check again).

What the token buys and what it costs: a file rewritten in place keeps its folder's mtime, so within
one token such a change goes unseen, exactly as it would in a long-lived process that opened the
building once. The ClientApp uses the Flower run id as token and checks fully at the run's node
discovery (`client_app/node.py`), so every run still verifies every file once per node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mas_flower.data.layout import ViewKey
from mas_flower.files import write_text_atomic

#: Bump when the saved fields change meaning.
FORMAT = 1


def _path(directory: Path, tasks: str) -> Path:
    return directory / f"index-{tasks}.json"


def _folder_times(folders: list[Path]) -> dict[str, int]:
    return {str(f): os.stat(f).st_mtime_ns for f in folders}


def save_index(directory: Path, token: str, tasks: str, keys: list[ViewKey], names: dict[str, str],
               folders: list[Path]) -> None:
    """Record a fully checked index (view keys, array name per entry, the folders listed) under `token`."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "token": token, "tasks": tasks, "keys": [list(k) for k in keys],
              "names": names, "folders": _folder_times(folders)}
    write_text_atomic(_path(directory, tasks), json.dumps(record))


def load_index(directory: Path, token: str, tasks: str) -> tuple[list[ViewKey], dict[str, str]] | None:
    """(keys, names) saved under `token` for `tasks`, or None when absent, from another token, unreadable
    or stale (a listed folder is gone or has a new modification time)."""
    try:
        record = json.loads(_path(directory, tasks).read_text())
        if record.get("format") != FORMAT or record.get("token") != token or record.get("tasks") != tasks:
            return None
        if _folder_times([Path(f) for f in record["folders"]]) != record["folders"]:
            return None
        return [(int(p), int(v)) for p, v in record["keys"]], {str(k): str(v) for k, v in record["names"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
