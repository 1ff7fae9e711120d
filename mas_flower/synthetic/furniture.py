"""Furniture made of boxes, cylinders and spheres, built in a local frame and placed in the room.

Local frame: the item spans x in [-w/2, w/2], z in [-d/2, d/2], floor at y = 0, its back towards +z
(so items against a wall turn their back to it). Placement rotates by quarter turns, which keeps
boxes axis-aligned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mas_flower.synthetic.scene import SceneBuilder

#: Kinds that stand with their back against a wall.
WALL_KINDS = frozenset({"bed", "sofa", "cabinet", "shelf"})


@dataclass
class Placed:
    """A local frame at (x, z) turned by `quarter` quarter turns, writing into a SceneBuilder."""

    builder: SceneBuilder
    x: float
    z: float
    quarter: int

    def _xz(self, lx: float, lz: float) -> tuple[float, float]:
        for _ in range(self.quarter % 4):
            lx, lz = lz, -lx
        return self.x + lx, self.z + lz

    def box(self, lo: tuple[float, float, float], hi: tuple[float, float, float], sem: str, mat: int) -> None:
        x0, z0 = self._xz(lo[0], lo[2])
        x1, z1 = self._xz(hi[0], hi[2])
        self.builder.box((x0, lo[1], z0), (x1, hi[1], z1), sem, mat)

    def cylinder(self, lx: float, lz: float, r: float, y0: float, y1: float, sem: str, mat: int) -> None:
        x, z = self._xz(lx, lz)
        self.builder.cylinder(x, z, r, y0, y1, sem, mat)

    def sphere(self, lx: float, y: float, lz: float, r: float, sem: str, mat: int) -> None:
        x, z = self._xz(lx, lz)
        self.builder.sphere((x, y, z), r, sem, mat)


def _legs(p: Placed, w: float, d: float, h: float, t: float, sem: str, mat: int) -> None:
    for sx in (-1, 1):
        for sz in (-1, 1):
            cx, cz = sx * (w / 2 - t), sz * (d / 2 - t)
            p.box((cx - t / 2, 0.0, cz - t / 2), (cx + t / 2, h, cz + t / 2), sem, mat)


def table(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    h = rng.uniform(0.7, 0.78)
    if rng.random() < 0.3:  # round table on a central leg
        r = min(w, d) / 2
        p.cylinder(0, 0, r, h - 0.04, h, "table", mats[0])
        p.cylinder(0, 0, 0.05, 0.0, h - 0.04, "table", mats[1])
    else:
        p.box((-w / 2, h - 0.04, -d / 2), (w / 2, h, d / 2), "table", mats[0])
        _legs(p, w, d, h - 0.04, 0.05, "table", mats[1])
    if rng.random() < 0.5:
        r = rng.uniform(0.1, 0.18)
        p.sphere(rng.uniform(-0.2, 0.2) * w, h + r, rng.uniform(-0.2, 0.2) * d, r, "vase", mats[2])


def chair(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    h = rng.uniform(0.42, 0.48)
    p.box((-w / 2, h - 0.05, -d / 2), (w / 2, h, d / 2), "chair", mats[0])
    _legs(p, w, d, h - 0.05, 0.04, "chair", mats[1])
    p.box((-w / 2, h, d / 2 - 0.05), (w / 2, h + rng.uniform(0.35, 0.5), d / 2), "chair", mats[0])


def bed(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    p.box((-w / 2, 0.0, -d / 2), (w / 2, 0.35, d / 2 - 0.08), "bed", mats[1])
    p.box((-w / 2 + 0.03, 0.35, -d / 2 + 0.03), (w / 2 - 0.03, 0.55, d / 2 - 0.1), "bed", mats[0])
    p.box((-w / 2, 0.0, d / 2 - 0.08), (w / 2, rng.uniform(0.9, 1.2), d / 2), "bed", mats[1])
    n = 2 if w > 1.3 else 1
    for i in range(n):
        cx = (i - (n - 1) / 2) * w / n
        p.box((cx - 0.3, 0.55, d / 2 - 0.5), (cx + 0.3, 0.68, d / 2 - 0.15), "bed", mats[2])


def sofa(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    arm = 0.15
    p.box((-w / 2 + arm, 0.0, -d / 2), (w / 2 - arm, 0.42, d / 2 - 0.2), "sofa", mats[0])
    p.box((-w / 2, 0.0, d / 2 - 0.2), (w / 2, rng.uniform(0.75, 0.9), d / 2), "sofa", mats[0])
    for sx in (-1, 1):
        x0 = sx * w / 2
        p.box((x0, 0.0, -d / 2), (x0 - sx * arm, 0.6, d / 2 - 0.2), "sofa", mats[1])


def floor_lamp(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    top = min(rng.uniform(1.3, 1.8), room_h - 0.5)
    p.cylinder(0, 0, 0.15, 0.0, 0.03, "lamp", mats[1])
    p.cylinder(0, 0, 0.02, 0.03, top, "lamp", mats[1])
    if rng.random() < 0.5:
        r = rng.uniform(0.15, 0.25)
        p.sphere(0, top + r * 0.8, 0, r, "lamp", mats[0])
    else:
        p.cylinder(0, 0, rng.uniform(0.15, 0.25), top, top + rng.uniform(0.2, 0.35), "lamp", mats[0])


def ceiling_lamp(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    r = rng.uniform(0.15, 0.3)
    y = room_h - rng.uniform(0.4, 0.7)
    p.cylinder(0, 0, 0.015, y, room_h, "lamp", mats[1])
    p.sphere(0, y, 0, r, "lamp", mats[0])


def cabinet(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    h = rng.uniform(0.5, 1.0) if rng.random() < 0.5 else rng.uniform(1.4, 2.0)
    p.box((-w / 2, 0.0, -d / 2), (w / 2, h, d / 2), "cabinet", mats[0])
    if h < 1.0 and rng.random() < 0.6:
        tw = min(w, rng.uniform(0.7, 1.2))
        p.box((-tw / 2, h, 0.0), (tw / 2, h + tw * 0.58, 0.05), "tv", mats[2])


def shelf(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    h, t = min(rng.uniform(1.5, 2.2), room_h - 0.2), 0.03
    for sx in (-1, 1):
        p.box((sx * w / 2, 0.0, -d / 2), (sx * (w / 2 - t), h, d / 2), "shelf", mats[0])
    p.box((-w / 2, 0.0, d / 2 - t), (w / 2, h, d / 2), "shelf", mats[1])
    boards = int(rng.integers(3, 6))
    for i in range(boards):
        y = i * (h - t) / (boards - 1)
        p.box((-w / 2 + t, y, -d / 2), (w / 2 - t, y + t, d / 2 - t), "shelf", mats[0])


def plant(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    r, h = rng.uniform(0.13, 0.2), rng.uniform(0.3, 0.45)
    p.cylinder(0, 0, r, 0.0, h, "plant", mats[0])
    rf = w / 2
    p.sphere(0, h + rf * 0.8, 0, rf, "plant", mats[2])


def vase(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    p.sphere(0, w / 2, 0, w / 2, "vase", mats[2])


def column(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    p.cylinder(0, 0, w / 2, 0.0, room_h, "column", mats[1])


def stool(p: Placed, rng: np.random.Generator, w: float, d: float, mats: list[int], room_h: float) -> None:
    p.cylinder(0, 0, w / 2, 0.0, rng.uniform(0.45, 0.75), "stool", mats[0])


Builder = Callable[[Placed, np.random.Generator, float, float, list[int], float], None]

#: kind -> (footprint sampler (w, d), builder).
FURNITURE: dict[str, tuple[Callable[[np.random.Generator], tuple[float, float]], Builder]] = {
    "table": (lambda g: (g.uniform(0.8, 1.6), g.uniform(0.6, 1.0)), table),
    "chair": (lambda g: (g.uniform(0.42, 0.5), g.uniform(0.42, 0.5)), chair),
    "bed": (lambda g: (g.uniform(0.9, 1.8), g.uniform(1.95, 2.1)), bed),
    "sofa": (lambda g: (g.uniform(1.5, 2.4), g.uniform(0.8, 0.95)), sofa),
    "floor_lamp": (lambda g: (0.5, 0.5), floor_lamp),
    "ceiling_lamp": (lambda g: (0.6, 0.6), ceiling_lamp),
    "cabinet": (lambda g: (g.uniform(0.5, 1.2), g.uniform(0.4, 0.6)), cabinet),
    "shelf": (lambda g: (g.uniform(0.8, 1.5), g.uniform(0.28, 0.4)), shelf),
    "plant": (lambda g: (2 * g.uniform(0.22, 0.4),) * 2, plant),
    "vase": (lambda g: (2 * g.uniform(0.14, 0.3),) * 2, vase),
    "column": (lambda g: (2 * g.uniform(0.15, 0.3),) * 2, column),
    "stool": (lambda g: (2 * g.uniform(0.15, 0.2),) * 2, stool),
}
