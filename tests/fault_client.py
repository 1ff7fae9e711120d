"""A ClientApp that injects faults by partition id, around the real handlers.

FAULTS maps a partition id to a fault: "raise" (the handler raises), "nan" (the trained arrays
come back with NaN), "sleep" (its first train reply comes after SLEEP_SECONDS) or "late-raise" (raises from
round 2 on), "remote" (the node says it runs on another machine, so it meters its own training),
"killed" (in round 2 it writes its process id to `actor-pid` in the fault folder and waits there to be
SIGKILLed, as an out-of-memory kill would end it), "building=<name>" (it claims that building).
Other nodes behave normally. With MAS_FLOWER_TEST_RECORD set (a file path), every node appends one line
per message it handles: `train <round> <building>` or `evaluate <split> <building>`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client_app import app as real
from client_app.node import node_building
from mas_flower.strategy import protocol as P

SLEEP_SECONDS = 16.0


def faults() -> dict[int, str]:
    """From the environment (set by the test before the simulation starts its workers)."""
    spec = os.environ.get("MAS_FLOWER_TEST_FAULTS", "")
    return {int(k): v for k, v in (item.split("=", 1) for item in spec.split(",") if item)}


app = ClientApp()


def note(msg: Message, context: Context, kind: str, what: object) -> None:
    """Append `<kind> <what> <building>` to the file MAS_FLOWER_TEST_RECORD names (nothing if unset)."""
    path = os.environ.get("MAS_FLOWER_TEST_RECORD")
    if path:
        building = node_building(P.DataInstruction.from_record(msg.content[P.CONFIG]), context)
        with open(path, "a", encoding="utf-8") as f:  # one short append per line: whole lines
            f.write(f"{kind} {what} {building}\n")


@app.train()
def train(msg: Message, context: Context) -> Message:
    fault = faults().get(int(context.node_config["partition-id"]))
    round_ = int(msg.content[P.CONFIG]["server-round"])
    note(msg, context, "train", round_)
    if fault == "raise" or (fault == "late-raise" and round_ >= 2):
        raise RuntimeError("injected fault: this client crashed")
    marker = Path(os.environ.get("MAS_FLOWER_TEST_FAULT_DIR", "/nonexistent")) / f"slept-{context.node_id}"
    if fault == "killed" and round_ == 2:
        (marker.parent / "actor-pid").write_text(str(os.getpid()))
        time.sleep(120)  # the test kills this process meanwhile
    if fault == "sleep" and not marker.exists():
        marker.touch()  # a file, not context.state: a reply that came too late may not save the node's state
        time.sleep(SLEEP_SECONDS)
    reply = real.train(msg, context)
    if fault == "nan":  # every federation's network comes back poisoned
        for record in [k for k in reply.content.array_records if k.startswith(f"{P.ARRAYS}.")]:
            arrays = reply.content[record]
            key = next(k for k, v in arrays.items() if v.numpy().dtype.kind == "f")
            poisoned = arrays[key].numpy().copy()
            poisoned.flat[0] = np.nan
            reply.content[record] = ArrayRecord({**{k: v for k, v in arrays.items()}, key: Array(poisoned)})
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    note(msg, context, "evaluate", msg.content[P.CONFIG]["split"])
    return real.evaluate_(msg, context)


@app.query(P.INFO_QUERY)
def info(msg: Message, context: Context) -> Message:
    reply = real.info(msg, context)
    fault = faults().get(int(context.node_config["partition-id"]), "")
    if fault == "remote":
        reply.content[P.CONFIG][P.HOST] = f"another-machine-{context.node_id}"
    if fault.startswith("building="):
        reply.content[P.CONFIG][P.BUILDING] = fault.partition("=")[2]
    return reply
