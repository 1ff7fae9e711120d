"""The server's whole state after every round, written atomically, so a killed run can resume; and
what a resume may and may not change.

A checkpoint (`checkpoint.pt` in the run folder) is a pickled dict: `format` (`CHECKPOINT_FORMAT`),
`app_version` (the `mas_flower.__version__` that wrote it), `config` (the run's settings as a run
config), `method`, `ledger`, `outcomes`, `progress`, `rng` and `validation_sample` (the buildings that validate,
`NodeRoster.validators`; absent from checkpoints written before it was kept) (`MethodStrategy.checkpoint`).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from mas_flower.results import save_torch
from mas_flower.settings import Settings

CHECKPOINT_FILE = "checkpoint.pt"

#: The layout of the checkpoint this version writes. 1 (never written as a number): the payload of
#: before formats were recorded; 2: the same keys plus `format` and `app_version`; 3: the same keys, with
#: the ledger and progress pickled from their own modules (`strategy.ledger`, `strategy.method`).
CHECKPOINT_FORMAT = 3

#: The formats this version can resume from (a format-2 checkpoint names modules that are gone).
READABLE_FORMATS: tuple[int, ...] = (3,)

RESUME_MAY_CHANGE: dict[str, str] = {
    "reply-timeout": "how long a round waits for replies: the replies that come are the same",
    "node-timeout": "how long the server waits for nodes to connect: the nodes are the same once there",
    "round-retries": "how often a short round is retried: a run that finishes made the same retries; fewer "
                     "only stops a run sooner, more only lets it go on",
    "energy-country": "prices the energy of this session in gCO2eq; the kWh metered are the same",
    "energy-intensity": "prices the energy of this session in gCO2eq; the kWh metered are the same",
}
"""The only run-config keys that a resumed run takes from the run config instead of its checkpoint,
each with why it cannot change the run's results (losses, groups, histories, kWh): they only bound
waiting, give up sooner or later on failures, or price energy (each session's energy part keeps the
intensity it was priced at). Every other key decides what is computed (the method, data, sampling,
rounds, precision, `min-replies` and `lost-after` decide which replies and nodes count, `eval-every`
which rounds are validated, `validation-nodes` on which nodes) or where it is written (`output-dir`,
`run-name`: a resumed run stays in its folder), so a resume refuses a value of it that differs from the
checkpoint's.
"""


class CheckpointError(ValueError):
    """A checkpoint that this version cannot resume from, or settings a resume cannot honour."""


def save_checkpoint(run_dir: Path, payload: dict[str, Any]) -> None:
    """Write `payload` to `<run_dir>/checkpoint.pt` atomically, stamped with `format` and `app_version`."""
    from mas_flower import __version__

    save_torch(run_dir / CHECKPOINT_FILE, {"format": CHECKPOINT_FORMAT, "app_version": __version__, **payload})


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint of the killed run in `run_dir` (the `resume` run-config value).

    Raises ValueError when the folder or its checkpoint does not exist or the run finished, and
    CheckpointError (a ValueError) when the file cannot be unpickled here (e.g. a module was
    renamed since), or records no format or one this version does not read; the message names the
    version that wrote it, when known, and the formats this version reads.
    """
    path = run_dir / CHECKPOINT_FILE
    if not run_dir.is_dir():
        raise ValueError(f"resume={str(run_dir)!r}: no such run folder")
    if not path.is_file():
        raise ValueError(f"resume={str(run_dir)!r}: {path} does not exist (nothing to resume)")
    if (run_dir / "results.json").exists():
        raise ValueError(f"resume={str(run_dir)!r}: this run already finished (results.json exists)")
    try:
        # Our own file: it pickles the method's plan (dataclasses, tensors, numpy arrays).
        payload = torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure: name the writer, then the error
        raise CheckpointError(f"resume={str(run_dir)!r}: cannot read {CHECKPOINT_FILE} ({type(err).__name__}: "
                              f"{err}); {_writer(_header(path))}") from err
    header = payload if isinstance(payload, dict) else {}
    if header.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"resume={str(run_dir)!r}: cannot resume from {CHECKPOINT_FILE}; {_writer(header)}")
    return payload


