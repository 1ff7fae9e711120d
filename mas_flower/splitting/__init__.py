"""Choosing task groups from inter-task affinities (MAS, TAG) or pair losses (HOA): docs/design.md,
section "Choosing the groups".

Pure numpy. Groups are tuples of task indices in task order; `SplitResult.labels(tasks)` renders
them as task strings ("sdn") or lists of names.
"""

from mas_flower.splitting.affinity_file import load_affinity, parse_affinity, split_from_file
from mas_flower.splitting.hoa import estimated_losses, hoa_split, hoa_total, pair_matrix
from mas_flower.splitting.mas import mas_split
from mas_flower.splitting.scoring import (
    SplitResult,
    as_affinity,
    cover_score,
    partition_score,
    render_groups,
    singleton_scores,
    task_scores,
)
from mas_flower.splitting.tag import tag_split

__all__ = [
    "SplitResult",
    "as_affinity",
    "cover_score",
    "estimated_losses",
    "hoa_split",
    "hoa_total",
    "load_affinity",
    "mas_split",
    "pair_matrix",
    "parse_affinity",
    "partition_score",
    "render_groups",
    "singleton_scores",
    "split_from_file",
    "tag_split",
    "task_scores",
]
