"""The multi-task network container and cutting/merging sub-networks by parameter name.

Every architecture is a shared encoder plus one decoder per task letter. Parameters are named
`encoder.*` and `decoders.<letter>.*`, so a network for a subset of the tasks (a MAS group) is cut
from a larger network's state dict by name alone, and written back the same way. Batch-norm
buffers (running mean/var, num_batches_tracked) live under the same prefixes and travel with them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mas_flower.tasks import Task, parse_tasks

ENCODER_PREFIX = "encoder."
DECODERS_PREFIX = "decoders."


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        # A copy, not a view: a decoder that wrote into its input in place would otherwise corrupt
        # the representation every other decoder reads. The representation is small.
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """`x` unchanged, with its gradient multiplied by `scale` on the way back."""
    return _ScaleGrad.apply(x, scale)


class MultiTaskNet(nn.Module):
    """Shared encoder + one decoder per task letter; outputs a dict letter -> (B, C, H, W) at input size.

    The gradient reaching the shared representation from the decoders is scaled by 1/sqrt(len(tasks))
    (Standley et al.'s multi-task Xception; docs/design.md, section "The multi-task network") so that the
    encoder's step size does not grow with the number of tasks. The scale is applied in `decode`, always
    with the number of tasks in *this network* (not the number of letters decoded), so `decode(encode(x))`
    equals `forward(x)` in value and gradient, and the encoder gradients of `decode(rep, letter)` for each
    letter separately sum to the gradient of the full network.
    """

    def __init__(self, tasks: str, encoder: nn.Module, decoders: Mapping[str, nn.Module], *,
                 model_name: str, stride: int, image_size: int | None = None) -> None:
        super().__init__()
        parse_tasks(tasks)
        if list(decoders) != list(tasks):
            raise ValueError(f"decoders {''.join(decoders)!r} do not match tasks {tasks!r}")
        self.tasks = tasks
        self.model_name = model_name
        self.stride = stride
        self.image_size = image_size
        self.encoder = encoder
        self.decoders = nn.ModuleDict(dict(decoders))

    @property
    def grad_scale(self) -> float:
        return 1.0 / math.sqrt(len(self.tasks))

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.model_name}: expected images (B, 3, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"{self.model_name}: image size {h}x{w} is not a multiple of the model's "
                             f"total stride {self.stride}")

    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] to the shared representation."""
        self._check_input(x)
        return self.encoder(x)

    def decode(self, rep: Tensor, letters: str | None = None) -> dict[str, Tensor]:
        """The representation to outputs for `letters` (default: all tasks), gradient-scaled."""
        letters = self.tasks if letters is None else letters
        unknown = [c for c in letters if c not in self.decoders]
        if unknown:
            raise KeyError(f"task(s) {''.join(unknown)!r} not in this network (tasks {self.tasks!r})")
        if torch.is_grad_enabled() and rep.requires_grad:
            rep = scale_grad(rep, self.grad_scale)
        return {c: self.decoders[c](rep) for c in letters}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x))


def seeded_build(seed: int | None, part: str, make: Callable[[], nn.Module]) -> nn.Module:
    """Build `make()` under a seed derived from (seed, part), leaving the global RNG untouched.

    Seeding the encoder and each decoder separately means a network for "dk" built with seed s has
    exactly the encoder and d/k decoders of a network for "sdnkt" built with seed s (baselines that
    train groups "from scratch" start from the same weights as the all-in-one network).
    With `seed=None` the global RNG is used as usual.
    """
    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{seed}/{part}".encode()))
        return make()


def assemble(name: str, tasks: str, *, stride: int, encoder: Callable[[], nn.Module],
             decoder: Callable[[Task], nn.Module], seed: int | None = None) -> MultiTaskNet:
    """A MultiTaskNet from an encoder factory and a per-task decoder factory (used by every model)."""
    enc = seeded_build(seed, "encoder", encoder)
    decs = {t.letter: seeded_build(seed, f"decoder-{t.letter}", lambda t=t: decoder(t))
            for t in parse_tasks(tasks)}
    return MultiTaskNet(tasks, enc, decs, model_name=name, stride=stride)


