"""Scene description: one box-shaped room (with openings) plus furniture primitives, and a pinhole camera.

World frame: metres, y up, floor at y = 0, the room spans [0, W] x [0, H] x [0, D]. Primitives are
axis-aligned boxes, vertical cylinders and spheres: enough for furniture, and each has exact normals
and principal curvatures, so every label can be derived from the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PLANE, BOX, CYLINDER, SPHERE = 0, 1, 2, 3

#: Semantic classes: id = position; 0 = unlabelled (rays that leave the building).
SEMANTIC_CLASSES: tuple[str, ...] = (
    "unlabelled", "floor", "wall", "ceiling", "table", "chair", "bed", "sofa", "lamp", "cabinet",
    "shelf", "plant", "rug", "picture", "vase", "column", "tv", "stool",
)
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}

#: Surface patterns of a material (albedo = mix of two colours by the pattern).
PLAIN, STRIPES, CHECKS, NOISE, PLANKS = 0, 1, 2, 3, 4


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on (seed, keys): buildings and views are independent streams."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


@dataclass(frozen=True)
class Material:
    colour: tuple[float, float, float]
    colour2: tuple[float, float, float]
    pattern: int
    period: float


@dataclass(frozen=True)
class Lighting:
    """How the RGB image is lit (the reshading label uses a fixed light instead, see render.py)."""

    ambient: float
    tint: tuple[float, float, float]
    exposure: float
    falloff_m: float
    top_light: float


@dataclass
class Scene:
    """Arrays indexed by primitive id; ids 0..5 are the room faces (kind PLANE)."""

    room: np.ndarray  # (3,) W, H, D
    holes: np.ndarray  # (k, 5): face id, u0, u1, v0, v1 (face coordinates, see FACE_UV)
    kind: np.ndarray  # (n,) int
    centre: np.ndarray  # (n, 3)
    half: np.ndarray  # (n, 3) box half extents; cylinder (r, half height, r); sphere (r, r, r)
    normal: np.ndarray  # (n, 3) plane normals (zero for other kinds)
    material: np.ndarray  # (n,) index into materials
    semantic: np.ndarray  # (n,) class ids
    materials: list[Material]
    lighting: Lighting
    noise: np.ndarray  # (N, N) float32 in [0, 1], tiled texture for NOISE / PLANKS patterns


#: For the room face on axis a, the two in-plane world axes used as (u, v).
FACE_UV: dict[int, tuple[int, int]] = {0: (2, 1), 1: (0, 2), 2: (0, 1)}


@dataclass
class SceneBuilder:
    """Collects primitives; `build` freezes them into a Scene."""

    room: tuple[float, float, float]
    room_materials: tuple[int, int, int]  # floor, wall, ceiling
    materials: list[Material]
    lighting: Lighting
    noise: np.ndarray
    holes: list[tuple[int, float, float, float, float]] = field(default_factory=list)
    _prims: list[tuple[int, tuple[float, ...], tuple[float, ...], int, int]] = field(default_factory=list)

    def box(self, lo: tuple[float, float, float], hi: tuple[float, float, float], semantic: str,
            material: int) -> None:
        lo_a, hi_a = np.minimum(lo, hi), np.maximum(lo, hi)
        self._prims.append((BOX, tuple((lo_a + hi_a) / 2), tuple((hi_a - lo_a) / 2), CLASS_ID[semantic],
                            material))

    def cylinder(self, x: float, z: float, r: float, y0: float, y1: float, semantic: str, material: int) -> None:
        self._prims.append((CYLINDER, (x, (y0 + y1) / 2, z), (r, (y1 - y0) / 2, r), CLASS_ID[semantic],
                            material))

    def sphere(self, c: tuple[float, float, float], r: float, semantic: str, material: int) -> None:
        self._prims.append((SPHERE, tuple(c), (r, r, r), CLASS_ID[semantic], material))

    def hole(self, face: int, u0: float, u1: float, v0: float, v1: float) -> None:
        """An opening in a room face (face = 2 * axis + (0 for the low side, 1 for the high side))."""
        self.holes.append((face, u0, u1, v0, v1))

    def build(self) -> Scene:
        w, h, d = self.room
        fl, wa, ce = self.room_materials
        kinds, centres, halves, normals, mats, sems = [], [], [], [], [], []
        for face in range(6):
            axis, high = divmod(face, 2)
            n = np.zeros(3)
            n[axis] = -1.0 if high else 1.0  # room normals point inwards, towards the camera
            sem, mat = ("floor", fl) if face == 2 else ("ceiling", ce) if face == 3 else ("wall", wa)
            kinds.append(PLANE)
            centres.append((w / 2, h / 2, d / 2))
            halves.append((w / 2, h / 2, d / 2))
            normals.append(tuple(n))
            mats.append(mat)
            sems.append(CLASS_ID[sem])
        for kind, c, hf, sem, mat in self._prims:
            kinds.append(kind)
            centres.append(c)
            halves.append(hf)
            normals.append((0.0, 0.0, 0.0))
            mats.append(mat)
            sems.append(sem)
        return Scene(
            room=np.array(self.room, dtype=np.float64),
            holes=np.array(self.holes, dtype=np.float64).reshape(-1, 5),
            kind=np.array(kinds, dtype=np.int64),
            centre=np.array(centres, dtype=np.float64),
            half=np.array(halves, dtype=np.float64),
            normal=np.array(normals, dtype=np.float64),
            material=np.array(mats, dtype=np.int64),
            semantic=np.array(sems, dtype=np.uint8),
            materials=list(self.materials),
            lighting=self.lighting,
            noise=self.noise,
        )


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; yaw from +z towards +x, pitch up positive, no roll; square image, fov per side."""

    position: tuple[float, float, float]
    yaw: float
    pitch: float
    fov: float

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World vectors (right, up, forward) of the camera."""
        cp = np.cos(self.pitch)
        fwd = np.array([np.sin(self.yaw) * cp, np.sin(self.pitch), np.cos(self.yaw) * cp])
        right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        return right, up, fwd

    def focal(self, size: int) -> float:
        """Focal length in pixels for a size x size image."""
        return (size / 2) / np.tan(self.fov / 2)
