"""Lookahead inter-task affinity, measured by clients during local training (docs/design.md, section
"Lookahead affinity").

For a batch X, encoder parameters θ_s, decoders θ_j, learning rate η and weight decay λ:

    θ_s|i  = θ_s − η (g_i + λ θ_s)                               (virtual step on task i alone)
    Z[i,j] = (1 − L_j(X; θ_s|i, θ_j) / L_j(X; θ_s, θ_j)) / η

Conventions (the choices the formula leaves open):
- g_i is the encoder gradient that back-propagation of L_i alone puts in `.grad`, i.e. with the
  network's 1/√n scaling of the gradient reaching the representation (as the reference's backward
  and the real training step have it). The virtual step is plain SGD: no momentum, no FedProx term.
  Weight decay applies to every trainable encoder parameter, as torch.optim.SGD does.
- Only the encoder moves; decoders, inputs and the (augmented) batch are the same before and after.
- Batch norm: the lookahead forward passes run in training mode, like the real step whose losses
  L_j(θ_s) they are compared with, so both use the batch's statistics. Every buffer they touch
  (running mean/var, num_batches_tracked) is restored bit for bit afterwards, as are the encoder
  weights and the global RNG state, so measuring never changes the training trajectory.
- L_j(θ_s) is taken from the real training step's forward pass (no extra forward) in strict
  float32 training. The lookahead is always float32: Z is a relative loss change of about η·|Z| ≈ 5e-5 per
  step, the size of bf16 rounding in a mean loss, so bf16 losses turn it into noise (docs/design.md,
  section "Where we differ from the reference code");
  bf16 gradients are not enough either (tiny network at 32 px, at initialisation: median |ΔZ| 27-77 %
  of median |Z|, 83-92 % of signs kept), and TF32 (cuDNN's default for float32 convolutions on
  recent GPUs) rounds within a factor of ten of it. Under bf16 training, or float32 with TF32 on a
  GPU, the trainer therefore measures a lookahead batch with `batch_affinity` (its own strict
  float32 forward, gradients and losses, `strict_fp32`) before the training step. A task whose
  L_j(θ_s) is 0 gets Z[:, j] = 0 (nothing to improve).

Cost per lookahead batch (exact): n backward passes through one decoder each (∂L_i/∂rep) and n
vector-Jacobian products through the encoder for the per-task gradients, all on the training step's
own forward graph, then n no-grad forward passes of the whole network; under bf16 training one more
float32 forward pass with its graph (the training step's bf16 graph cannot be reused).

First-order mode (`mode="first_order"`): a first-order Taylor expansion of L_j around θ_s gives
    L_j(θ_s − η d_i) = L_j(θ_s) − η ⟨∇L_j, d_i⟩ + O(η²),  d_i = g_i + λ θ_s,
    so Z[i,j] = ⟨g_i + λ θ_s, ∇L_j⟩ / L_j(θ_s) + O(η),
where ∇L_j is the true derivative of L_j with respect to θ_s, i.e. g_j divided by the network's
gradient scale s = 1/√n (`net.grad_scale`). It needs the per-task gradients only: no extra forward
passes, and it is the limit of the exact value as η → 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from mas_flower.settings import AFFINITY_MODES

LossFn = Callable[[Mapping[str, Tensor], Mapping[str, Tensor], str], Mapping[str, Tensor]]


def is_lookahead_batch(batch_index: int, epoch: int, every: int, first_epoch_only: bool = False) -> bool:
    """Whether the batch measures affinity.

    Batches are numbered 0, 1, 2, ... from the start of the local training, continuing across epochs;
    batch b measures when `every` > 0 and b % every == 0 (so the first batch always does), and,
    with `first_epoch_only`, only while `epoch` (0-based) is 0.
    """
    if every <= 0 or (first_epoch_only and epoch > 0):
        return False
    return batch_index % every == 0


@dataclass
class AffinityAccumulator:
    """Running mean of the per-batch affinity matrices of one local training, with the per-entry sum
    of squares (the server's standard error of the affinity: `mas_flower.splitting.stability`)."""

    tasks: str
    total: np.ndarray = field(init=False)
    squares: np.ndarray = field(init=False)
    count: int = 0
    #: Batches whose matrix had a non-finite entry (diverged losses): left out of the mean.
    skipped: int = 0

    def __post_init__(self) -> None:
        self.total = np.zeros((len(self.tasks), len(self.tasks)))
        self.squares = np.zeros_like(self.total)

    def add(self, z: np.ndarray) -> None:
        if z.shape != self.total.shape:
            raise ValueError(f"affinity matrix of shape {z.shape} for tasks {self.tasks!r}")
        if not np.all(np.isfinite(z)):
            self.skipped += 1
            warnings.warn("lookahead affinity: non-finite losses on a batch; batch left out", stacklevel=2)
            return
        self.total += z
        self.squares += z * z
        self.count += 1

    def mean(self) -> np.ndarray | None:
        return self.total / self.count if self.count else None


def _default_loss_fn() -> LossFn:
    from mas_flower.losses import task_losses

    return task_losses


def encoder_params(net: nn.Module) -> list[nn.Parameter]:
    """The shared, trainable encoder parameters (the ones the lookahead steps)."""
    return [p for p in net.encoder.parameters() if p.requires_grad]


def task_encoder_gradients(rep: Tensor, losses: Mapping[str, Tensor], tasks: str,
                           params: Sequence[Tensor], *, batched: bool = False) -> list[list[Tensor | None]]:
    """Per-task encoder gradients from one shared forward pass; the graph is kept for the real backward.

    First ∂L_i/∂rep for every task (each through its own decoder only), then one vector-Jacobian
    product through the encoder per task. `batched` does the n products as one vmapped backward
    (`is_grads_batched`); on CPU that measured 1.7-2.7x slower than the loop (tiny and xception at
    64 px), so it is off by default. Entry [i][k] is task i's gradient of params[k] (None where the
    parameter does not influence the representation).
    """
    rep_grads = [torch.autograd.grad(losses[c], rep, retain_graph=True)[0] for c in tasks]
    if batched:
        try:
            stacked = torch.autograd.grad(rep, list(params), grad_outputs=torch.stack(rep_grads),
                                          retain_graph=True, is_grads_batched=True, allow_unused=True)
            return [[None if g is None else g[i] for g in stacked] for i in range(len(tasks))]
        except RuntimeError:  # an op without a batching rule: fall back to the loop
            pass
    return [list(torch.autograd.grad(rep, list(params), grad_outputs=g, retain_graph=True, allow_unused=True))
            for g in rep_grads]


@contextmanager
def preserved_state(net: nn.Module) -> Iterator[None]:
    """Restore every buffer of `net` (batch-norm statistics) and the global RNG state on exit."""
    buffers = [(b, b.detach().clone()) for b in net.buffers()]
    devices = sorted({b.device.index or 0 for b in net.buffers() if b.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        try:
            yield
        finally:
            for b, saved in buffers:
                b.copy_(saved)


def _as_float(losses: Mapping[str, Tensor], tasks: str) -> np.ndarray:
    return np.array([float(losses[c].detach()) for c in tasks], dtype=np.float64)


def _ratio_affinity(before: np.ndarray, after: np.ndarray, lr: float) -> np.ndarray:
    """Z[i,j] = (1 − after[i,j] / before[j]) / lr, with Z[:, j] = 0 where before[j] == 0."""
    safe = np.where(before == 0.0, 1.0, before)
    z = (1.0 - after / safe[None, :]) / lr
    z[:, before == 0.0] = 0.0
    return z


def tf32_allowed(device: torch.device | str) -> bool:
    """Whether float32 convolutions or matmuls on `device` may round to TF32 (10-bit mantissa, the
    default for cuDNN convolutions on Ampere and later GPUs)."""
    return torch.device(device).type == "cuda" and (torch.backends.cudnn.allow_tf32
                                                    or torch.backends.cuda.matmul.allow_tf32)


@contextmanager
def strict_fp32() -> Iterator[None]:
    """Float32 without TF32 rounding inside the block: TF32's rounding error is within a factor of
    ten of the loss changes the lookahead measures, so its passes turn TF32 off."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _fp32_losses(net: nn.Module, batch: Mapping[str, Tensor], loss_fn: LossFn) -> np.ndarray:
    """The task losses of one forward pass in float32 (no TF32), even inside an autocast region."""
    device_type = batch["rgb"].device.type
    with torch.autocast(device_type=device_type, enabled=False), strict_fp32():
        out = net.decode(net.encode(batch["rgb"]))
        return _as_float(loss_fn(out, batch, net.tasks), net.tasks)


def lookahead_from_gradients(net: nn.Module, batch: Mapping[str, Tensor], base_losses: Mapping[str, Tensor] | None,
                             grads: Sequence[Sequence[Tensor | None]], *, lr: float, weight_decay: float,
                             mode: str = "exact", loss_fn: LossFn | None = None) -> np.ndarray:
    """The n × n affinity of one batch from the per-task encoder gradients (`task_encoder_gradients`).

    `base_losses` are L_j(θ_s) from the same float32 forward pass the gradients came from, or None
    to evaluate them here in float32 (when the gradients came from a bf16 pass; see the module
    docstring for why the losses of the ratio must be float32). Exact mode steps the encoder in place
    and runs its forward passes in float32 in `net`'s current mode; it must run after the training
    step's backward (which needs the unmodified weights) and before its optimiser step. Weights,
    buffers and RNG state are restored exactly.
    """
    if mode not in AFFINITY_MODES:
        raise ValueError(f"affinity mode {mode!r} must be one of {AFFINITY_MODES}")
    if lr <= 0:
        raise ValueError(f"lookahead affinity needs a positive learning rate, got lr={lr}")
    tasks: str = net.tasks
    params = encoder_params(net)
    loss_fn = loss_fn or _default_loss_fn()
    if base_losses is not None:
        before = _as_float(base_losses, tasks)
    else:
        with preserved_state(net):
            before = _fp32_losses(net, batch, loss_fn)
    if mode == "first_order":
        return _first_order(params, grads, before, weight_decay, float(net.grad_scale))
    after = np.zeros((len(tasks), len(tasks)))
    saved = [p.detach().clone() for p in params]
    with preserved_state(net):
        try:
            for i in range(len(tasks)):
                for p, g in zip(params, grads[i], strict=True):
                    if g is not None:  # as torch.optim.SGD: no gradient, no step (no decay either)
                        p.add_(g.add(p, alpha=weight_decay), alpha=-lr)
                after[i] = _fp32_losses(net, batch, loss_fn)
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
        finally:
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    return _ratio_affinity(before, after, lr)


def _first_order(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor | None]], before: np.ndarray,
                 weight_decay: float, grad_scale: float) -> np.ndarray:
    """Z[i,j] = ⟨g_i + λθ, g_j / s⟩ / L_j (module docstring), accumulated per parameter in float64."""
    n = len(grads)
    dots = torch.zeros(n, n, dtype=torch.float64, device=params[0].device if params else "cpu")
    for k, p in enumerate(params):
        present = [i for i in range(n) if grads[i][k] is not None]
        if not present:
            continue
        g = torch.stack([grads[i][k].reshape(-1).double() for i in present])  # (m, P_k)
        theta = p.detach().reshape(-1).double()
        block = g @ g.T  # ⟨g_i, g_j⟩
        decay = (g @ theta) * weight_decay  # λ⟨θ, g_j⟩, added to every row i that steps p
        idx = torch.tensor(present, device=dots.device)
        dots[idx[:, None], idx[None, :]] += block + decay[None, :]
    z = dots.cpu().numpy() / grad_scale
    safe = np.where(before == 0.0, 1.0, before)
    z = z / safe[None, :]
    z[:, before == 0.0] = 0.0
    return z


def batch_affinity(net: nn.Module, batch: Mapping[str, Tensor], *, lr: float, weight_decay: float,
                   mode: str = "exact", loss_fn: LossFn | None = None, bf16_gradients: bool = False
                   ) -> np.ndarray:
    """The affinity of one batch on its own (its own forward pass); `net` is left exactly as it was.

    Runs in `net`'s current mode (use training mode to match what clients measure during training),
    in float32 even inside an autocast region, with TF32 off (`strict_fp32`). `bf16_gradients`
    takes the per-task gradients from a bf16-autocast forward pass instead (the losses of the ratio
    stay float32): a cheaper variant that benchmarks compare with; training never uses it.
    """
    loss_fn = loss_fn or _default_loss_fn()
    params = encoder_params(net)
    autocast = torch.autocast(device_type=batch["rgb"].device.type, dtype=torch.bfloat16, enabled=bf16_gradients)
    with preserved_state(net), torch.enable_grad(), strict_fp32():
        with autocast:
            rep = net.encode(batch["rgb"])
            out = net.decode(rep)
            losses = loss_fn(out, batch, net.tasks)
        grads = task_encoder_gradients(rep, losses, net.tasks, params)
        del out, rep
        base = None if bf16_gradients else {c: v.detach() for c, v in losses.items()}
        return lookahead_from_gradients(net, batch, base, grads, lr=lr, weight_decay=weight_decay, mode=mode,
                                        loss_fn=loss_fn)

