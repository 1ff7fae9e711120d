"""Run accounting by hand: bytes of records, per-round deltas, task-metric sums, the live file."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from mas_flower.defaults import load_settings
from mas_flower.flops import NetworkFlops
from mas_flower.live import append_live, read_live
from mas_flower.methods.base import FederationSpec
from mas_flower.strategy import accounting
from mas_flower.strategy import protocol as P
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


# book_train / book_eval on hand-made per-sample figures ---------------------------------------------

#: Per-sample FLOPs, all different, so that a dropped or swapped factor changes every total:
#: train 10, eval 3, exact lookahead 7 per sample; first-order 2 per sample + 100 per batch.
FIGURES = NetworkFlops(model="tiny", tasks="sk", image_size=32, weighting="gradnorm", train=10.0, eval=3.0,
                       affinity=7.0, affinity_first_order=2.0, affinity_first_order_per_batch=100.0)


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """`FIGURES` for every network; the arguments `_flops` measured with are recorded."""
    asked: list[tuple] = []

    def network_flops(model: str, tasks: str, image_size: int, weighting: str, *, cache_dir) -> NetworkFlops:
        asked.append((model, tasks, image_size, weighting))
        return FIGURES

    monkeypatch.setattr(accounting, "network_flops", network_flops)
    return asked


def _train_views() -> list[Message]:
    # client A: 5 examples, a lookahead over 8 samples in 2 batches; client B: 4 examples, no lookahead
    return [_reply({P.NUM_EXAMPLES: 5, P.AFFINITY_SAMPLES: 8, P.AFFINITY_COUNT: 2, P.SETUP_SECONDS: 0.25}),
            _reply({P.NUM_EXAMPLES: 4, P.SETUP_SECONDS: 0.5})]


@pytest.mark.parametrize(("mode", "lookahead"), [
    ("exact", 7 * 8),  # 7 per lookahead sample × 8 samples = 56 (swapped with the 2 batches: 14)
    ("first_order", 2 * 8 + 100 * 2),  # 16 + 200 = 216 (swapped: 2 × 2 + 100 × 8 = 804)
])
def test_book_train_charges_epochs_times_examples_plus_the_lookahead(figures: list[tuple], mode: str,
                                                                     lookahead: int) -> None:
    settings = load_settings({}, {"local-epochs": 3, "affinity-mode": mode, "task-set": "sdk", "image-size": 32,
                                  "model": "tiny"})
    fed = FederationSpec("sk", "sk", weighting="gradnorm")
    acc = Accounts(train_flops=1000.0, affinity_flops=40.0, eval_flops=9.0, client_setup_seconds=1.0)
    accounting.book_train(acc, settings, fed, _train_views())
    # 10 FLOPs × 3 epochs × (5 + 4) examples = 270, plus the lookahead, on top of the 1000 booked before
    assert acc.train_flops == 1000 + 270 + lookahead
    assert acc.affinity_flops == 40 + lookahead
    assert acc.eval_flops == 9.0 and acc.client_setup_seconds == 1.0 + 0.25 + 0.5
    assert figures == [("tiny", "sk", 32, "gradnorm")]  # the federation's network, not the task set's


def test_book_eval_charges_forward_passes_only(figures: list[tuple]) -> None:
    settings = load_settings({}, {"local-epochs": 3, "task-set": "sdk", "image-size": 32, "model": "tiny"})
    acc = Accounts(train_flops=1000.0, eval_flops=9.0)
    views = [_reply({P.NUM_EXAMPLES: 5, P.AFFINITY_SAMPLES: 8, P.AFFINITY_COUNT: 2}), _reply({P.NUM_EXAMPLES: 4})]
    accounting.book_eval(acc, settings, FederationSpec("sk", "sk", weighting="gradnorm"), views)
    # 3 forward FLOPs × (5 + 4) samples = 27, once (no epochs, no lookahead, not the 10 of a training step)
    assert acc.eval_flops == 9 + 27
    assert acc.train_flops == 1000.0 and acc.affinity_flops == 0.0
    assert figures == [("tiny", "sk", 32, "gradnorm")]
