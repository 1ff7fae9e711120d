"""Local SGD through torch's functional `torch.optim.sgd.sgd`, without `torch.optim.SGD`'s start-up cost.

Any `torch.optim.Optimizer` imports `torch._dynamo` the first time it is built (`add_param_group`,
`zero_grad` and `step` are wrapped for `torch.compile`): about 1.8 s per process on our CI machine, more
than a small network's whole local training. A deployed SuperNode runs every message in a fresh
`flwr-clientapp` process (docs/deployment.md, section "Cost of a deployed round"), so every train
message paid it.

`LocalSGD` keeps the momentum buffers itself and calls the very function `torch.optim.SGD.step`
calls, with the same arguments, so its updates are bit-identical to `torch.optim.SGD(params, lr,
momentum, weight_decay=...)` with the defaults dampening 0, no Nesterov, no maximise, foreach/fused
chosen by torch (`tests/test_local_sgd.py`). Parameters without a gradient are skipped, as there.
It has no closure, hooks, profiler label or `state_dict`: local training needs none of them (the
optimiser starts afresh every round, as in the reference code).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim.sgd import sgd


class LocalSGD:
    """SGD with momentum and L2 weight decay over `params`, as `torch.optim.SGD` computes it."""

    def __init__(self, params: Iterable[Tensor], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("LocalSGD got an empty parameter list")
        if not lr > 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"LocalSGD needs lr > 0, momentum >= 0, weight_decay >= 0; got lr={lr}, "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.momentum_buffers: dict[int, Tensor] = {}

    def zero_grad(self) -> None:
        """Drop every gradient (`set_to_none=True` in torch's terms)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        params = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in params]
        buffers = [self.momentum_buffers.get(id(p)) for p in params] if self.momentum else []
        sgd(params, grads, buffers, has_sparse_grad=any(g.is_sparse for g in grads),
            weight_decay=self.weight_decay, momentum=self.momentum, lr=self.lr, dampening=0.0,
            nesterov=False, maximize=False)
        if self.momentum:
            self.momentum_buffers.update((id(p), b) for p, b in zip(params, buffers, strict=True))
