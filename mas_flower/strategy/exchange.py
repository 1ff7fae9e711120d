"""Send a batch of messages and collect the replies, tagged by what each message was for.

Flower's `Grid.send_and_receive` sleeps 3 s between polls and returns replies untagged; a round
here sends one message per (federation, client), so we push, remember which id is which, and
poll briskly.

In simulation (`InMemoryGrid`), Flower 1.42's engine hands messages to the ClientApps from a thread
that asks the in-memory LinkState, every 0.1 s, for each of the N registered nodes in turn, whether
a message waits for it (`vce_api.add_messages_to_queue`), and each such call checks every stored
message (`InMemoryLinkState.get_message_ins`, ~7 µs per message). That is N x M checks a sweep, M
the messages pushed and not yet answered: 0.08 s at N = 1,000, M = 10 and seconds during discovery
and the final test (M = N), all in the ServerApp's process, under the GIL and the state's lock.
`index_deliveries` keeps each node's waiting message ids, so that a call costs O(1) for a node with
nothing waiting and O(its own messages) otherwise (see there).
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from logging import WARNING

from flwr.app import Message
from flwr.common.logger import log
from flwr.server.superlink.linkstate import InMemoryLinkState
from flwr.serverapp import Grid
from flwr.supercore.date import now
from flwr.superlink.grid import InMemoryGrid

POLL_SECONDS = 0.1


def index_deliveries(grid: Grid) -> bool:
    """In simulation, answer the engine's "any message for node n?" from an index: True once installed.

    The grid's in-memory LinkState (one object, shared with the engine's thread) gets two instance
    attributes: a `store_message_ins` that calls Flower's and notes the new message's id under its
    destination node, and a `get_message_ins` that returns [] at once for a node with no id noted, and
    otherwise does what Flower's does, restricted to that node's ids: the same expiry and federation
    checks (`_check_stored_messages`, which purges what fails them), the same messages in the same
    (push) order up to `limit`, marked delivered the same way. Messages of other nodes are purged when
    their node is asked or their reply is pulled, not on every call. Both updates hold the state's lock.
    Idempotent; anything but Flower's `InMemoryGrid` over an `InMemoryLinkState` with those members (a
    deployment's grid, another Flower version) is left alone (False).
    """
    state = getattr(grid, "state", None)
    if not isinstance(grid, InMemoryGrid) or not isinstance(state, InMemoryLinkState):
        return False
    if getattr(state, "_mas_indexed", False):
        return True
    if not all(hasattr(state, name) for name in ("lock", "message_ins_store", "store_message_ins",
                                                 "get_message_ins", "_check_stored_messages")):
        return False
    lock = state.lock
    flower_store = state.store_message_ins

    with lock:
        waiting: dict[int, list[str]] = {}  # node id -> ids of its messages not yet delivered, in push order
        for message_id, message in state.message_ins_store.items():
            if message.metadata.delivered_at == "":
                waiting.setdefault(message.metadata.dst_node_id, []).append(message_id)

        def store_message_ins(message: Message) -> str | None:
            with lock:
                message_id = flower_store(message)
                if message_id is not None:
                    waiting.setdefault(message.metadata.dst_node_id, []).append(message_id)
                return message_id

        def get_message_ins(node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
            if limit is not None and limit < 1:
                raise AssertionError("`limit` must be >= 1")
            if node_id not in waiting:
                return []
            with lock:
                ids = waiting.pop(node_id, [])
                state._check_stored_messages(set(ids))
                found: list[Message] = []
                kept: list[str] = []
                for message_id in ids:
                    message = state.message_ins_store.get(message_id)
                    if message is None or message.metadata.delivered_at != "":
                        continue
                    if (run_id is None or message.metadata.run_id == run_id) and not (limit and len(found) == limit):
                        found.append(message)
                    else:
                        kept.append(message_id)
                if kept:
                    waiting[node_id] = kept
                delivered_at = now().isoformat()
                for message in found:
                    message.metadata.delivered_at = delivered_at
                return found

        state.store_message_ins = store_message_ins  # type: ignore[method-assign]
        state.get_message_ins = get_message_ins  # type: ignore[method-assign]
        state._mas_indexed = True  # type: ignore[attr-defined]
    return True


def exchange(grid: Grid, tagged: Sequence[tuple[Hashable, Message]],
             timeout: float | None = None) -> dict[Hashable, Message]:
    """Push every message, wait for the replies (until `timeout` seconds), return tag -> reply.

    Tags whose reply did not come in time are missing from the result.
    """
    index_deliveries(grid)
    ids = list(grid.push_messages([m for _, m in tagged]))
    pending = {mid: tag for mid, (tag, _) in zip(ids, tagged, strict=True) if mid}
    replies: dict[Hashable, Message] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            tag = pending.pop(reply.metadata.reply_to_message_id, None)
            if tag is not None:
                replies[tag] = reply
        if not pending or (deadline is not None and time.monotonic() > deadline):
            break
        time.sleep(POLL_SECONDS)
    if pending:
        log(WARNING, "no reply in time for %s", ", ".join(str(t) for t in pending.values()))
    return replies