def _decoder_letter(key: str) -> str | None:
    if not key.startswith(DECODERS_PREFIX):
        return None
    return key[len(DECODERS_PREFIX):].split(".", 1)[0]


def state_tasks(state: Mapping[str, Tensor]) -> str:
    """The task letters that have a decoder in `state`, in the order they first appear."""
    letters: list[str] = []
    for key in state:
        c = _decoder_letter(key)
        if c is not None and c not in letters:
            letters.append(c)
    return "".join(letters)


def subnetwork_state(state: Mapping[str, Tensor], tasks: str, *, strict: bool = True) -> dict[str, Tensor]:
    """The entries `encoder.*` and `decoders.<letter>.*` for the letters in `tasks`, by name.

    Values are the same tensor objects (not copies); `load_state_dict` copies them. With `strict`,
    a letter with no decoder in `state`, or a state with no encoder, raises a ValueError.
    """
    parse_tasks(tasks)
    available = state_tasks(state)
    missing = [c for c in tasks if c not in available]
    if strict and missing:
        raise ValueError(f"state has no decoder for task(s) {''.join(missing)!r}; it has decoders "
                         f"for {available!r}")
    if strict and not any(k.startswith(ENCODER_PREFIX) for k in state):
        raise ValueError("state has no 'encoder.*' entries; is it a MultiTaskNet state dict?")
    out = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    for c in tasks:
        prefix = f"{DECODERS_PREFIX}{c}."
        out.update({k: v for k, v in state.items() if k.startswith(prefix)})
    return out


def load_subnetwork(net: MultiTaskNet, full_state: Mapping[str, Tensor], strict: bool = True):
    """Load `net`'s encoder and its tasks' decoders from a (larger) network's state.

    With `strict=False`, decoders absent from `full_state` keep their current weights; the result of
    `load_state_dict` (missing/unexpected keys) is returned.
    """
    sub = subnetwork_state(full_state, net.tasks, strict=strict)
    return net.load_state_dict(sub, strict=strict)


def merge_subnetwork_state(full_state: Mapping[str, Tensor], sub_state: Mapping[str, Tensor], *,
                           letters: str | None = None) -> dict[str, Tensor]:
    """A copy of `full_state` with the encoder and the decoders for `letters` taken from `sub_state`.

    `letters` defaults to every task with a decoder in `sub_state`: writing a group's sub-network
    back into the all-in-one state. The reverse direction (a larger state into a smaller one) names
    the smaller one's tasks: `merge_subnetwork_state(small, large, letters="dk")`. The encoders must
    have the same keys and shapes and every decoder for `letters` must exist in both states with the
    same shapes, so nothing is silently dropped or mismatched. Values are not copied.
    """
    source_letters = state_tasks(sub_state)
    letters = source_letters if letters is None else letters
    for name, state in (("source", sub_state), ("target", full_state)):
        missing = [c for c in letters if c not in state_tasks(state)]
        if missing:
            raise KeyError(f"{name} state has no decoder for task(s) {''.join(missing)!r} (its tasks: "
                           f"{state_tasks(state)!r})")
    prefixes = (ENCODER_PREFIX, *(f"{DECODERS_PREFIX}{c}." for c in letters))
    for prefix in prefixes:
        src = {k for k in sub_state if k.startswith(prefix)}
        dst = {k for k in full_state if k.startswith(prefix)}
        if src != dst:
            raise KeyError(f"'{prefix}*' keys differ between the states (e.g. {sorted(src ^ dst)[:4]}); "
                           "are both from the same model?")
    out = dict(full_state)
    for key, value in sub_state.items():
        if not key.startswith(prefixes):
            continue
        if tuple(out[key].shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch for {key!r}: target {tuple(out[key].shape)}, "
                             f"source {tuple(value.shape)}")
        out[key] = value
    return out


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (not batch-norm buffers)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
