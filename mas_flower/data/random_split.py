"""An in-memory split of random images and targets for any task letters (tests and benchmarks).

It speaks the loader's `batches(...)`/`device_batches(...)`/`__len__` protocol (shuffle and flip from
the given generator), so training can be tested before, and independently of, the file loader.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from mas_flower.tasks import TASKS, needs_mask, parse_tasks


class RandomSplit:
    def __init__(self, tasks: str, n: int = 8, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tasks = tasks
        self.tensors: dict[str, Tensor] = {"rgb": torch.rand(n, 3, size, size, generator=g)}
        for t in parse_tasks(tasks):
            if t.is_classification:
                self.tensors[t.letter] = torch.randint(0, t.out_channels, (n, size, size), generator=g)
            else:
                self.tensors[t.letter] = torch.randn(n, t.out_channels, size, size, generator=g)
        if needs_mask(tasks):
            self.tensors["mask"] = torch.rand(n, 1, size, size, generator=g) < 0.8

    def __len__(self) -> int:
        return self.tensors["rgb"].shape[0]

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False) -> Iterator[dict[str, Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if drop_last and len(idx) < batch_size:
                return
            batch = {k: v[idx].clone() for k, v in self.tensors.items()}
            if augment:
                flip = torch.rand(len(idx), generator=generator) < 0.5
                for k, v in batch.items():
                    v[flip] = v[flip].flip(-1)
                    task = TASKS.get(k)
                    if task is not None and task.flip_negates is not None:
                        v[flip, task.flip_negates] *= -1
            yield batch

    def device_batches(self, device: torch.device | str, batch_size: int, **kw) -> Iterator[dict[str, Tensor]]:
        """`batches` copied to `device` (images channels-last on CUDA, like the loader's)."""
        device = torch.device(device)
        for batch in self.batches(batch_size, **kw):
            batch = {k: v.to(device) for k, v in batch.items()}
            if device.type == "cuda":
                batch["rgb"] = batch["rgb"].contiguous(memory_format=torch.channels_last)
            yield batch
