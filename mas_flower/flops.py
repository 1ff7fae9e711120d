"""Machine-independent compute: FLOPs per sample of a network's training step, evaluation and lookahead.

Counted with torch's own counter (`torch.utils.flop_counter.FlopCounterMode`), which counts the
matrix multiplications and convolutions (transposed ones included) and their backward passes, at
2 FLOPs per multiply-add; element-wise work (batch norm, activations, losses, the optimiser step,
FedProx's proximal term) is not counted, as is usual for FLOP figures. The weight gradient of
grouped (depthwise) convolutions is counted with a corrected formula (`_conv_backward_flop`). The
counts are exact for the given shapes: every counted op's cost is linear in the batch, so
per-sample = count / batch.

What is counted, per sample at image size S (one `NetworkFlops` per network shape):

- `train`: one training step as `mas_flower.training.train_local` runs it: the forward pass of the
  encoder and every decoder, the task losses, and `Weighting.backward` of the run's loss weighting
  (for `equal` one backward pass, weight and input gradients; GradNorm adds its per-task gradients
  at the last shared layer).
- `eval`: one forward pass, no gradient (`mas_flower.training.evaluate`).
- `affinity`: the exact lookahead's **extra** work per sample of a lookahead batch, beyond the
  training step it shares its forward pass with (`mas_flower.affinity`): n backward passes through
  one decoder each to the representation and n vector-Jacobian products through the encoder
  (measured: the counter runs `affinity.task_encoder_gradients` itself), then n no-grad forward
  passes of the whole network (derived: n × `eval`, which is what `lookahead_from_gradients` runs;
  the test checks the sum against a direct count of the whole lookahead on a real CPU batch).
  First-order mode replaces the n forward passes by the inner products of the per-task encoder
  gradients, `g @ gᵀ` and `g @ θ` in `affinity._first_order`: 2·(n² + n)·P FLOPs per lookahead batch
  for P encoder parameters, whatever the batch size (derived; torch's counter does not count the
  matrix-vector product `g @ θ`, so a direct count shows 2·n²·P).

A run's totals are then samples × per-sample figures: train FLOPs = (samples trained) × `train`
+ Σ over lookahead batches of `lookahead_batch(size, mode)`; eval FLOPs = (samples evaluated) ×
`eval`. One-by-one over n tasks trains n single-task networks on the same samples, so it costs the
sum of their `train`; a multi-task network shares one encoder among its decoders and costs less.

Measuring runs the network on PyTorch's `meta` device (shapes only, no arithmetic, about a second
for the reference Xception with nine tasks at 256 px), once per (model, tasks, image size,
weighting) per process (`functools.lru_cache`), and optionally once per machine via a JSON file in
`cache_dir` keyed by those and the torch and mas-flower versions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import mas_flower
from mas_flower.settings import AFFINITY_MODES
from mas_flower.tasks import parse_tasks

#: Samples per measured batch (batch norm in training mode needs more than one value per channel).
MEASURE_BATCH = 2


@dataclass(frozen=True)
class NetworkFlops:
    """FLOPs per sample of one network shape (2 FLOPs per multiply-add, matmuls and convolutions)."""

    model: str
    tasks: str
    image_size: int
    weighting: str
    #: One training step (forward, losses, the weighting's backward).
    train: float
    #: One forward pass without gradient.
    eval: float
    #: The exact lookahead's extra work per sample of a lookahead batch (see the module docstring).
    affinity: float
    #: The first-order lookahead's extra work per sample of a lookahead batch (the per-task gradients)...
    affinity_first_order: float
    #: ... plus this much per lookahead batch, whatever its size (the n x n gradient inner products).
    affinity_first_order_per_batch: float

    def training(self, samples: int, lookahead_samples: int = 0, lookahead_batches: int = 0,
                 mode: str = "exact") -> float:
        """FLOPs of a local training that processed `samples` samples (epochs × examples), of which
        `lookahead_samples` in `lookahead_batches` lookahead batches; the lookahead part is
        `lookahead(...)` and is included here."""
        return self.train * samples + self.lookahead(lookahead_samples, lookahead_batches, mode)

    def lookahead(self, lookahead_samples: int, lookahead_batches: int, mode: str = "exact") -> float:
        """The lookahead's extra FLOPs over `lookahead_batches` batches holding `lookahead_samples` samples."""
        if mode not in AFFINITY_MODES:
            raise ValueError(f"affinity mode {mode!r} must be one of {AFFINITY_MODES}")
        if mode == "exact":
            return self.affinity * lookahead_samples
        return self.affinity_first_order * lookahead_samples + self.affinity_first_order_per_batch * lookahead_batches

    def evaluation(self, samples: int) -> float:
        """FLOPs of evaluating `samples` samples."""
        return self.eval * samples

    def lookahead_batch(self, batch_size: int, mode: str = "exact") -> float:
        """The extra FLOPs of one lookahead batch of `batch_size` samples (beyond its training step)."""
        return self.lookahead(batch_size, 1, mode)


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of `aten.convolution_backward`: the forward convolution's count once per gradient asked
    for (input and/or weight), as every multiply-add of the forward has one in each gradient.

    torch's own formula (torch 2.14) counts the weight gradient of a grouped convolution as if it
    were dense, `groups` times too much (64x for a depthwise 64-channel 3x3 conv); see
    pytorch/pytorch PR #183405. The Xception's separable convolutions are depthwise, so that error
    would make its training step 14x its forward pass instead of 3x.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _count(fn) -> int:
    custom = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        fn()
    return int(counter.get_total_flops())


