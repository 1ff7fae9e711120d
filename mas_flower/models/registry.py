"""Model registry (timm-style): architectures register a builder by name; `build_model` looks it up.

A builder takes `(tasks, seed=...)` and returns a `MultiTaskNet`; the registry also records the
model's total stride so a bad image size is rejected before anything is built. The names live in
the project's one `Registry`; `mas_flower.models` imports every module of the package, so adding an
architecture is adding a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mas_flower.models.multitask import MultiTaskNet
from mas_flower.registry import Registry
from mas_flower.tasks import parse_tasks

Builder = Callable[..., MultiTaskNet]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Builder
    #: Total downsampling of the encoder: image sizes must be positive multiples of it.
    stride: int
    description: str


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str | None = None, *, stride: int,
                   description: str = "") -> Callable[[Builder], Builder]:
    """Decorator: register `fn(tasks: str, *, seed: int | None) -> MultiTaskNet` under `name`
    (default: the function's name)."""

    def wrap(fn: Builder) -> Builder:
        key = name or fn.__name__
        MODELS.add(key, ModelSpec(key, fn, stride, description or (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()


def get_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def check_image_size(name: str, image_size: int) -> None:
    """Raise a ValueError unless `image_size` is a positive multiple of the model's total stride."""
    stride = get_spec(name).stride
    is_int = isinstance(image_size, int) and not isinstance(image_size, bool)
    if not is_int or image_size < stride or image_size % stride:
        raise ValueError(f"image size {image_size!r} does not fit model {name!r}: it must be a positive "
                         f"multiple of the model's total stride {stride} (e.g. {4 * stride}, {16 * stride})")


def build_model(name: str, tasks: str, *, image_size: int = 256, seed: int | None = None) -> MultiTaskNet:
    """A fresh multi-task network `name` with one decoder per letter of `tasks` (e.g. "sdnkt").

    `seed` makes the weights reproducible without touching the global RNG, and gives the encoder
    and each task's decoder the same initial weights whatever the other tasks are; `None` draws
    from the global RNG. The network produces outputs at input resolution for any image size that
    is a multiple of its stride; `image_size` is checked here and kept on the network for reference.
    """
    spec = get_spec(name)
    parse_tasks(tasks)
    check_image_size(name, image_size)
    net = spec.builder(tasks, seed=seed)
    net.image_size = image_size
    return net
