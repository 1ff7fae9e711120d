"""Membership that follows Flower's view of the nodes, and the coverage a result may claim.

Flower gives every node a random id, lists the connected ones (`grid.get_node_ids()`) and answers
messages to a dead node with an error ("Node Unavailable") or not at all. A node that restarts comes
back with a new id. So, before every training exchange of a round (`refresh`):

* ids Flower no longer lists are dropped and never sampled again;
* ids that Flower answers "Node Unavailable" for (no heartbeat) are dropped at once;
* new ids are asked for their building (the same info query as at discovery); a new id claiming the
  building of a node that is gone or failing replaces it (a restart: the old id is never used again);
  claiming the building of a healthy node, it waits on standby (logged with both ids), not sampled;
* a building whose node failed, or that had no node, in `lost-after` training exchanges in a row is
  *lost*: not sampled, recorded with the round in `Ledger.lost`. A node claiming it later rejoins.

At discovery, two nodes claiming one building are refused (`duplicate_claims`). After the test,
`check_test_coverage` enforces `test-coverage`: `all` buildings that hold test data (default) or `any`.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from mas_flower import protocol as P
from mas_flower.constant import LabelHistogram
from mas_flower.energy import host_id
from mas_flower.heartbeat import heartbeat
from mas_flower.strategy.exchange import exchange

if TYPE_CHECKING:
    from mas_flower.strategy.run import NodeRoster


class CoverageError(RuntimeError):
    """The final test did not cover the buildings that `test-coverage` requires: the run fails."""


def query_info(roster: NodeRoster, grid: Grid, ids: Iterable[int], timeout: float | None, *,
               labels: bool = False) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """Ask nodes `ids` for their building, host and split sizes (and, with `labels`, the histogram of
    their training labels: `mas_flower.constant.LabelHistogram`).

    Returns (node id -> {"building", "remote", "sizes": split -> examples, "labels": histogram or None},
    node id -> why it could not answer: its error, or no reply within `timeout` seconds).
    """
    query = RecordDict({P.CONFIG: ConfigRecord({**roster.data_config(), P.LABEL_HISTOGRAM: labels})})
    tagged = [(nid, Message(content=query, dst_node_id=nid, message_type=f"{MessageType.QUERY}.{P.INFO_QUERY}"))
              for nid in ids]
    with heartbeat(lambda t: log(INFO, "waiting for %d node(s) to answer (%.0f s): a node's first message starts "
                                       "its process and loads PyTorch and its building's index", len(tagged), t)):
        replies = exchange(grid, tagged, timeout=timeout)
    infos: dict[int, dict[str, Any]] = {}
    errors = {nid: "no reply in time" for nid, _ in tagged if nid not in replies}
    here = host_id()
    for nid, reply in replies.items():
        if reply.has_error():
            errors[nid] = str(reply.error.reason)
            continue
        info = reply.content[P.CONFIG]
        infos[nid] = {"building": str(info[P.BUILDING]), "remote": str(info.get(P.HOST, here)) != here,
                      "sizes": {k[len("size-"):]: int(v) for k, v in info.items() if k.startswith("size-")},
                      "labels": LabelHistogram.from_record(info) if labels else None}
    return infos, errors


def unavailable(reply: Message | None) -> bool:
    """Whether Flower answered for the node that it is unavailable (no heartbeat: gone or stopped)."""
    return reply is not None and reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE


def duplicate_claims(claims: dict[int, str]) -> list[str]:
    """'building b: nodes 1, 2' for every building that more than one node id claims."""
    holders: dict[str, list[int]] = {}
    for nid, building in sorted(claims.items()):
        holders.setdefault(building, []).append(nid)
    return [f"building {b!r}: nodes {', '.join(map(str, ids))}" for b, ids in sorted(holders.items()) if len(ids) > 1]


def admit(roster: NodeRoster, infos: dict[int, dict[str, Any]]) -> None:
    """Take nodes into the roster (their building, whether remote, which buildings hold test data)."""
    for nid, info in infos.items():
        roster.nodes[nid] = info["building"]
        (roster.remote.add if info["remote"] else roster.remote.discard)(nid)
        if info["sizes"].get("test", 0) > 0:
            roster.test_buildings.add(info["building"])
        roster.failures.setdefault(info["building"], 0)


def drop(roster: NodeRoster, nid: int, why: str) -> None:
    building = roster.nodes.pop(nid)
    roster.remote.discard(nid)
    log(WARNING, "node %d (%s) %s: no longer sampled", nid, building, why)


def refresh(roster: NodeRoster, grid: Grid, server_round: int, *, count: bool = True) -> None:
    """Follow Flower's node list before a training exchange: drop unlisted ids, admit new ones
    (replacing a gone or failing node of the same building), mark buildings lost (`roster.lost`).
    `count=False` (before an evaluation): no failure is counted for buildings without a node."""
    listed = set(grid.get_node_ids())
    for nid in [n for n in roster.nodes if n not in listed]:
        drop(roster, nid, "is no longer connected (Flower does not list it)")
    roster.standby = {n: info for n, info in roster.standby.items() if n in listed}
    new = sorted(listed - set(roster.nodes) - set(roster.standby) - roster.gone)
    if new:
        infos, errors = query_info(roster, grid, new, roster.settings.node_timeout)
        for nid, reason in errors.items():
            log(WARNING, "new node %d could not tell its building: %s", nid, reason)
            roster.gone.add(nid)
        for nid, info in sorted(infos.items()):
            log(INFO, "new node %d claims building %r", nid, info["building"])
        roster.standby.update(infos)
    holder = {b: n for n, b in roster.nodes.items()}
    for nid, info in sorted(roster.standby.items()):
        building = info["building"]
        old = holder.get(building)
        if old is not None and roster.failures.get(building, 0) == 0:
            if nid in new:
                log(WARNING, "node %d claims building %r, which node %d holds and serves well: not sampled "
                    "unless node %d fails", nid, building, old, old)
            continue
        if old is not None:
            drop(roster, old, f"is replaced by node {nid} (a restart: the same building, a new id)")
            roster.gone.add(old)
        if roster.lost.pop(building, None) is not None:
            log(INFO, "building %r rejoins with node %d", building, nid)
        log(INFO, "node %d joins with building %r", nid, building)
        del roster.standby[nid]
        admit(roster, {nid: info})
        roster.failures[building] = 0
        holder[building] = nid
    if not count:
        return
    served = set(roster.nodes.values())
    for building in roster.failures:
        if building not in served and building not in roster.lost:
            roster.failures[building] += 1  # a building without a node fails every round it has none
    mark_lost(roster, server_round)


def record_exchange(roster: NodeRoster, sampled: Iterable[int], failed: set[int], unavailable: set[int],
                    server_round: int) -> None:
    """After a training exchange: a sampled node that failed counts one more failure in a row for its
    building; one that succeeded resets it. Ids Flower answered "Node Unavailable" for are dropped
    for good (a restarted node comes back with a new id)."""
    for nid in sampled:
        building = roster.nodes.get(nid)
        if building is not None:
            roster.failures[building] = roster.failures.get(building, 0) + 1 if nid in failed else 0
    forget(roster, unavailable)
    mark_lost(roster, server_round)


def forget(roster: NodeRoster, unavailable: set[int]) -> None:
    """Drop ids that Flower reported unavailable; they are never sampled or admitted again."""
    for nid in sorted(unavailable & set(roster.nodes)):
        drop(roster, nid, "is unavailable (Flower: no heartbeat)")
    roster.gone |= unavailable


def mark_lost(roster: NodeRoster, server_round: int) -> None:
    """Buildings that failed `lost-after` exchanges in a row are lost: their node is not sampled again."""
    n = roster.settings.lost_after
    for building, count in roster.failures.items():
        if count >= n and building not in roster.lost:
            roster.lost[building] = {"round": server_round, "failed_in_a_row": count}
            for nid in [i for i, b in roster.nodes.items() if b == building]:
                drop(roster, nid, f"failed {count} rounds in a row (lost-after={n}): building lost")
                roster.gone.add(nid)
            log(WARNING, "building %r is lost in round %d", building, server_round)


def check_test_coverage(roster: NodeRoster, covered: dict[str, list[str]], reasons: dict[str, str] | None = None
                        ) -> dict[str, Any]:
    """The final test's coverage: {"test_buildings": federation -> buildings it covered,
    "test_missing": buildings holding test data that some federation missed, "lost_buildings"}.

    `reasons`: building -> why its test reply was left out, for the error message.
    Raises CoverageError naming the missing buildings when `test-coverage=all` and any building that
    holds test data is missing from some federation's test (`any`: when a federation covered none).
    """
    required = sorted(roster.test_buildings)
    missing = sorted({b for done in covered.values() for b in required if b not in done})
    summary = {"test_buildings": covered, "test_missing": missing, "test_coverage": roster.settings.test_coverage,
               "lost_buildings": dict(roster.lost)}
    empty = [name for name, done in covered.items() if not done]
    if (roster.settings.test_coverage == "all" and missing) or empty:
        reasons = reasons or {}
        why = "; ".join(f"{b} (lost in round {roster.lost[b]['round']})" if b in roster.lost
                        else f"{b} ({reasons[b][:200]})" if b in reasons else f"{b} (no node holds it now)"
                        for b in missing)
        raise CoverageError(f"the test covered {len(required) - len(missing)} of the {len(required)} buildings "
                            f"holding test data: missing {why or ', '.join(empty)}. No result is written: a partial "
                            "test is not the federation's test (test-coverage=any accepts one)")
    if missing:
        log(WARNING, "the test misses buildings %s (test-coverage=any): results.json names them", ", ".join(missing))
    return summary
