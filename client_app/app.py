"""ClientApp: one building's trainer. Converts records to and from the library, nothing more."""

from __future__ import annotations

import os

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app import protocol as P
from client_app.node import building_data, node_building
from mas_flower.energy import EnergyMeter, host_id
from mas_flower.models import build_model
from mas_flower.training import TrainConfig, evaluate, make_weighting, pick_device, train_local

app = ClientApp()


def cpu_threads() -> int | None:
    """Torch threads for CPU training: what the simulation engine gave this client (Ray sets
    OMP_NUM_THREADS to the actor's CPUs), so that clients sharing a machine do not oversubscribe it."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _network(msg: Message) -> tuple[torch.nn.Module, dict]:
    config = dict(msg.content[P.CONFIG])
    net = build_model(str(config["model"]), str(config["tasks"]), image_size=int(config["image-size"]))
    net.load_state_dict(msg.content[P.ARRAYS].to_torch_state_dict())
    return net, config


def _train_config(config: dict) -> TrainConfig:
    return TrainConfig(
        lr=float(config["lr"]), epochs=int(config["local-epochs"]), batch_size=int(config["batch-size"]),
        prox_mu=float(config["prox-mu"]), weighting=str(config["weighting"]),
        gradnorm_alpha=float(config["gradnorm-alpha"]), affinity_every=int(config["affinity-every"]),
        affinity_mode=str(config["affinity-mode"]),
        affinity_first_epoch_only=bool(config["affinity-first-epoch-only"]), seed=int(config["seed"]),
        num_threads=cpu_threads(), precision=str(config.get("precision", "auto")),
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    net, config = _network(msg)
    data = building_data(config, context)
    cfg = _train_config(config)
    meter = None
    if bool(config.get("measure-energy", False)):  # on its own machine: this node meters its training
        meter = EnergyMeter(country=str(config["energy-country"]) or None,
                            intensity_g_per_kwh=float(config["energy-intensity"]) or None)
        meter.start()
    # A learnt loss weighting (GradNorm) continues from this node's last round in this federation.
    weighting, key = make_weighting(cfg, net.tasks), f"weighting-{config['federation']}"
    if key in context.state.array_records:
        weighting.load_state_dict(context.state.array_records[key].to_torch_state_dict())
    result = train_local(net, data.split("train"), cfg, pick_device(), weighting=weighting)
    if weighting.state_dict():
        context.state.array_records[key] = ArrayRecord(weighting.state_dict())
    metrics: dict = {P.NUM_EXAMPLES: result.num_examples, P.TRAIN_SECONDS: result.seconds,
                     P.BF16: int(result.precision == "bf16")}
    if meter is not None:
        energy = meter.stop()
        metrics.update({P.ENERGY_KWH: energy.energy_kwh, P.CO2_G: energy.co2_g,
                        P.ENERGY_ESTIMATED: int(energy.estimated)})
    metrics.update({P.loss_key(k): float(v) for k, v in result.losses.items()})
    if result.affinity is not None:
        metrics[P.AFFINITY] = np.asarray(result.affinity, dtype=float).ravel().tolist()
        metrics[P.AFFINITY_COUNT] = result.affinity_count
    content = RecordDict({P.ARRAYS: ArrayRecord(net.state_dict()), P.METRICS: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_(msg: Message, context: Context) -> Message:
    net, config = _network(msg)
    data = building_data(config, context)
    losses, n = evaluate(net, data.split(str(config["split"])), int(config["batch-size"]), pick_device(),
                         precision=str(config.get("precision", "auto")))
    metrics: dict = {P.NUM_EXAMPLES: n, **{P.loss_key(k): float(v) for k, v in losses.items()}}
    return Message(content=RecordDict({P.METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.query(P.INFO_QUERY)
def info(msg: Message, context: Context) -> Message:
    config = dict(msg.content[P.CONFIG])
    building = node_building(config, context)
    sizes = building_data(config, context).sizes()
    reply = ConfigRecord({P.BUILDING: building, P.HOST: host_id(),
                          **{f"size-{k}": int(v) for k, v in sizes.items()}})
    return Message(content=RecordDict({P.CONFIG: reply}), reply_to=msg)
