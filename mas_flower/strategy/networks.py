"""The networks of a stage: their one form (`Networks`), the joined form of Flower's Strategy API,
fresh starts, and the small conversions around aggregation and the wire.

Inside a stage every network is an ArrayRecord under its federation's name. Flower's `Strategy` methods
and `Result` take one ArrayRecord, so there only the networks are joined as `<federation>/<parameter>`.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord

from mas_flower.methods.base import FederationSpec, State
from mas_flower.models import build_model
from mas_flower.settings import Settings
from mas_flower.strategy import wire
from mas_flower.strategy.roster import stable_seed

#: Federation -> its network: the one form of the networks inside a stage.
Networks = dict[str, ArrayRecord]

SEP = "/"


def join_arrays(networks: Networks) -> ArrayRecord:
    """Every federation's network in one ArrayRecord keyed `<federation>/<parameter>`: the form Flower's
    Strategy methods and `Result` take, used only at that boundary."""
    record = ArrayRecord()
    for name, arrays in networks.items():
        for key, array in arrays.items():
            record[f"{name}{SEP}{key}"] = array
    return record


def split_arrays(arrays: ArrayRecord) -> Networks:
    """The inverse of `join_arrays` (the same Array objects)."""
    out: Networks = {}
    for key, array in arrays.items():
        name, _, param = key.partition(SEP)
        out.setdefault(name, ArrayRecord())[param] = array
    return out


def fresh_state(settings: Settings, federation: FederationSpec) -> State:
    """A network from scratch. Every network of a run starts from the same seeded encoder and the
    same decoder per task, so methods differ in how they train, not in their luck at init."""
    net = build_model(settings.model, federation.tasks, image_size=settings.image_size,
                      seed=stable_seed(settings.seed, "init"))
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def initial_states(settings: Settings, federations: list[FederationSpec]) -> dict[str, State]:
    """Each federation's starting network: its `init` (e.g. inherited by a MAS split), else fresh."""
    return {f.name: f.init if f.init is not None else fresh_state(settings, f) for f in federations}


def packed_once(record: ArrayRecord, done: dict[int, ArrayRecord]) -> ArrayRecord:
    """`wire.pack(record)`, once per record object: a Flower strategy usually gives every node the same
    one. `done` lives while the strategy's messages do, so no id is reused meanwhile."""
    if id(record) not in done:
        done[id(record)] = wire.pack(record)
    return done[id(record)]


def like_sent(new: ArrayRecord, old: ArrayRecord) -> ArrayRecord:
    """Aggregated arrays come back as float; give every entry the dtype it was sent with (BN counters
    are ints, truncated towards zero as torch's `.to` does)."""
    out = ArrayRecord()
    for key, array in new.items():
        value = array.numpy()
        if key in old and value.dtype != old[key].numpy().dtype:
            value = value.astype(old[key].numpy().dtype)
        out[key] = Array(value.copy(order="C"))
    return out
