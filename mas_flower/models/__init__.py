"""Multi-task networks: a shared encoder + one decoder per task, built by name from a registry.

Every module of this package is imported here, so that each architecture's `@register_model` runs
and adding one is adding a file.
"""

from mas_flower.models.multitask import (
    MultiTaskNet,
    count_parameters,
    load_subnetwork,
    merge_subnetwork_state,
    state_tasks,
    subnetwork_state,
)
from mas_flower.models.registry import build_model, check_image_size, list_models, register_model
from mas_flower.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = [
    "MultiTaskNet",
    "build_model",
    "check_image_size",
    "count_parameters",
    "list_models",
    "load_subnetwork",
    "merge_subnetwork_state",
    "register_model",
    "state_tasks",
    "subnetwork_state",
]
