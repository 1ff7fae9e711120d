"""Send a batch of messages and collect the replies, tagged by what each message was for.

Flower's `Grid.send_and_receive` sleeps 3 s between polls and returns replies untagged; a round
here sends one message per (federation, client), so we push, remember which id is which, and
poll briskly.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from logging import WARNING

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

POLL_SECONDS = 0.1


def exchange(grid: Grid, tagged: Sequence[tuple[Hashable, Message]],
             timeout: float | None = None) -> dict[Hashable, Message]:
    """Push every message, wait for the replies (until `timeout` seconds), return tag -> reply.

    Tags whose reply did not come in time are missing from the result.
    """
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
