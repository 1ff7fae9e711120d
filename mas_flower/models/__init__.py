"""Multi-task networks: a shared encoder + one decoder per task, built by name from a registry."""

from mas_flower.models.multitask import (
    MultiTaskNet,
    count_parameters,
    load_subnetwork,
    merge_subnetwork_state,
    state_tasks,
    subnetwork_state,
)
from mas_flower.models.registry import build_model, check_image_size, list_models, register_model

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
