"""How a federation's network travels in a message: its arrays packed into one Array per dtype.

Flower 1.42 moves every `Array` of a message as its own content-addressed object: each is pulled or
pushed with its own RPC on every hop (SuperLink, SuperNode, ClientApp process), whatever its size. Our
networks hold many small tensors (the tiny network 76-144, the Xception 466), so on a deployed round the
per-object cost, not the bytes, dominated, and a split round, whose networks hold more tensors in all,
cost up to 1.8x a merge round (docs/deployment.md, section "Cost of a deployed round"). Packed, a
network is a few objects whatever its tensor count.

`pack` concatenates the arrays of each dtype in sorted-key order and adds the layout's digest;
`unpack` cuts them apart again by the layout of a reference record (the server: what it sent; the
ClientApp: the network it built), checking that digest, so a server and a client that disagree
about the network fail loudly instead of loading scrambled weights. Both are lossless: unpack(pack(r))
equals r byte for byte, so Flower's strategies, which only ever see unpacked records, aggregate
exactly as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

#: Key of the layout digest (uint8, 32 bytes) in a packed record; the others are `packed-<dtype>`.
LAYOUT = "packed-layout"
PREFIX = "packed-"

Layout = list[tuple[str, tuple[int, ...], np.dtype]]


class LayoutMismatch(ValueError):
    """A packed record was made for another network than the reference it is unpacked with."""


def layout_of(arrays: Mapping[str, object]) -> Layout:
    """(key, shape, dtype) of every entry, in sorted-key order; values are Flower Arrays, numpy arrays or tensors."""
    out = []
    for key in sorted(arrays):
        value = arrays[key]
        if isinstance(value, Array):
            array = value.numpy()
        elif isinstance(value, torch.Tensor):
            array = value.detach().cpu().numpy()  # a view for CPU tensors, no copy
        else:
            array = np.asarray(value)
        out.append((key, tuple(array.shape), array.dtype))
    return out


def _digest(layout: Layout) -> np.ndarray:
    text = "\n".join(f"{k}\t{','.join(map(str, s))}\t{d.str}" for k, s, d in layout)
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8).copy()


def is_packed(record: ArrayRecord) -> bool:
    return LAYOUT in record


def unpacked(record: ArrayRecord, like: Mapping[str, object], *, what: str = "arrays") -> ArrayRecord:
    """`unpack(record, like)` if it is packed; a plain record (a hand-made or foreign reply) as it is."""
    return unpack(record, like, what=what) if is_packed(record) else record


def pack(record: ArrayRecord) -> ArrayRecord:
    """One Array per dtype (the entries' values concatenated in sorted-key order) and the layout digest."""
    layout = layout_of(record)
    groups: dict[str, list[np.ndarray]] = {}
    for key, _, dtype in layout:
        groups.setdefault(dtype.str, []).append(record[key].numpy().ravel())
    packed = ArrayRecord()
    packed[LAYOUT] = Array(_digest(layout))
    for dtype, parts in groups.items():
        packed[f"{PREFIX}{dtype}"] = Array(np.concatenate(parts))
    return packed


def unpack(packed: ArrayRecord, like: Mapping[str, object], *, what: str = "arrays") -> ArrayRecord:
    """The record `pack` was given, its entries in `like`'s order; `like` gives keys, shapes and dtypes.

    Raises LayoutMismatch naming `what` when the digest or the sizes disagree with `like`.
    """
    if LAYOUT not in packed:
        raise LayoutMismatch(f"{what}: not a packed record (keys {', '.join(list(packed)[:3])}, ...)")
    layout = layout_of(like)
    if not np.array_equal(packed[LAYOUT].numpy(), _digest(layout)):
        first = layout[0][0] if layout else "-"
        raise LayoutMismatch(f"{what}: packed for another network than this one ({len(layout)} arrays, first "
                             f"{first}): do server and client build the same model and tasks?")
    flat = {key[len(PREFIX):]: packed[key].numpy() for key in packed if key != LAYOUT}
    offsets = dict.fromkeys(flat, 0)
    values: dict[str, np.ndarray] = {}
    for key, shape, dtype in layout:
        size = int(np.prod(shape, dtype=np.int64))
        start = offsets.get(dtype.str, 0)
        source = flat.get(dtype.str)
        if source is None or start + size > source.size:
            raise LayoutMismatch(f"{what}: the packed {dtype} values end before {key!r}")
        values[key] = source[start:start + size].reshape(shape)
        offsets[dtype.str] = start + size
    if any(offsets[d] != flat[d].size for d in flat):
        raise LayoutMismatch(f"{what}: packed values left over after the last array")
    out = ArrayRecord()
    for key in like:
        out[key] = Array(values[key].copy())  # ascontiguousarray would make 0-d arrays 1-d
    return out
