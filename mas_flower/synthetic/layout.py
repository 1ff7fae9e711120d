"""Rooms of a building (openings, furniture, decorations) and camera poses inside them.

A building has `style.n_rooms` rooms; view v is taken at point v // VIEWS_PER_POINT, in room
point % n_rooms. Rooms depend on (seed, building, room), cameras on (seed, building, point/view), so
any view can be rendered alone (parallel workers write the same bytes).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mas_flower.synthetic.furniture import FURNITURE, WALL_KINDS, Placed
from mas_flower.synthetic.scene import Camera, Scene, SceneBuilder, rng_for
from mas_flower.synthetic.style import FURNITURE_KINDS, BuildingStyle, building_style

#: Views per camera point (Taskonomy stores several views per point; the views look different ways).
VIEWS_PER_POINT = 2
_MARGIN = 0.05

Rect = tuple[float, float, float, float]  # x0, x1, z0, z1


def _free(rect: Rect, taken: list[Rect], w: float, d: float) -> bool:
    x0, x1, z0, z1 = rect
    if x0 < _MARGIN or z0 < _MARGIN or x1 > w - _MARGIN or z1 > d - _MARGIN:
        return False
    return all(x1 + _MARGIN <= a0 or a1 + _MARGIN <= x0 or z1 + _MARGIN <= b0 or b1 + _MARGIN <= z0
               for a0, a1, b0, b1 in taken)


def _openings(b: SceneBuilder, rng: np.random.Generator, style: BuildingStyle) -> list[tuple[int, float, float]]:
    """Windows, doorways and skylights (holes where rays leave the building); returns wall spans used."""
    w, h, d = b.room
    used = []
    n_win, n_door = rng.poisson(style.window_rate), rng.poisson(style.door_rate)
    for i in range(min(n_win + n_door, 5)):
        face = int(rng.choice([0, 1, 4, 5]))
        length = d if face < 2 else w
        width = rng.uniform(0.8, 2.0) if i < n_win else rng.uniform(0.8, 1.0)
        if width > length - 0.6:
            continue
        u0 = rng.uniform(0.3, length - 0.3 - width)
        v0, v1 = (rng.uniform(0.7, 1.0), min(rng.uniform(1.8, 2.2), h - 0.2)) if i < n_win else (0.0, 2.05)
        b.hole(face, u0, u0 + width, v0, v1)
        used.append((face, u0, u0 + width))
    if rng.random() < style.skylight_rate:
        sw, sd = rng.uniform(0.6, min(2.0, w - 1.0)), rng.uniform(0.6, min(2.0, d - 1.0))
        x0, z0 = rng.uniform(0.5, w - 0.5 - sw), rng.uniform(0.5, d - 0.5 - sd)
        b.hole(3, x0, x0 + sw, z0, z0 + sd)
    return used


def _wall_spot(rng: np.random.Generator, w: float, d: float, iw: float, idp: float) -> tuple[float, float, int]:
    """Centre and quarter turn of an item with its back flush against a random wall."""
    wall, gap = int(rng.integers(4)), _MARGIN + 0.01
    if wall == 0:  # z = d, back towards +z
        return rng.uniform(iw / 2, w - iw / 2), d - idp / 2 - gap, 0
    if wall == 1:  # x = w
        return w - idp / 2 - gap, rng.uniform(iw / 2, d - iw / 2), 1
    if wall == 2:  # z = 0
        return rng.uniform(iw / 2, w - iw / 2), idp / 2 + gap, 2
    return idp / 2 + gap, rng.uniform(iw / 2, d - iw / 2), 3


def _footprint(x: float, z: float, iw: float, idp: float, quarter: int) -> Rect:
    hw, hd = (iw / 2, idp / 2) if quarter % 2 == 0 else (idp / 2, iw / 2)
    return (x - hw, x + hw, z - hd, z + hd)


def _furnish(b: SceneBuilder, rng: np.random.Generator, style: BuildingStyle, mats: list[int]) -> None:
    w, h, d = b.room
    taken: list[Rect] = []
    n_items = int(np.clip(rng.poisson(style.density * w * d), 1, 18))
    for _ in range(n_items):
        kind = FURNITURE_KINDS[int(rng.choice(len(FURNITURE_KINDS), p=style.kind_weights))]
        size, build = FURNITURE[kind]
        iw, idp = size(rng)
        for _try in range(15):
            if kind in WALL_KINDS:
                x, z, q = _wall_spot(rng, w, d, iw, idp)
            else:
                x, z, q = rng.uniform(0, w), rng.uniform(0, d), int(rng.integers(4))
            rect = _footprint(x, z, iw, idp, q)
            if kind == "ceiling_lamp" or _free(rect, taken, w, d):
                break
        else:
            continue
        if kind != "ceiling_lamp":
            taken.append(rect)
        item_mats = [mats[int(i)] for i in rng.choice(len(mats), 3)]
        build(Placed(b, x, z, q), rng, iw, idp, item_mats, h)
        if kind == "table":  # chairs around it, facing it
            for q_side in range(4):
                if rng.random() < 0.5:
                    continue
                off = (idp / 2 + 0.32) if q_side % 2 == 0 else (iw / 2 + 0.32)
                cx, cz = Placed(b, x, z, q + q_side)._xz(0.0, -off)
                cw = rng.uniform(0.42, 0.5)
                crect = _footprint(cx, cz, cw, cw, 0)
                if _free(crect, taken, w, d):
                    taken.append(crect)
                    FURNITURE["chair"][1](Placed(b, cx, cz, q + q_side + 2), rng, cw, cw, item_mats, h)


def _decorate(b: SceneBuilder, rng: np.random.Generator, mats: list[int], used: list[tuple[int, float, float]]) -> None:
    """A rug on the floor and pictures on walls (thin boxes; they avoid the wall openings)."""
    w, h, d = b.room
    if rng.random() < 0.5:
        rw, rd = rng.uniform(1.0, min(3.0, w - 0.4)), rng.uniform(1.0, min(2.5, d - 0.4))
        x0, z0 = rng.uniform(0.2, w - 0.2 - rw), rng.uniform(0.2, d - 0.2 - rd)
        b.box((x0, 0.0, z0), (x0 + rw, 0.015, z0 + rd), "rug", mats[int(rng.integers(len(mats)))])
    for _ in range(rng.poisson(1.5)):
        face = int(rng.choice([0, 1, 4, 5]))
        length = d if face < 2 else w
        pw, ph = rng.uniform(0.4, 1.2), rng.uniform(0.3, 0.9)
        u0 = rng.uniform(0.2, length - 0.2 - pw)
        if any(f == face and u0 < a1 and a0 < u0 + pw for f, a0, a1 in used):
            continue
        y0 = rng.uniform(1.3, 1.8) - ph / 2
        depth = 0.03
        mat = mats[int(rng.integers(len(mats)))]
        if face == 0:
            b.box((0.0, y0, u0), (depth, y0 + ph, u0 + pw), "picture", mat)
        elif face == 1:
            b.box((w - depth, y0, u0), (w, y0 + ph, u0 + pw), "picture", mat)
        elif face == 4:
            b.box((u0, y0, 0.0), (u0 + pw, y0 + ph, depth), "picture", mat)
        else:
            b.box((u0, y0, d - depth), (u0 + pw, y0 + ph, d), "picture", mat)


@lru_cache(maxsize=32)
def make_room(seed: int, building: int, room: int) -> Scene:
    """Room `room` of building `building`: size, openings, furniture and decorations from its style."""
    style = building_style(seed, building)
    rng = rng_for(seed, building, 1, room)
    w = float(rng.uniform(*style.room_width))
    d = float(rng.uniform(*style.room_depth))
    h = float(style.room_height + rng.uniform(-0.1, 0.1))
    materials = [style.floor, style.wall, style.ceiling, *style.furniture]
    b = SceneBuilder((w, h, d), (0, 1, 2), materials, style.lighting, style.noise)
    used = _openings(b, rng, style)
    furniture_mats = list(range(3, len(materials)))
    _furnish(b, rng, style, furniture_mats)
    _decorate(b, rng, furniture_mats, used)
    return b.build()


def _clearance(scene: Scene, p: np.ndarray) -> float:
    """Distance from p to the nearest furniture bounding box (room faces excluded)."""
    c, hf = scene.centre[6:], scene.half[6:]
    if len(c) == 0:
        return float("inf")
    gap = np.maximum(np.abs(p - c) - hf, 0.0)
    return float(np.sqrt((gap**2).sum(axis=1)).min())


def view_of(seed: int, building: int, view: int) -> tuple[int, int, int]:
    """(point, view within the point, room) of a building's view index."""
    point, sub = divmod(view, VIEWS_PER_POINT)
    return point, sub, point % building_style(seed, building).n_rooms


