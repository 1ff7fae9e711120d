"""Taskonomy-layout data: the loader (`open_building`) and the dataset checker (`check.check_dataset`).

Layout and encodings are those of docs/design.md, section "Taskonomy's encodings"; the per-task rules
come from mas_flower.tasks.
"""

from mas_flower.data.cache import clear_memory_cache
from mas_flower.data.dataset import BuildingData, SplitData, open_building
from mas_flower.data.layout import DataError, list_buildings

__all__ = ["BuildingData", "DataError", "SplitData", "clear_memory_cache", "list_buildings", "open_building"]
