"""Networks packed for the wire: lossless, a few Arrays whatever the tensor count, and loud on a mismatch."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from mas_flower.defaults import load_settings
from mas_flower.methods import FederationSpec, Stage
from mas_flower.models import build_model
from mas_flower.strategy import ParallelFederations, wire
from mas_flower.strategy import protocol as P


def test_pack_then_unpack_gives_back_every_array_byte_for_byte() -> None:
    record = ArrayRecord({
        "b.weight": Array(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "a.count": Array(np.array(7, dtype=np.int64)),  # 0-d, as BN's num_batches_tracked
        "c.half": Array(np.linspace(0, 1, 5).astype(np.float16)),
        "a.bias": Array(np.array([-0.0, np.inf, np.nan], dtype=np.float32)),
    })
    packed = wire.pack(record)
    assert set(packed) == {wire.LAYOUT, "packed-<f4", "packed-<i8", "packed-<f2"}
    back = wire.unpack(packed, record)
    assert list(back) == list(record)  # the reference's order
    for key in record:
        a, b = record[key].numpy(), back[key].numpy()
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), key


def test_a_network_becomes_three_arrays_whatever_its_tensor_count() -> None:
    state = build_model("tiny", "sdk", image_size=16).state_dict()
    packed = wire.pack(ArrayRecord(state))
    assert len(state) > 100 and len(packed) == 3
    loaded = build_model("tiny", "sdk", image_size=16)
    loaded.load_state_dict(wire.unpack(packed, loaded.state_dict()).to_torch_state_dict())
    assert all(np.array_equal(loaded.state_dict()[k].numpy(), v.numpy()) for k, v in state.items())


def test_unpacking_with_another_network_fails_naming_what() -> None:
    packed = wire.pack(ArrayRecord(build_model("tiny", "sdk", image_size=16).state_dict()))
    with pytest.raises(wire.LayoutMismatch, match="federation 'sd': packed for another network"):
        wire.unpack(packed, build_model("tiny", "sd", image_size=16).state_dict(), what="federation 'sd'")
    with pytest.raises(wire.LayoutMismatch, match="not a packed record"):
        wire.unpack(ArrayRecord({"w": Array(np.zeros(1, np.float32))}), {"w": np.zeros(1, np.float32)})
    # A plain record passes `unpacked` as it is (a hand-made or foreign reply).
    plain = ArrayRecord({"w": Array(np.zeros(1, np.float32))})
    assert wire.unpacked(plain, {"w": np.zeros(1, np.float32)}) is plain


def test_the_server_packs_what_it_sends_and_rejects_a_reply_packed_for_another_network() -> None:
    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    try:
        settings = load_settings({}, {"task-set": "sdk", "clients-per-round": 2, "min-replies": 1})
        stage = Stage("split", [FederationSpec("sd", "sd"), FederationSpec("k", "k")], rounds=1, schedule_total=1)
        strategy = ParallelFederations(stage, settings, "fedavg")
        strategy.roster.nodes = {11: "a", 22: "b"}
        sd = ArrayRecord({"w": Array(np.zeros((2, 2), np.float32)), "n": Array(np.array(3, np.int64))})
        k = ArrayRecord({"w": Array(np.ones(3, np.float32))})
        arrays = ArrayRecord({**{f"sd/{n}": a for n, a in sd.items()}, **{f"k/{n}": a for n, a in k.items()}})
        sent = list(strategy.configure_train(1, arrays, ConfigRecord(), None))
        for msg in sent:
            assert wire.unpack(msg.content["arrays.sd"], sd).keys() == sd.keys()
            assert set(msg.content["arrays.k"]) == {wire.LAYOUT, "packed-<f4"}
        replies = []
        for i, msg in enumerate(sent):
            content = RecordDict({P.METRICS: MetricRecord({})})
            content["arrays.sd"] = wire.pack(ArrayRecord({"w": Array(np.full((2, 2), i + 1.0, np.float32)),
                                                          "n": Array(np.array(3, np.int64))}))
            wrong = {"w": Array(np.ones(4, np.float32))} if i == 0 else {"w": Array(np.full(3, 5.0, np.float32))}
            content["arrays.k"] = wire.pack(ArrayRecord(wrong))  # node 0: packed for another network
            for name, tasks in (("sd", "sd"), ("k", "k")):
                content[f"metrics.{name}"] = MetricRecord({P.NUM_EXAMPLES: 10, P.TRAIN_SECONDS: 1.0,
                                                           **{P.loss_key(t): 1.0 for t in tasks}})
            replies.append(Message(content, reply_to=msg))
        new, _ = strategy.aggregate_train(1, replies)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before
    (failed,) = strategy.attempt.record.failed
    assert "(k): federation 'k': packed for another network" in failed
    np.testing.assert_array_equal(new["sd/w"].numpy(), np.full((2, 2), 1.5, np.float32))  # both replies
    np.testing.assert_array_equal(new["k/w"].numpy(), np.full(3, 5.0, np.float32))  # node 1's only