def make_camera(seed: int, building: int, view: int) -> tuple[Scene, Camera]:
    """The scene and camera of one view: human eye height, clear of furniture, varied yaw and pitch."""
    style = building_style(seed, building)
    point, sub, room = view_of(seed, building, view)
    scene = make_room(seed, building, room)
    w, _, d = scene.room
    rng = rng_for(seed, building, 2, point)
    best, best_gap = None, -1.0
    for _ in range(40):
        p = np.array([rng.uniform(0.5, w - 0.5), style.camera_height + rng.normal(0, 0.05),
                      rng.uniform(0.5, d - 0.5)])
        gap = _clearance(scene, p)
        if gap > best_gap:
            best, best_gap = p, gap
        if gap >= 0.35:
            break
    assert best is not None
    # Look roughly into the room (towards its centre), the views of a point fanning out from there.
    to_centre = np.arctan2(w / 2 - best[0], d / 2 - best[2])
    base_yaw = to_centre + rng.uniform(-1.0, 1.0)
    vr = rng_for(seed, building, 3, view)
    spread = (sub - (VIEWS_PER_POINT - 1) / 2) * 1.1
    yaw = (base_yaw + spread + vr.normal(0, 0.25)) % (2 * np.pi)
    pitch = float(np.clip(vr.normal(-0.18, 0.15), -0.6, 0.3))
    fov = float(np.deg2rad(style.fov_deg + vr.uniform(-5, 5)))
    return scene, Camera(tuple(float(v) for v in best), float(yaw), pitch, fov)
