"""GradNorm (Chen et al., ICML 2018): learn task weights that balance gradient norms at a shared layer.

Each step, with task weights w_i and losses L_i:
  G_i = ||∇_W (w_i L_i)|| at the shared layer W,  Ḡ = mean_i G_i,
  r_i = (L_i / L_i(0)) / mean_k (L_k / L_k(0))   (relative inverse training rate; L(0) = first step),
  L_grad = Σ_i |G_i − Ḡ · r_i^α|                 (Ḡ · r_i^α held constant),
the network trains on Σ_i w_i L_i while w gets ∂L_grad/∂w from its own optimiser (Adam), and after
every step the weights are clipped to stay positive and renormalised to sum to n, as in Standley's and
TAG's implementations. Only the weights' gradient uses L_grad; the network never sees it.

W is the encoder's last parameterised layer (the last encoder parameter with at least two
dimensions: a convolution or linear weight), or with `shared="rep"` the shared representation
(cheaper; then the trainer must pass `rep`).

How this differs from the reference code (the MAS authors' released code, which the paper's
"GradNorm" rows come from; docs/design.md, section "Where we differ from the reference code"): there the weights
never change. Its update takes a `statistics.mean` over a list of tensors, which raises, and a bare
`except: pass` around the update swallows the error, so every step trains on the unweighted sum of
the losses (with the network's 1/√n gradient scale at the representation, and fp16 representation
gradients). Its "GradNorm" is therefore equal weighting. Ours is Chen et al.'s algorithm as above:
the weights do move (Adam on w, L(0) taken at the first step this object sees, w also scaling each
decoder's gradient through Σ w_i L_i). Our GradNorm rows are therefore not expected to match the
paper's; our `fedavg` (equal weighting) is the closest to the paper's GradNorm row.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mas_flower.weighting.base import Weighting, register_weighting

#: Weights are clipped to at least this before renormalising, so they stay strictly positive.
MIN_WEIGHT = 1e-3


def last_shared_weight(net: nn.Module) -> nn.Parameter:
    """The encoder's last parameter with ≥ 2 dimensions (its last convolution or linear layer)."""
    encoder = getattr(net, "encoder", None)
    if encoder is None:
        raise ValueError("GradNorm needs a network with a shared `encoder` module")
    candidates = [p for p in encoder.parameters() if p.requires_grad and p.ndim >= 2]
    if not candidates:
        raise ValueError("GradNorm: the encoder has no trainable convolution or linear weight")
    return candidates[-1]


@register_weighting("gradnorm")
class GradNorm(Weighting):
    def __init__(self, tasks: str, alpha: float = 1.5, lr: float = 0.025, shared: str = "last_layer") -> None:
        super().__init__(tasks)
        if alpha < 0:
            raise ValueError(f"GradNorm alpha={alpha} must be non-negative")
        if shared not in ("last_layer", "rep"):
            raise ValueError(f"GradNorm shared={shared!r} must be 'last_layer' or 'rep'")
        self.alpha = alpha
        self.lr = lr
        self.shared = shared
        self.w: Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        #: L_i(0): the task losses at the first step this object saw.
        self.initial: Tensor | None = None

    def _ensure_state(self, device: torch.device) -> Tensor:
        if self.w is None:
            self.w = torch.ones(len(self.tasks), device=device, requires_grad=True)
            self.optimizer = torch.optim.Adam([self.w], lr=self.lr)
        return self.w

    def backward(self, losses: Mapping[str, Tensor], net: nn.Module, rep: Tensor | None = None) -> Tensor:
        ordered = self._ordered(losses)
        task_losses = torch.stack(ordered)
        w = self._ensure_state(task_losses.device)
        if self.shared == "rep":
            if rep is None:
                raise ValueError("GradNorm(shared='rep') needs the shared representation `rep`")
            layer = rep
        else:
            layer = last_shared_weight(net)
        # Each task's gradient from its own loss tensor, not from `task_losses[i]`: through the stack,
        # autograd would also run every other decoder's backward (with zero gradients), n times the work.
        norms = torch.stack([
            torch.autograd.grad(loss, layer, retain_graph=True)[0].float().norm() for loss in ordered
        ])
        detached = task_losses.detach()
        if self.initial is None:
            self.initial = detached.clone()
        ratio = detached / self.initial
        relative = ratio / ratio.mean()
        grad_norms = w * norms  # ||∇_W (w_i L_i)|| = w_i ||∇_W L_i|| (w_i > 0)
        target = (grad_norms.mean() * relative**self.alpha).detach()
        gn_loss = (grad_norms - target).abs().sum()
        w.grad = torch.autograd.grad(gn_loss, w)[0]
        total = (w.detach() * task_losses).sum()
        total.backward()
        return total.detach()

    def step(self) -> None:
        if self.w is None or self.optimizer is None:
            return
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.w.clamp_(min=MIN_WEIGHT)
            self.w.mul_(len(self.tasks) / self.w.sum())

    def state_dict(self) -> dict[str, Tensor]:
        if self.w is None or self.initial is None or self.optimizer is None:
            return {}
        adam = self.optimizer.state.get(self.w, {})
        return {"w": self.w.detach().clone(), "initial": self.initial.clone(),
                **{f"adam.{k}": torch.as_tensor(v).detach().clone() for k, v in adam.items()}}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if not state:
            return
        if tuple(state["w"].shape) != (len(self.tasks),):
            raise ValueError(f"GradNorm state for {len(state['w'])} tasks, this network has {len(self.tasks)}")
        self.w = state["w"].detach().clone().requires_grad_(True)
        self.initial = state["initial"].detach().clone()
        self.optimizer = torch.optim.Adam([self.w], lr=self.lr)
        adam = {k.removeprefix("adam."): v.clone() for k, v in state.items() if k.startswith("adam.")}
        if adam:
            self.optimizer.state[self.w] = adam

    @property
    def weights(self) -> dict[str, float]:
        if self.w is None:
            return super().weights
        return {c: float(v) for c, v in zip(self.tasks, self.w.detach().cpu().tolist(), strict=True)}