def fake_batch(tasks: str, image_size: int, batch: int = MEASURE_BATCH, device: torch.device | str = "meta",
               ) -> dict[str, Tensor]:
    """A batch with the shapes and dtypes the loader gives (values are zeros): rgb, targets, mask."""
    out: dict[str, Tensor] = {"rgb": torch.zeros(batch, 3, image_size, image_size, device=device),
                              "mask": torch.ones(batch, 1, image_size, image_size, dtype=torch.bool, device=device)}
    for task in parse_tasks(tasks):
        if task.is_classification:
            out[task.letter] = torch.ones(batch, image_size, image_size, dtype=torch.long, device=device)
        else:
            out[task.letter] = torch.zeros(batch, task.out_channels, image_size, image_size, device=device)
    return out


def measure(net: nn.Module, image_size: int, weighting: str = "equal", *, model: str | None = None) -> NetworkFlops:
    """Count `net`'s FLOPs per sample (module docstring) on a copy of it on the meta device.

    `net` is a `MultiTaskNet` (encoder, decoders, `tasks`); it is not modified. The weighting is
    made with its defaults (`mas_flower.weighting.get_weighting`).
    """
    from mas_flower.affinity import encoder_params, task_encoder_gradients
    from mas_flower.losses import task_losses
    from mas_flower.weighting import get_weighting

    tasks: str = net.tasks
    meta = _meta_copy(net)
    meta.train()
    batch = fake_batch(tasks, image_size)
    x = batch["rgb"]

    def train_step() -> None:
        rep = meta.encode(x)
        losses = task_losses(meta.decode(rep), batch, tasks)
        get_weighting(weighting, tasks).backward(losses, meta, rep=rep)

    def forward() -> None:
        with torch.no_grad():
            meta(x)

    train = _count(train_step)
    evaluate = _count(forward)
    params = encoder_params(meta)
    rep = meta.encode(x)
    losses = task_losses(meta.decode(rep), batch, tasks)
    grads = _count(lambda: task_encoder_gradients(rep, losses, tasks, params))
    n, p = len(tasks), sum(q.numel() for q in params)
    return NetworkFlops(
        model=model or str(getattr(net, "model_name", type(net).__name__)), tasks=tasks, image_size=image_size,
        weighting=weighting, train=train / MEASURE_BATCH, eval=evaluate / MEASURE_BATCH,
        affinity=(grads + n * evaluate) / MEASURE_BATCH,
        affinity_first_order=grads / MEASURE_BATCH, affinity_first_order_per_batch=2.0 * (n * n + n) * p,
    )


def _meta_copy(net: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(net) if next(net.parameters()).device.type != "meta" else net
    return clone.to("meta")


def network_flops(model: str, tasks: str, image_size: int, weighting: str = "equal", *,
                  cache_dir: Path | None = None) -> NetworkFlops:
    """FLOPs per sample of `mas_flower.models.build_model(model, tasks, image_size=image_size)`.

    Measured once per process per argument tuple; with `cache_dir`, also read from / written to
    `<cache_dir>/flops-<model>-<tasks>-<size>-<weighting>-torch<v>-mas<v>.json`. Unknown models,
    task letters, image sizes that do not fit the model, and unknown weightings raise ValueError.
    """
    if cache_dir is None:
        return _measured(model, tasks, int(image_size), weighting)
    cache_dir = Path(cache_dir)
    path = cache_dir / (f"flops-{model}-{tasks}-{image_size}-{weighting}-torch{torch.__version__}"
                        f"-mas{mas_flower.__version__}.json").replace("/", "_").replace("+", "_")
    if path.is_file():
        try:
            return NetworkFlops(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError):
            pass  # a stale or damaged entry: measure again and overwrite it
    flops = _measured(model, tasks, int(image_size), weighting)
    from mas_flower.results import write_json

    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, asdict(flops))
    return flops


@lru_cache(maxsize=256)
def _measured(model: str, tasks: str, image_size: int, weighting: str) -> NetworkFlops:
    from mas_flower.models import build_model
    from mas_flower.weighting import list_weightings

    if weighting not in list_weightings():
        raise ValueError(f"weighting {weighting!r} is not one of {', '.join(list_weightings())}")
    net = build_model(model, tasks, image_size=image_size, seed=0)
    return measure(net, image_size, weighting, model=model)


def to_tflops(flops: float) -> float:
    """FLOPs to TFLOPs (10¹²)."""
    return flops / 1e12
