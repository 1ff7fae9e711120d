"""ClientApp: one building's trainer. Converts records to and from the library, nothing more.

A train or evaluate message carries every federation of the round this node takes part in
(`mas_flower.strategy.protocol`); the node trains or evaluates them one after the other and answers once.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.node import building_data, node_building
from mas_flower.constant import evaluate_constants, histogram_of
from mas_flower.energy import EnergyMeter, host_id
from mas_flower.metrics import TaskMetrics
from mas_flower.models import build_model
from mas_flower.settings import home
from mas_flower.strategy import protocol as P
from mas_flower.strategy import wire
from mas_flower.training import TrainConfig, evaluate, make_weighting, pick_device, train_local

app = ClientApp()


def cpu_threads() -> int | None:
    """Torch threads for CPU training: what the simulation engine gave this client (Ray sets
    OMP_NUM_THREADS to the actor's CPUs), so that clients sharing a machine do not oversubscribe it."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def federation_configs(msg: Message) -> list[tuple[str, ConfigRecord]]:
    """(federation, its `config.<federation>` record), in the message's order."""
    return [(name, msg.content[P.record_key(P.CONFIG, name)])
            for name in P.federations_in(msg.content.config_records.keys(), P.CONFIG)]


def _network(msg: Message, name: str, data: P.DataInstruction, tasks: str) -> torch.nn.Module:
    net = build_model(data.model, tasks, image_size=data.image_size)
    arrays = wire.unpacked(msg.content[P.record_key(P.ARRAYS, name)], net.state_dict(), what=f"federation {name!r}")
    net.load_state_dict(arrays.to_torch_state_dict())
    return net


def train_config(shared: P.TrainInstruction, mine: P.FederationTrain) -> TrainConfig:
    """The library's TrainConfig from a train message's shared instruction and one federation's."""
    return TrainConfig(
        lr=shared.lr, epochs=shared.local_epochs, batch_size=shared.batch_size, prox_mu=mine.proximal_mu,
        weighting=mine.weighting, gradnorm_alpha=shared.gradnorm_alpha, affinity_every=mine.affinity_every,
        affinity_mode=shared.affinity_mode, affinity_first_epoch_only=shared.affinity_first_epoch_only,
        seed=mine.seed, num_threads=cpu_threads(), precision=shared.precision,
    )


def _train_one(msg: Message, shared: P.TrainInstruction, mine: P.FederationTrain, context: Context
               ) -> tuple[ArrayRecord, MetricRecord]:
    net = _network(msg, mine.federation, shared, mine.tasks)
    data = building_data(shared, context)
    cfg = train_config(shared, mine)
    # A learnt loss weighting (GradNorm) continues from this node's last round in this federation.
    weighting, key = make_weighting(cfg, net.tasks), f"weighting-{mine.federation}"
    if key in context.state.array_records:
        weighting.load_state_dict(context.state.array_records[key].to_torch_state_dict())
    result = train_local(net, data.split("train"), cfg, pick_device(), weighting=weighting)
    if weighting.state_dict():
        context.state.array_records[key] = ArrayRecord(weighting.state_dict())
    metrics: dict = {P.NUM_EXAMPLES: result.num_examples, P.TRAIN_SECONDS: result.seconds,
                     P.SETUP_SECONDS: result.setup_seconds, P.AFFINITY_SAMPLES: result.affinity_samples,
                     P.BF16: int(result.precision == "bf16")}
    metrics.update({P.loss_key(k): float(v) for k, v in result.losses.items()})
    if result.affinity is not None:
        metrics[P.AFFINITY] = np.asarray(result.affinity, dtype=float).ravel().tolist()
        metrics[P.AFFINITY_COUNT] = result.affinity_count
        if result.affinity_squares is not None:
            metrics[P.AFFINITY_SQUARES] = np.asarray(result.affinity_squares, dtype=float).ravel().tolist()
    return wire.pack(ArrayRecord(net.state_dict())), MetricRecord(metrics)


@app.train()
def train(msg: Message, context: Context) -> Message:
    shared = P.TrainInstruction.from_record(msg.content[P.CONFIG])
    meter = None
    if shared.measure_energy:  # on its own machine: this node meters its training
        meter = EnergyMeter(country=shared.energy_country or None,
                            intensity_g_per_kwh=shared.energy_intensity or None, probe_cache=home() / "cache")
        meter.start()
    content = RecordDict()
    for name, config in federation_configs(msg):
        arrays, metrics = _train_one(msg, shared, P.FederationTrain.from_record(config), context)
        content[P.record_key(P.ARRAYS, name)] = arrays
        content[P.record_key(P.METRICS, name)] = metrics
    node: dict = {}
    if meter is not None:
        energy = meter.stop()
        node.update({P.ENERGY_KWH: energy.energy_kwh, P.CO2_G: energy.co2_g,
                     P.ENERGY_ESTIMATED: int(energy.estimated)})
    content[P.METRICS] = MetricRecord(node)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    shared = P.EvaluateInstruction.from_record(msg.content[P.CONFIG])
    content = RecordDict()
    for name, config in federation_configs(msg):
        mine = P.FederationEvaluate.from_record(config)
        net = _network(msg, name, shared, mine.tasks)
        data = building_data(shared, context)
        sums = TaskMetrics(net.tasks) if shared.task_metrics else None
        split = data.split(shared.split)
        losses, n = evaluate(net, split, shared.batch_size, pick_device(), precision=shared.precision, metrics=sums)
        constants = mine.constants
        floor = evaluate_constants(split, constants, "".join(constants), shared.batch_size) if constants else {}
        content[P.record_key(P.METRICS, name)] = MetricRecord(
            {P.NUM_EXAMPLES: n, **{P.loss_key(k): float(v) for k, v in losses.items()},
             **{P.constant_loss_key(k): float(v) for k, v in floor.items()},
             **(sums.to_record() if sums is not None else {})})
    return Message(content=content, reply_to=msg)


@app.query(P.INFO_QUERY)
def info(msg: Message, context: Context) -> Message:
    query = P.InfoQuery.from_record(msg.content[P.CONFIG])
    building = node_building(query, context)
    data = building_data(query, context, verify=True)
    sizes = data.sizes()
    labels = {}
    if query.label_histogram and sizes.get("train", 0) > 0:
        # Counts only: no label leaves the node. Empty bins are left out (a ConfigRecord list may not be empty).
        hist = histogram_of(data.split("train"), query.all_tasks)
        labels = {k: v for k, v in hist.to_record().items() if v}
    reply = ConfigRecord({P.BUILDING: building, P.HOST: host_id(),
                          **{P.size_key(k): int(v) for k, v in sizes.items()}, **labels})
    return Message(content=RecordDict({P.CONFIG: reply}), reply_to=msg)
