"""Synthetic Taskonomy: procedural indoor scenes ray-cast in numpy, written in Taskonomy's layout.

Modules: scene (primitives, camera), style (per-building look), furniture and layout (rooms,
cameras), render (ray casting to float fields), labels (edges, keypoints, encodings), writer (files).
"""

from mas_flower.synthetic.labels import CURVATURE_SCALE_M, encode_fields
from mas_flower.synthetic.layout import VIEWS_PER_POINT, make_camera, make_room
from mas_flower.synthetic.names import BUILDING_NAMES, building_names
from mas_flower.synthetic.render import Fields, render_view
from mas_flower.synthetic.scene import SEMANTIC_CLASSES, Camera, Lighting, Material, Scene, SceneBuilder
from mas_flower.synthetic.writer import (
    INFO_FILE,
    POINT_INFO_DOMAIN,
    generate_dataset,
    is_complete,
    read_info,
    render_building_view,
    view_fields,
)

__all__ = [
    "BUILDING_NAMES", "CURVATURE_SCALE_M", "INFO_FILE", "POINT_INFO_DOMAIN", "SEMANTIC_CLASSES",
    "VIEWS_PER_POINT", "Camera", "Fields", "Lighting", "Material", "Scene", "SceneBuilder",
    "building_names", "encode_fields", "generate_dataset", "is_complete", "make_camera", "make_room",
    "read_info", "render_building_view", "render_view", "view_fields",
]
