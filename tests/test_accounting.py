"""Run accounting by hand: bytes of records, per-round deltas, task-metric sums, the live file."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from mas_flower import protocol as P
from mas_flower.live import append_live, read_live
from mas_flower.strategy.accounting import Accounts, content_bytes, take_metric_sums


def _reply(metrics: dict) -> Message:
    meta = Metadata(run_id=1, message_id="", src_node_id=2, dst_node_id=1, reply_to_message_id="x",
                    group_id="", created_at=0.0, ttl=60.0, message_type="evaluate")
    return Message(content=RecordDict({P.METRICS: MetricRecord(metrics)}), metadata=meta)


def test_bytes_of_arrays_configs_and_metrics_by_hand() -> None:
    content = RecordDict({
        "arrays": ArrayRecord({"w": Array(np.zeros(10, dtype=np.float32))}),
        "config": ConfigRecord({"tasks": "sd", "flag": True, "lr": 0.1}),
        "metrics": MetricRecord({"a": 1.0, "bb": [1.0, 2.0]}),
    })
    # array: a .npy file, its 128-byte header + 10 × 4 bytes, plus the key "w"
    # config: "sd" 2 + key 5; True 1 + key 4; 0.1 8 + key 2        = 22
    # metrics: 8 + key 1; 2 × 8 + key 2                              = 27
    assert content_bytes(content) == (128 + 40 + 1) + 22 + 27


def test_totals_and_round_deltas_in_tflops_and_mb() -> None:
    acc = Accounts(train_flops=3e12, affinity_flops=1e12, eval_flops=5e11, bytes_down=4_000_000, bytes_up=1_000_000)
    before = acc.snapshot()
    acc.train_flops += 2e12
    acc.bytes_up += 500_000
    assert acc.totals() == pytest.approx({"train_tflops": 5.0, "affinity_tflops": 1.0, "eval_tflops": 0.5,
                                          "comm_mb_down": 4.0, "comm_mb_up": 1.5, "comm_mb": 5.5})
    assert acc.since(before) == pytest.approx({"train_tflops": 2.0, "affinity_tflops": 0.0, "eval_tflops": 0.0,
                                               "comm_mb_down": 0.0, "comm_mb_up": 0.5, "comm_mb": 0.5})


def test_metric_sums_are_added_not_averaged_and_stripped_for_flower() -> None:
    # Two clients' depth sums (abs_rel numerator, squared error, count): 4 and 12 valid pixels.
    views = [_reply({P.NUM_EXAMPLES: 1, "loss-d": 0.5, "msum.d.abs_rel": [2.0], "msum.d.sq_err_m2": [8.0],
                     "msum.d.count": [4.0]}),
             _reply({P.NUM_EXAMPLES: 3, "loss-d": 0.1, "msum.d.abs_rel": [1.0], "msum.d.sq_err_m2": [4.0],
                     "msum.d.count": [12.0]})]
    stripped, sums = take_metric_sums(views)
    assert [set(v.content[P.METRICS]) for v in stripped] == [{P.NUM_EXAMPLES, "loss-d"}] * 2
    assert sums is not None and sums.sums()["d"]["count"].tolist() == [16.0]
    assert sums.compute()["d"]["abs_rel"] == pytest.approx(3.0 / 16)  # not the mean of 2/4 and 1/12


def test_the_live_file_skips_a_torn_last_line(tmp_path) -> None:
    append_live(tmp_path, {"round": 1, "phase": "merge"}, Accounts(train_flops=1e12).totals())
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "pha')
    assert read_live(tmp_path) == [{"round": 1, "phase": "merge", "train_tflops_so_far": 1.0,
                                    "affinity_tflops_so_far": 0.0, "eval_tflops_so_far": 0.0,
                                    "comm_mb_down_so_far": 0.0, "comm_mb_up_so_far": 0.0, "comm_mb_so_far": 0.0}]


def test_a_checkpointed_ledger_from_before_the_accounts_resumes_with_empty_books() -> None:
    import pickle

    from mas_flower.strategy.run import Ledger

    old = Ledger(client_train_seconds=2.0)
    del old.accounts  # as pickled before the field existed
    restored = pickle.loads(pickle.dumps(old))
    assert restored.client_train_seconds == 2.0 and restored.accounts == Accounts()
    kept = pickle.loads(pickle.dumps(Ledger(accounts=Accounts(bytes_up=5))))
    assert kept.accounts.bytes_up == 5
