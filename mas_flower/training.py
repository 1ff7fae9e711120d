"""Local training and evaluation of a multi-task network on one client's data (plain PyTorch, no Flower).

One call of `train_local` is one client's work in one round: E epochs of SGD (momentum, weight
decay) at the learning rate the server chose for the round, optionally with FedProx's proximal term,
a loss weighting (`mas_flower.weighting`) and the lookahead affinity (`mas_flower.affinity`).
Shuffling and flip augmentation draw from a generator seeded by `cfg.seed`, never from the global
RNG, so the same seed gives the same weights on CPU and measuring affinity changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mas_flower.affinity import (
    AffinityAccumulator,
    LossFn,
    batch_affinity,
    encoder_params,
    is_lookahead_batch,
    lookahead_from_gradients,
    task_encoder_gradients,
    tf32_allowed,
)
from mas_flower.local_sgd import LocalSGD
from mas_flower.metrics import TaskMetrics
from mas_flower.settings import AFFINITY_MODES, PRECISIONS
from mas_flower.weighting import Weighting, get_weighting, list_weightings


class SplitData(Protocol):
    """What training needs from a data split (`mas_flower.data`'s SplitData has it)."""

    def __len__(self) -> int: ...

    def device_batches(self, device: torch.device | str, batch_size: int, *, shuffle: bool = False,
                       augment: bool = False, generator: torch.Generator | None = None, drop_last: bool = False
                       ) -> Iterator[dict[str, Tensor]]: ...


@dataclass
class TrainConfig:
    """One client's local training in one round (the server sets `lr` per round)."""

    lr: float
    epochs: int = 1
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 1e-4
    #: FedProx μ: adds μ/2·‖w − w_received‖² over trainable parameters (not batch-norm buffers).
    prox_mu: float = 0.0
    weighting: str = "equal"
    gradnorm_alpha: float = 1.5
    #: ρ: measure the lookahead affinity on every ρ-th batch (0 = off); see `is_lookahead_batch`.
    affinity_every: int = 0
    affinity_mode: str = "exact"
    affinity_first_epoch_only: bool = False
    seed: int = 0
    augment: bool = True
    #: "auto" (bf16 autocast on CUDA devices that support it, else float32), "fp32" or "bf16"
    #: (autocast on any device, the CPU included); see `resolve_precision`.
    precision: str = "auto"
    #: CPU threads while training (None: leave torch's setting alone). Set it when several clients
    #: share one machine, so that together they do not oversubscribe the cores.
    num_threads: int | None = None

    def validate(self) -> None:
        problems = []
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be positive")
        if self.epochs < 1 or self.batch_size < 1:
            problems.append(f"epochs={self.epochs} and batch_size={self.batch_size} must be at least 1")
        if self.momentum < 0 or self.weight_decay < 0 or self.prox_mu < 0:
            problems.append("momentum, weight_decay and prox_mu must be non-negative")
        if self.weighting not in list_weightings():
            problems.append(f"weighting={self.weighting!r} is not one of {', '.join(list_weightings())}")
        if self.affinity_every < 0:
            problems.append(f"affinity_every={self.affinity_every} must be >= 0 (0 = off)")
        if self.affinity_mode not in AFFINITY_MODES:
            problems.append(f"affinity_mode={self.affinity_mode!r} must be one of {AFFINITY_MODES}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"num_threads={self.num_threads} must be at least 1")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))


@dataclass
class TrainResult:
    #: Example-weighted mean per-task training loss over every batch of the run.
    losses: dict[str, float]
    #: Training samples in the split (the FedAvg weight).
    num_examples: int
    #: Wall seconds of the training loop itself (every batch, the lookahead included).
    seconds: float
    #: One-time costs before the first batch: moving the network, building the optimiser.
    setup_seconds: float = 0.0
    #: n × n mean lookahead affinity, Z[i, j] = effect of task i's step on task j; None if not measured.
    affinity: np.ndarray | None = None
    affinity_count: int = 0
    #: Per-entry sum of squares of the lookahead batches' matrices (n × n; None if not measured).
    affinity_squares: np.ndarray | None = None
    #: Samples in the lookahead batches (for FLOP accounting: `mas_flower.flops`).
    affinity_samples: int = 0
    #: Part of `seconds` spent measuring affinity (beyond the training step itself).
    affinity_seconds: float = 0.0
    steps: int = 0
    #: Task weights at the end (all 1 for equal weighting).
    task_weights: dict[str, float] = field(default_factory=dict)
    #: The precision the training ran in: "bf16" or "fp32" (`resolve_precision`).
    precision: str = "fp32"


def pick_device(prefer: str = "auto") -> torch.device:
    """`"auto"`: the first CUDA device if there is one, else the CPU; otherwise the named device, checked."""
    if prefer == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {prefer!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {prefer!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision a run-config `precision` means on `device`: "bf16" or "fp32".

    "auto" is bf16 on CUDA devices that support it and fp32 elsewhere; "bf16" autocasts on any device
    (CPU autocast included, so the mixed-precision path runs in CI). Raises ValueError for an unknown
    value or bf16 on a CUDA device without bf16 support.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    # Native bf16 only (Ampere and later): emulated bf16 on older GPUs is slower than float32.
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision='bf16' but {torch.cuda.get_device_name(device)} has no bf16 support")
    return precision


def _autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast for a resolved "bf16"; a no-op context for "fp32"."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _prepare(net: nn.Module, device: torch.device) -> tuple[torch.device, bool]:
    """Move `net` to `device` (channels-last on CUDA); return where it was and whether it trained."""
    params = list(net.parameters())
    origin = params[0].device if params else torch.device("cpu")
    was_training = net.training
    if device.type == "cuda":
        net.to(device, memory_format=torch.channels_last)
        # Process-wide (every network of this process benefits): fixed image size, let cuDNN pick the
        # fastest kernels.
        torch.backends.cudnn.benchmark = True
    else:
        net.to(device)
    return origin, was_training


def _restore(net: nn.Module, origin: torch.device, was_training: bool) -> None:
    net.to(origin, memory_format=torch.contiguous_format)
    net.train(was_training)


def _loss_fn(loss_fn: LossFn | None) -> LossFn:
    if loss_fn is not None:
        return loss_fn
    from mas_flower.losses import task_losses

    return task_losses


def make_weighting(cfg: TrainConfig, tasks: str) -> Weighting:
    """The loss weighting `cfg` names, for `tasks`, with its options."""
    options = {"alpha": cfg.gradnorm_alpha} if cfg.weighting == "gradnorm" else {}
    return get_weighting(cfg.weighting, tasks, **options)


class _Lookahead:
    """The affinity measurement of one local training: which batches measure, by which of the two paths,
    and what it costs (seconds and samples, timed apart from training).

    Path 1, the step's own graph (strict float32 steps): the per-task encoder gradients come from the
    training step's forward pass (`gradients`) and the lookahead runs after its backward, before the
    optimiser step (`after_backward`). Path 2 (a bf16 or TF32 step): the batch is measured by its own
    float32 passes before the step (`separately`). Either way weights, gradients, buffers and RNG are
    left exactly as they were (`mas_flower.affinity`).
    """

    def __init__(self, net: nn.Module, cfg: TrainConfig, loss_fn: LossFn, shared_graph: bool) -> None:
        self.net, self.cfg, self.loss_fn, self.shared_graph = net, cfg, loss_fn, shared_graph
        self.encoder = encoder_params(net)
        self.accumulator = AffinityAccumulator(net.tasks)
        self.seconds = 0.0
        self.samples = 0

    @contextmanager
    def _timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - t0

    def separately(self, batch: dict[str, Tensor], step: int, epoch: int) -> bool:
        """Measure `batch` now by its own passes if it is a lookahead batch of path 2; return whether it
        is a lookahead batch of path 1 (to be measured inside the coming training step)."""
        cfg = self.cfg
        if not is_lookahead_batch(step, epoch, cfg.affinity_every, cfg.affinity_first_epoch_only):
            return False
        if self.shared_graph:
            return True
        with self._timed():
            self.accumulator.add(batch_affinity(self.net, batch, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                mode=cfg.affinity_mode, loss_fn=self.loss_fn))
        self.samples += batch["rgb"].shape[0]
        return False

    def gradients(self, rep: Tensor, losses: dict[str, Tensor]) -> dict[str, list[Tensor]]:
        """Path 1, before the step's backward: each task's encoder gradient from the step's graph."""
        with self._timed():
            return task_encoder_gradients(rep, losses, self.net.tasks, self.encoder)

    def after_backward(self, batch: dict[str, Tensor], losses: dict[str, Tensor],
                       grads: dict[str, list[Tensor]]) -> None:
        """Path 1, after the step's backward and before its optimiser step."""
        cfg = self.cfg
        with self._timed():
            self.accumulator.add(lookahead_from_gradients(
                self.net, batch, {c: v.detach() for c, v in losses.items()}, grads, lr=cfg.lr,
                weight_decay=cfg.weight_decay, mode=cfg.affinity_mode, loss_fn=self.loss_fn))
        self.samples += batch["rgb"].shape[0]

    def result(self) -> dict[str, Any]:
        """The `TrainResult` fields of the measurement."""
        acc = self.accumulator
        return {"affinity": acc.mean(), "affinity_count": acc.count, "affinity_seconds": self.seconds,
                "affinity_squares": acc.squares.copy() if acc.count else None, "affinity_samples": self.samples}


class _LossTally:
    """Example-weighted running sums of per-task losses, kept on the device (float64) so that nothing
    waits for it until `means()`."""

    def __init__(self, tasks: str, device: torch.device) -> None:
        self.tasks = tasks
        self.sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
        self.seen = 0

    def add(self, losses: dict[str, Tensor], size: int) -> None:
        self.sums += torch.stack([losses[c].detach().double() for c in self.tasks]) * size
        self.seen += size

    def means(self) -> dict[str, float]:
        """Task -> mean loss per example (0 for no example); waits for the device."""
        return dict(zip(self.tasks, (self.sums / max(self.seen, 1)).tolist(), strict=True))


def _set_up(data: SplitData, device: torch.device | str, loss_fn: LossFn | None, precision: str,
            empty: str) -> tuple[torch.device, LossFn, str]:
    """What training and evaluation both start with: a non-empty split (else ValueError(`empty`)), the
    device, the loss function and the resolved precision."""
    if len(data) == 0:
        raise ValueError(empty)
    device = torch.device(device)
    return device, _loss_fn(loss_fn), resolve_precision(precision, device)


def train_local(net: nn.Module, data: SplitData, cfg: TrainConfig, device: torch.device | str = "cpu", *,
                weighting: Weighting | None = None, loss_fn: LossFn | None = None) -> TrainResult:
    """Train `net` in place for `cfg.epochs` epochs on `data`; the network ends on the device it came on.

    `weighting` may carry state across calls (e.g. GradNorm's weights); by default a fresh
    `cfg.weighting` is made. Lookahead batches measure the inter-task affinity (`_Lookahead`).
    Raises ValueError for an invalid `cfg` or an empty split.
    """
    cfg.validate()
    device, loss_fn, precision = _set_up(data, device, loss_fn, cfg.precision,
                                         "train_local: the training split is empty")
    tasks: str = net.tasks
    if weighting is None:
        weighting = make_weighting(cfg, tasks)
    setup_start = time.perf_counter()
    origin, was_training = _prepare(net, device)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = LocalSGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    anchor = [p.detach().clone() for p in params] if cfg.prox_mu > 0 else None
    generator = torch.Generator().manual_seed(cfg.seed)
    # The lookahead is strict float32 (mas_flower.affinity): it shares the training step's graph
    # only when that step is strict float32 too (not bf16, not TF32 convolutions on a GPU).
    lookahead = _Lookahead(net, cfg, loss_fn, shared_graph=precision == "fp32" and not tf32_allowed(device))
    tally = _LossTally(tasks, device)
    steps = 0
    # One-time costs (moving the network, the first autocast or CUDA context) are not training:
    # timed apart from it. (torch.optim's first optimiser in a process would add ~1.8 s here.)
    start = time.perf_counter()
    setup_seconds = start - setup_start
    with _threads(cfg.num_threads):
        for epoch in range(cfg.epochs):
            for batch in data.device_batches(device, cfg.batch_size, shuffle=True, augment=cfg.augment,
                                             generator=generator, drop_last=False):
                in_step = lookahead.separately(batch, steps, epoch)
                with _autocast(device, precision):
                    rep = net.encode(batch["rgb"])
                    losses = loss_fn(net.decode(rep), batch, tasks)
                grads = lookahead.gradients(rep, losses) if in_step else None
                optimizer.zero_grad()
                weighting.backward(losses, net, rep=rep)
                if anchor is not None:
                    _add_prox_gradient(params, anchor, cfg.prox_mu)
                if grads is not None:
                    lookahead.after_backward(batch, losses, grads)
                    del grads
                optimizer.step()
                weighting.step()
                tally.add(losses, batch["rgb"].shape[0])
                steps += 1
    mean_losses = tally.means()  # waits for the device
    seconds = time.perf_counter() - start
    _restore(net, origin, was_training)
    return TrainResult(losses=mean_losses, num_examples=len(data), seconds=seconds, setup_seconds=setup_seconds,
                       steps=steps, task_weights=weighting.weights, precision=precision, **lookahead.result())


def _add_prox_gradient(params: list[Tensor], anchor: list[Tensor], mu: float) -> None:
    """∇ of μ/2·‖w − w₀‖² is μ(w − w₀): added straight to `.grad` (no graph needed)."""
    with torch.no_grad():
        for p, a in zip(params, anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p - a, alpha=mu)


@torch.no_grad()
def evaluate(net: nn.Module, data: SplitData, batch_size: int = 64, device: torch.device | str = "cpu", *,
             loss_fn: LossFn | None = None, precision: str = "auto", metrics: TaskMetrics | None = None
             ) -> tuple[dict[str, float], int]:
    """Example-weighted mean per-task loss over `data` in eval mode (running BN statistics), and the count.

    Each batch's loss (the training definition, `mas_flower.losses`) is weighted by its size;
    `precision` as in `TrainConfig` (losses are float32 either way). `metrics`, when given, is
    updated with every batch's task metrics (`mas_flower.metrics`: mIoU, depth error, ...).
    """
    device, loss_fn, precision = _set_up(data, device, loss_fn, precision, "evaluate: the split is empty")
    tasks: str = net.tasks
    origin, was_training = _prepare(net, device)
    net.eval()
    tally = _LossTally(tasks, device)
    for batch in data.device_batches(device, batch_size, shuffle=False, augment=False):
        with _autocast(device, precision):
            outputs = net(batch["rgb"])
            losses = loss_fn(outputs, batch, tasks)
        if metrics is not None:
            metrics.update(outputs, batch)
        tally.add(losses, batch["rgb"].shape[0])
    _restore(net, origin, was_training)
    if tally.seen != len(data):
        raise ValueError(f"evaluate: the split has {len(data)} samples but its batches gave {tally.seen}")
    return tally.means(), tally.seen