def _writer(header: dict[str, Any]) -> str:
    """Which version wrote a checkpoint and which formats this version reads, in words."""
    from mas_flower import __version__

    readable = ", ".join(map(str, READABLE_FORMATS))
    mine = f"this version (mas-flower {__version__}) reads checkpoint format(s) {readable}"
    if "format" not in header:
        return (f"it records no format: a mas-flower from before checkpoint formats were recorded wrote it (or "
                f"it is no mas-flower checkpoint); {mine}. Resume it with the version that wrote it, or start "
                "the run again")
    version = header.get("app_version", "an unknown version")
    return (f"it was written by mas-flower {version} in checkpoint format {header['format']!r}; {mine}. "
            f"Resume it with mas-flower {version}, or start the run again")


class _Missing:
    """Stands in for a class the checkpoint names but this version lacks (the header is read anyway)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Missing,), {"__module__": module})


def _header(path: Path) -> dict[str, Any]:
    """`format` and `app_version` of a checkpoint that does not unpickle here ({} if even that fails)."""
    try:
        payload = torch.load(path, weights_only=False, pickle_module=SimpleNamespace(
            Unpickler=_HeaderUnpickler, load=pickle.load, __name__="pickle"))
    except Exception:  # noqa: BLE001 - a damaged file: nothing to say about its writer
        return {}
    return {k: payload[k] for k in ("format", "app_version") if k in payload} if isinstance(payload, dict) else {}


def given_keys(settings: Settings, explicit: Iterable[str] = ()) -> set[str]:
    """The run-config keys the user gave: `explicit` ones (e.g. Flower's `override_config`, the keys of
    `flwr run --run-config`), and any whose value differs from the app default (`resume` excluded).

    A key whose value equals the default and is not in `explicit` counts as not given: the run
    config a ServerApp sees is the defaults merged with the user's values, so it cannot tell them apart.
    """
    from mas_flower.defaults import RUN_CONFIG_DEFAULTS

    defaults = Settings.from_run_config(RUN_CONFIG_DEFAULTS).to_run_config()
    mine = settings.to_run_config()
    return ({k for k in explicit if k in mine} | {k for k, v in mine.items() if v != defaults[k]}) - {"resume"}


def resume_settings(given: Settings, checkpoint: dict[str, Any], explicit: Iterable[str] = ()
                    ) -> tuple[Settings, dict[str, tuple[Any, Any]]]:
    """The settings a resumed run continues with: the checkpoint's, with the given keys of `RESUME_MAY_CHANGE`.

    `given` are the run's settings (with `resume` set), `explicit` the keys known to be given (see
    `given_keys`). Returns the settings and the keys applied, key -> (given value, checkpoint's value).
    Raises CheckpointError naming each given key whose value differs from the checkpoint's and that a
    resume may not change, as `key=given (checkpoint: value)`; or when the checkpoint's settings are
    not valid settings of this version.
    """
    try:
        original = Settings.from_run_config({**checkpoint["config"], "resume": given.resume})
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"resume={given.resume!r}: the checkpoint's settings are not valid here ({err}); "
                              f"{_writer(checkpoint)}") from err
    mine, theirs = given.to_run_config(), original.to_run_config()
    differ = sorted(k for k in given_keys(given, explicit) if mine[k] != theirs[k])
    refused = [k for k in differ if k not in RESUME_MAY_CHANGE]
    if refused:
        listed = ", ".join(f"{k}={mine[k]!r} (checkpoint: {theirs[k]!r})" for k in refused)
        raise CheckpointError(
            f"resume={given.resume!r}: a resumed run continues with the settings it started with, but "
            f"{'this given key differs' if len(refused) == 1 else 'these given keys differ'} from its checkpoint's: "
            f"{listed}. Leave {'it' if len(refused) == 1 else 'them'} out to resume, or start a new run without "
            f"resume. A resume may change only {', '.join(RESUME_MAY_CHANGE)}.")
    applied = {k: (mine[k], theirs[k]) for k in differ}
    return Settings.from_run_config({**theirs, **{k: mine[k] for k in applied}}), applied
