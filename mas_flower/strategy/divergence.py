"""Divergence is named, never averaged in.

Two checks, both read-only (they change no number of a healthy run):

- `check_aggregate`: what a federation's Flower strategy (FedAvg, FedAdam, a DP wrapper, a user's
  own) returns from `aggregate_train` must be the network it was sent, still sane: an ArrayRecord,
  the same keys and shapes, a numeric dtype (a float parameter stays a float), every value finite
  and every BatchNorm running variance >= 0. Otherwise `DivergedError` stops the run before the
  round is checkpointed, naming the federation, the strategy class, the round and what is wrong.
- `explosion` / `watch_validation` / `diverged_networks`: a network whose total validation loss
  rises above `FACTOR` times its first validated value is named in a WARNING (once per network)
  and in results.json's `diverged`; a non-finite total validation loss stops the run with
  `DivergedError` (everything trained after it would be garbage, and a resume would replay it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.common.logger import log

#: A network has diverged when its total validation loss exceeds FACTOR x its first validated one.
FACTOR = 3.0
#: How many of an aggregate's problems an error message lists.
SHOWN = 3

#: What to lower when the numbers blew up; a resume is not among them (it replays the same rounds).
LOWER = ("lower lr (the clients' learning rate), server-lr (FedAdam/FedYogi/FedAdagrad's eta, FedAvgM's "
         "server learning rate) or server-momentum / beta-1 (a DP wrapper: its noise_multiplier)")
#: Why not to resume a run that diverged.
NEW_RUN = "start a new run: resuming this one would replay the same rounds into the same divergence"
#: What to fix when the strategy returned something else than the network it was sent.
FIX = ("a strategy's aggregate_train must return an ArrayRecord with every parameter it was sent, in the sent "
       "shapes (a wrapper: its inner strategy's arrays); fix the strategy's code")


class DivergedError(RuntimeError):
    """A network diverged or its strategy returned a broken network: the run stops, and the round in
    which it happened is not checkpointed (a resume would replay it)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an aggregate: `kind` is one of `none`, `keys`, `shape`, `dtype` (the
    strategy's code) or `non-finite`, `negative-variance` (the numbers blew up)."""

    kind: str
    text: str

    @property
    def numeric(self) -> bool:
        return self.kind in ("non-finite", "negative-variance")


def strategy_chain(strategy: Any) -> list[Any]:
    """The strategy and those it wraps: Flower's wrappers (the DP ones) keep theirs in `.strategy`."""
    chain = [strategy]
    while (inner := getattr(chain[-1], "strategy", None)) is not None and all(inner is not s for s in chain):
        chain.append(inner)
    return chain


def strategy_name(strategy: Any) -> str:
    """`FedAdam`, or for wrapped strategies `DifferentialPrivacyServerSideFixedClipping(FedAvg)`."""
    names = [type(s).__name__ for s in strategy_chain(strategy)]
    return "".join(f"{n}(" for n in names[:-1]) + names[-1] + ")" * (len(names) - 1)


def aggregate_problems(arrays: Any, sent: ArrayRecord) -> list[Problem]:
    """Everything wrong with `arrays` (an aggregate) against `sent` (what the clients were sent), [] if
    nothing: missing or unexpected keys, a shape or dtype other than sent (a float parameter must come
    back as a float; an integer buffer such as BatchNorm's counter may come back averaged, as a float),
    NaN or Inf values, negative values in a `running_var` (a BatchNorm variance)."""
    if not isinstance(arrays, ArrayRecord):
        return [Problem("none", f"aggregate_train returned {type(arrays).__name__} instead of an ArrayRecord")]
    if set(arrays) != set(sent):
        missing, extra = sorted(set(sent) - set(arrays)), sorted(set(arrays) - set(sent))
        return [Problem("keys", f"its keys differ from the sent network's (missing {missing[:SHOWN]}, "
                                f"unexpected {extra[:SHOWN]})")]
    problems = []
    for key in sent:
        problems += _array_problems(key, arrays[key].numpy(), sent[key].numpy())
    return problems


def _array_problems(key: str, value: np.ndarray, sent: np.ndarray) -> list[Problem]:
    if value.shape != sent.shape:
        return [Problem("shape", f"array {key!r} has shape {tuple(value.shape)}, sent {tuple(sent.shape)}")]
    if value.dtype.kind not in "biuf" or (sent.dtype.kind == "f" and value.dtype.kind != "f"):
        return [Problem("dtype", f"array {key!r} has dtype {value.dtype}, sent {sent.dtype}")]
    if value.dtype.kind == "f" and not (finite := np.isfinite(value)).all():
        nan = int(np.isnan(value).sum())
        return [Problem("non-finite", f"array {key!r} holds {nan} NaN and {value.size - int(finite.sum()) - nan} "
                                      f"Inf of {value.size} values")]
    if key.rsplit(".", 1)[-1] == "running_var" and (negative := int((value < 0).sum())):
        return [Problem("negative-variance", f"BatchNorm running variance {key!r} has {negative} negative "
                                             f"value(s) (min {float(value.min()):.4g})")]
    return []


def check_aggregate(arrays: Any, sent: ArrayRecord, *, federation: str, strategy: Any, server_round: int) -> None:
    """Raise DivergedError naming the federation, `strategy_name(strategy)`, the round and (up to
    `SHOWN` of) the problems when `aggregate_problems(arrays, sent)` finds any; nothing otherwise."""
    problems = aggregate_problems(arrays, sent)
    if not problems:
        return
    shown = "; ".join(p.text for p in problems[:SHOWN])
    more = f"; and {len(problems) - SHOWN} more array(s)" if len(problems) > SHOWN else ""
    what = "diverged" if all(p.numeric for p in problems) else "is broken"
    raise DivergedError(f"federation {federation!r}, round {server_round}: the network aggregated by its "
                        f"{strategy_name(strategy)} {what}: {shown}{more}. "
                        f"{f'{LOWER}, and {NEW_RUN}' if what == 'diverged' else FIX}. Round {server_round} is not "
                        "checkpointed")


# The validation loss ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explosion:
    """The first validated round whose total loss is non-finite or above FACTOR x `first_loss`."""

    round: int
    loss: float
    first_loss: float

    def as_dict(self) -> dict[str, float]:
        return {"round": self.round, "loss": self.loss, "first_loss": self.first_loss}


def explosion(series: Sequence[tuple[int, float]], factor: float = FACTOR) -> Explosion | None:
    """The first (round, total loss) of `series` (validated rounds in order) that is non-finite or
    strictly above `factor` times the first one's loss (exactly `factor` times is not); None if none."""
    if not series:
        return None
    first = series[0][1]
    for server_round, loss in series:
        if not math.isfinite(loss) or loss > factor * first:
            return Explosion(server_round, loss, first)
    return None


def validation_series(history: Iterable[Mapping[str, Any]], phase: str, federation: str) -> list[tuple[int, float]]:
    """(round, total validation loss) of `federation` in the stage `phase`, for every round that validated it.

    A network is a federation of one stage: a later stage may train a new network under the same name."""
    return [(int(h["round"]), float(sum(e["val_loss"].values()))) for h in history if h.get("phase") == phase
            for name, e in h.get("federations", {}).items() if name == federation and "val_loss" in e]


def diverged_networks(history: Sequence[Mapping[str, Any]], factor: float = FACTOR) -> dict[str, dict[str, Any]]:
    """results.json's `diverged`: federation -> {"round", "loss", "first_loss"} of its first `explosion`,
    for every network whose validation loss exploded ({} when none did). A name that diverged in an
    earlier stage too is keyed `<phase>/<federation>` the second time."""
    out: dict[str, dict[str, Any]] = {}
    networks = dict.fromkeys((h.get("phase"), name) for h in history for name in h.get("federations", {}))
    for phase, name in networks:
        if (hit := explosion(validation_series(history, str(phase), name), factor)) is not None:
            out[name if name not in out else f"{phase}/{name}"] = hit.as_dict()
    return out


def watch_validation(history: Sequence[Mapping[str, Any]], record: Mapping[str, Any], *, phase: str,
                     server_round: int, strategies: Mapping[str, Any]) -> None:
    """After a validated round (`record`, not yet in `history`): log a WARNING for every federation whose
    validation loss explodes in this round (once: only in the round of its first `explosion`), and raise
    DivergedError when a federation's total validation loss is non-finite."""
    rounds = [*history, {**record, "round": server_round, "phase": phase}]
    for name, entry in record.get("federations", {}).items():
        if "val_loss" not in entry:
            continue
        hit = explosion(validation_series(rounds, phase, name))
        if hit is None or hit.round != server_round:
            continue
        strategy = strategy_name(strategies[name]) if name in strategies else "strategy"
        if not math.isfinite(hit.loss):
            raise DivergedError(f"federation {name!r}, round {server_round}: the total validation loss of the network "
                                f"aggregated by its {strategy} is {hit.loss} (its first was {hit.first_loss:.4g}): "
                                f"it diverged. {LOWER}, and {NEW_RUN}. Round {server_round} is not checkpointed")
        log(WARNING, "federation %r diverged in round %d: total validation loss %.4g > %g x its first %.4g (%s); "
            "results.json names it under 'diverged'. Next time %s", name, server_round, hit.loss, FACTOR,
            hit.first_loss, strategy, LOWER)
