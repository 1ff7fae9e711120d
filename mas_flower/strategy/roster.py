"""The run's nodes: who they are, which are sampled, which validate, and membership that follows
Flower's view of them; the coverage a result may claim. Checkpointed after every round.

Waiting (`wait_for_nodes`). In simulation Flower registers all `num-supernodes` nodes at once, just after
the ServerApp starts, so the node count is known as soon as it stops growing: too few nodes fail at once.
In deployment SuperNodes connect when they come up, so the wait lasts up to `node-timeout`, logged every
`LOG_EVERY` seconds (not every poll).

Membership. Flower gives every node a random id, lists the connected ones (`grid.get_node_ids()`) and
answers messages to a dead node with an error ("Node Unavailable") or not at all. A node that restarts
comes back with a new id. So, before every training exchange of a round (`NodeRoster.refresh`):

* ids Flower no longer lists are dropped and never sampled again;
* ids that Flower answers "Node Unavailable" for (no heartbeat) are dropped at once;
* new ids are asked for their building (the same info query as at discovery); a new id claiming the
  building of a node that is gone or failing replaces it (a restart: the old id is never used again);
  claiming the building of a healthy node, it waits on standby (logged with both ids), not sampled;
* a building whose node failed, or that had no node, in `lost-after` training exchanges in a row is
  *lost*: not sampled, recorded with the round in `NodeRoster.lost`. A node claiming it later rejoins.

At discovery, two nodes claiming one building are refused (`duplicate_claims`). After the test,
`NodeRoster.check_test_coverage` enforces `test-coverage`: `all` buildings that hold test data (default)
or `any`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from mas_flower.constant import LabelHistogram, best_constants
from mas_flower.energy import host_id
from mas_flower.heartbeat import heartbeat
from mas_flower.settings import Settings
from mas_flower.strategy import protocol as P
from mas_flower.strategy.exchange import exchange


class RoundFailed(RuntimeError):
    """Too few valid replies (or nodes) after every retry: the run stops, its checkpoint stays."""


class CoverageError(RuntimeError):
    """The final test did not cover the buildings that `test-coverage` requires: the run fails."""


def node_unavailable(reply: Message | None) -> bool:
    """Whether Flower answered for the node that it is unavailable (no heartbeat: gone or stopped)."""
    return reply is not None and reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE


def duplicate_claims(claims: dict[int, str]) -> list[str]:
    """'building b: nodes 1, 2' for every building that more than one node id claims."""
    holders: dict[str, list[int]] = {}
    for nid, building in sorted(claims.items()):
        holders.setdefault(building, []).append(nid)
    return [f"building {b!r}: nodes {', '.join(map(str, ids))}" for b, ids in sorted(holders.items()) if len(ids) > 1]


#: Buildings the start-up line names; the rest are counted (every name is in results.json's `nodes`).
NAMED_BUILDINGS = 8


def federation_line(buildings: Iterable[str], remote: int, named: int = NAMED_BUILDINGS) -> str:
    """The discovery log line: how many nodes, the first `named` buildings by name (sorted) and how
    many more, how many on other machines. Its length does not grow with the federation's size
    (beyond the names' own lengths): 'federation: 1000 nodes: a, b, ... and 992 more (0 on other machines)'."""
    names = sorted(buildings)
    more = f", ... and {len(names) - named} more" if len(names) > named else ""
    return f"federation: {len(names)} nodes: {', '.join(names[:named])}{more} ({remote} on other machines)"


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers that is the same in every process and run (unlike hash())."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def validation_priority(seed: int, building: str) -> float:
    """A building's place in the validation draw (`NodeRoster.validators`), uniform in [0, 1): the same
    in every process and run for one seed and building, independent between buildings."""
    return float(np.random.default_rng(stable_seed(seed, "validation", building)).random())


#: Seconds between "waiting for nodes" log lines in deployment.
LOG_EVERY = 15.0
#: Seconds the simulated node count must stay the same to count as complete (Flower registers the
#: nodes in one loop, microseconds apart).
SETTLE = 0.5
POLL = 0.1


def wait_for_nodes(grid: Grid, need: int, timeout: float) -> list[int]:
    """Sorted ids of the connected nodes once there are `need`; ValueError naming clients-per-round if not.

    Simulation (Flower's in-memory grid): raises as soon as the registered count is known to be short.
    Deployment: waits up to `timeout` seconds.
    """
    simulation = isinstance(grid, InMemoryGrid)
    start = time.monotonic()
    last_log = last_change = -LOG_EVERY
    count = -1
    while True:
        ids = sorted(grid.get_node_ids())
        now = time.monotonic() - start
        if len(ids) >= need:
            return ids
        if len(ids) != count:
            count, last_change = len(ids), now
        if simulation and ids and now - last_change >= SETTLE:
            raise ValueError(f"clients-per-round={need} but only {len(ids)} nodes are simulated "
                             "(num-supernodes): lower clients-per-round or simulate more nodes")
        if now >= timeout:
            raise ValueError(f"clients-per-round={need} but only {len(ids)} nodes are connected "
                             f"after node-timeout={timeout:g} s")
        if not simulation and now - last_log >= LOG_EVERY:
            log(INFO, "waiting for nodes: %d connected, %d needed (up to node-timeout=%g s)", len(ids), need, timeout)
            last_log = now
        time.sleep(POLL if simulation else 1.0)


class NodeRoster:
    """The run's nodes (node id -> building) and its seeded sampler of K distinct nodes per round."""

    def __init__(self, settings: Settings, rng_state: dict | None = None) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)
        if rng_state is not None:
            self.rng.bit_generator.state = rng_state
        self.nodes: dict[int, str] = {}
        self.remote: set[int] = set()  # nodes on other machines: they meter their own training
        # Membership (the rules in the module docstring): buildings holding test data, failures in a row per building,
        # lost buildings (building -> when), new ids claiming a served building (id -> their info),
        # ids never to use again (unavailable, replaced, lost).
        self.test_buildings: set[str] = set()
        self.failures: dict[str, int] = {}
        self.lost: dict[str, dict[str, int]] = {}
        self.standby: dict[int, dict[str, Any]] = {}
        self.gone: set[int] = set()
        # The best constant prediction per task, from the training labels of the nodes found at
        # discovery (`mas_flower.constant`): sent with every evaluation, the floor of the skill.
        self.constants: dict[str, list[float]] = {}
        #: The buildings that validate (`validation-nodes`), sorted; drawn at the first validation, kept for
        #: the run (checkpointed), changed only to replace buildings that left or to grow towards the count.
        self.validation_sample: list[str] | None = None

    def data_instruction(self) -> dict[str, Any]:
        """The fields of `protocol.DataInstruction` for this run (every message to a node carries them)."""
        s = self.settings
        return {"data_root": s.data_root, "all_tasks": s.task_set, "image_size": s.image_size, "model": s.model}

    def discover(self, grid: Grid) -> dict[int, str]:
        """Ask every node which building it holds; map node ids (random per run) to buildings.

        Raises ValueError when fewer than `clients-per-round` nodes connect or answer within
        `node-timeout` or when two nodes claim one building (naming both ids), RuntimeError when a
        node cannot load its data.
        """
        s = self.settings
        need = s.clients_per_round
        ids = wait_for_nodes(grid, need, s.node_timeout)
        # The first message also waits for the engine or the nodes to start up: the longer timeout.
        infos, errors = self.query_info(grid, ids, max(s.node_timeout, s.reply_timeout), labels=True)
        if errors:
            raise RuntimeError("nodes could not load their data: "
                               + "; ".join(f"node {nid}: {why}" for nid, why in sorted(errors.items())))
        duplicates = duplicate_claims({nid: info["building"] for nid, info in infos.items()})
        if duplicates:
            raise ValueError("two nodes claim the same building (each building's data must be on one node): "
                             + "; ".join(duplicates))
        self.admit(infos)
        labels = LabelHistogram("")
        for info in infos.values():
            labels.merge(info["labels"])
        self.constants = best_constants(labels)
        if len(self.nodes) < need:
            raise ValueError(f"clients-per-round={need} but only {len(self.nodes)} nodes answered")
        log(INFO, "%s", federation_line(self.nodes.values(), len(self.remote)))
        return self.nodes

    def ordered(self) -> list[int]:
        """Node ids ordered by building name: the order replies are aggregated in."""
        return sorted(self.nodes, key=lambda nid: (self.nodes[nid], nid))

    def sample(self) -> list[int]:
        """K = clients-per-round distinct nodes, drawn without replacement from the seeded generator."""
        ordered = self.ordered()
        if len(ordered) < self.settings.clients_per_round:
            lost = "; ".join(f"{b} (lost in round {v['round']})" for b, v in sorted(self.lost.items()))
            left = ", ".join(sorted(self.nodes.values()))
            raise RoundFailed(f"clients-per-round={self.settings.clients_per_round} but only {len(ordered)} nodes "
                              f"are left ({left})" + (f"; lost: {lost}" if lost else ""))
        picks = self.rng.choice(len(ordered), size=self.settings.clients_per_round, replace=False)
        return [ordered[i] for i in sorted(picks)]

    def validators(self) -> tuple[list[int], dict[str, list[str]]]:
        """The node ids that validate now, in `ordered()` order, and how the sample changed.

        `validation-nodes` = 0: every node, no sample kept. V >= 1: the nodes of `validation_sample`, a
        set of min(V, nodes) buildings kept for the run: members whose building has no node any more (lost,
        gone) are replaced, and a sample short of V (fewer nodes at its draw) grows as nodes join, by
        `validation_priority` (seeded by `seed`), lowest first; a member is never displaced otherwise, so
        the validation curve stays over the same buildings. Returns (ids, {"out": buildings that left the
        sample, "in": buildings drawn into it}), the dict empty at the first draw and when nothing changed.
        Costs O(V + N) per call (a sort of the candidates only when the sample changes)."""
        ordered, count = self.ordered(), self.settings.validation_nodes
        if count == 0:
            return ordered, {}
        served = set(self.nodes.values())
        before = self.validation_sample
        kept = [b for b in before or () if b in served]
        drawn: list[str] = []
        if len(kept) < min(count, len(served)):
            candidates = sorted(served.difference(kept), key=lambda b: (validation_priority(self.settings.seed, b), b))
            drawn = candidates[:min(count, len(served)) - len(kept)]
        self.validation_sample = sorted([*kept, *drawn])
        chosen = set(self.validation_sample)
        change: dict[str, list[str]] = {}
        if before is not None and (drawn or len(kept) < len(before)):
            change = {"out": sorted(set(before) - chosen), "in": sorted(drawn)}
        return [nid for nid in ordered if self.nodes[nid] in chosen], change

    # Membership: following Flower's view of the nodes -------------------------------------------

    def query_info(self, grid: Grid, ids: Iterable[int], timeout: float | None, *,
                   labels: bool = False) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
        """Ask nodes `ids` for their building, host and split sizes (and, with `labels`, the histogram of
        their training labels: `mas_flower.constant.LabelHistogram`).

        Returns (node id -> {"building", "remote", "sizes": split -> examples, "labels": histogram or None},
        node id -> why it could not answer: its error, or no reply within `timeout` seconds).
        """
        query = P.InfoQuery(**self.data_instruction(), label_histogram=labels)
        content = RecordDict({P.CONFIG: ConfigRecord(query.to_record())})
        tagged = [(nid, Message(content=content, dst_node_id=nid, message_type=f"{MessageType.QUERY}.{P.INFO_QUERY}"))
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
                          "sizes": P.sizes_in(info),
                          "labels": LabelHistogram.from_record(info) if labels else None}
        return infos, errors

    def admit(self, infos: dict[int, dict[str, Any]]) -> None:
        """Take nodes into the roster (their building, whether remote, which buildings hold test data)."""
        for nid, info in infos.items():
            self.nodes[nid] = info["building"]
            (self.remote.add if info["remote"] else self.remote.discard)(nid)
            if info["sizes"].get("test", 0) > 0:
                self.test_buildings.add(info["building"])
            self.failures.setdefault(info["building"], 0)

    def drop(self, nid: int, why: str) -> None:
        building = self.nodes.pop(nid)
        self.remote.discard(nid)
        log(WARNING, "node %d (%s) %s: no longer sampled", nid, building, why)

    def refresh(self, grid: Grid, server_round: int, *, count: bool = True) -> None:
        """Follow Flower's node list before a training exchange: drop unlisted ids, admit new ones
        (replacing a gone or failing node of the same building), mark buildings lost (`self.lost`).
        `count=False` (before an evaluation): no failure is counted for buildings without a node."""
        listed = set(grid.get_node_ids())
        for nid in [n for n in self.nodes if n not in listed]:
            self.drop(nid, "is no longer connected (Flower does not list it)")
        self.standby = {n: info for n, info in self.standby.items() if n in listed}
        new = sorted(listed - set(self.nodes) - set(self.standby) - self.gone)
        if new:
            infos, errors = self.query_info(grid, new, self.settings.node_timeout)
            for nid, reason in errors.items():
                log(WARNING, "new node %d could not tell its building: %s", nid, reason)
                self.gone.add(nid)
            for nid, info in sorted(infos.items()):
                log(INFO, "new node %d claims building %r", nid, info["building"])
            self.standby.update(infos)
        holder = {b: n for n, b in self.nodes.items()}
        for nid, info in sorted(self.standby.items()):
            building = info["building"]
            old = holder.get(building)
            if old is not None and self.failures.get(building, 0) == 0:
                if nid in new:
                    log(WARNING, "node %d claims building %r, which node %d holds and serves well: not sampled "
                        "unless node %d fails", nid, building, old, old)
                continue
            if old is not None:
                self.drop(old, f"is replaced by node {nid} (a restart: the same building, a new id)")
                self.gone.add(old)
            if self.lost.pop(building, None) is not None:
                log(INFO, "building %r rejoins with node %d", building, nid)
            log(INFO, "node %d joins with building %r", nid, building)
            del self.standby[nid]
            self.admit({nid: info})
            self.failures[building] = 0
            holder[building] = nid
        if not count:
            return
        served = set(self.nodes.values())
        for building in self.failures:
            if building not in served and building not in self.lost:
                self.failures[building] += 1  # a building without a node fails every round it has none
        self.mark_lost(server_round)

    def record_exchange(self, sampled: Iterable[int], failed: set[int], unavailable: set[int],
                        server_round: int) -> None:
        """After a training exchange: a sampled node that failed counts one more failure in a row for its
        building; one that succeeded resets it. Ids Flower answered "Node Unavailable" for are dropped
        for good (a restarted node comes back with a new id)."""
        for nid in sampled:
            building = self.nodes.get(nid)
            if building is not None:
                self.failures[building] = self.failures.get(building, 0) + 1 if nid in failed else 0
        self.forget(unavailable)
        self.mark_lost(server_round)

    def forget(self, unavailable: set[int]) -> None:
        """Drop ids that Flower reported unavailable; they are never sampled or admitted again."""
        for nid in sorted(unavailable & set(self.nodes)):
            self.drop(nid, "is unavailable (Flower: no heartbeat)")
        self.gone |= unavailable

    def mark_lost(self, server_round: int) -> None:
        """Buildings that failed `lost-after` exchanges in a row are lost: their node is not sampled again."""
        n = self.settings.lost_after
        for building, count in self.failures.items():
            if count >= n and building not in self.lost:
                self.lost[building] = {"round": server_round, "failed_in_a_row": count}
                for nid in [i for i, b in self.nodes.items() if b == building]:
                    self.drop(nid, f"failed {count} rounds in a row (lost-after={n}): building lost")
                    self.gone.add(nid)
                log(WARNING, "building %r is lost in round %d", building, server_round)

    def check_test_coverage(self, covered: dict[str, list[str]], reasons: dict[str, str] | None = None
                            ) -> dict[str, Any]:
        """The final test's coverage: {"test_buildings": federation -> buildings it covered,
        "test_missing": buildings holding test data that some federation missed, "lost_buildings"}.

        `reasons`: building -> why its test reply was left out, for the error message.
        Raises CoverageError naming the missing buildings when `test-coverage=all` and any building that
        holds test data is missing from some federation's test (`any`: when a federation covered none).
        """
        required = sorted(self.test_buildings)
        missing = sorted({b for done in covered.values() for b in required if b not in done})
        summary = {"test_buildings": covered, "test_missing": missing, "test_coverage": self.settings.test_coverage,
                   "lost_buildings": dict(self.lost)}
        empty = [name for name, done in covered.items() if not done]
        if (self.settings.test_coverage == "all" and missing) or empty:
            reasons = reasons or {}
            why = "; ".join(f"{b} (lost in round {self.lost[b]['round']})" if b in self.lost
                            else f"{b} ({reasons[b][:200]})" if b in reasons else f"{b} (no node holds it now)"
                            for b in missing)
            raise CoverageError(f"the test covered {len(required) - len(missing)} of the {len(required)} buildings "
                                f"holding test data: missing {why or ', '.join(empty)}. No result is written: "
                                "a partial test is not the federation's test (test-coverage=any accepts one)")
        if missing:
            log(WARNING, "the test misses buildings %s (test-coverage=any): results.json names them",
                ", ".join(missing))
        return summary
