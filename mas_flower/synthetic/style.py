"""Per-building style: palette, textures, room sizes, furniture mix, lighting and camera habits.

Everything is drawn from (seed, building index) alone, so buildings differ systematically (the
federation is non-IID) while each building stays self-consistent across its views.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mas_flower.synthetic.scene import CHECKS, NOISE, PLAIN, PLANKS, STRIPES, Lighting, Material, rng_for

#: Furniture kinds a room may hold (builders in furniture.py).
FURNITURE_KINDS: tuple[str, ...] = (
    "table", "chair", "bed", "sofa", "floor_lamp", "ceiling_lamp", "cabinet", "shelf", "plant", "vase",
    "column", "stool",
)
NOISE_TEXELS = 64


@dataclass(frozen=True)
class BuildingStyle:
    index: int
    floor: Material
    wall: Material
    ceiling: Material
    furniture: tuple[Material, ...]
    kind_weights: tuple[float, ...]  # over FURNITURE_KINDS
    density: float  # furniture items per square metre of floor
    room_width: tuple[float, float]
    room_depth: tuple[float, float]
    room_height: float
    n_rooms: int
    window_rate: float
    door_rate: float
    skylight_rate: float
    lighting: Lighting
    fov_deg: float
    camera_height: float
    noise: np.ndarray


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return (round(r, 4), round(g, 4), round(b, 4))


def _material(rng: np.random.Generator, hue: float, sat: float, val: float, patterns: tuple[int, ...],
              contrast: float) -> Material:
    """A two-colour material around (hue, sat, val); the second colour is a darker/lighter variant."""
    c1 = _hsv(hue + rng.normal(0, 0.02), sat + rng.normal(0, 0.05), val + rng.normal(0, 0.04))
    c2 = _hsv(hue + rng.normal(0, 0.05), sat + rng.normal(0, 0.08), val * (1 - contrast))
    return Material(c1, c2, int(rng.choice(patterns)), float(rng.uniform(0.08, 0.5)))


def _noise_texture(rng: np.random.Generator) -> np.ndarray:
    """Smooth tileable value noise in [0, 1] (white noise blurred by periodic box filters)."""
    x = rng.random((NOISE_TEXELS, NOISE_TEXELS))
    for _ in range(3):
        x = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0)) / 3
        x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 3
    x = (x - x.min()) / max(float(np.ptp(x)), 1e-9)
    return x.astype(np.float32)


@lru_cache(maxsize=64)
def building_style(seed: int, building: int) -> BuildingStyle:
    """The style of building `building` (0-based) under `seed`."""
    rng = rng_for(seed, building, 0)
    hue = rng.random()  # the building's base hue drives walls and furniture
    accent = hue + rng.choice([0.08, 0.33, 0.5, 0.67])
    floor_hue = rng.choice([0.07, 0.09, hue + 0.5, rng.random()])  # wood-like or contrasting
    warm = rng.uniform(-1, 1)
    furniture = tuple(
        _material(rng, (hue if i % 2 else accent) + rng.normal(0, 0.06), rng.uniform(0.2, 0.8),
                  rng.uniform(0.25, 0.85), (PLAIN, STRIPES, NOISE, PLAIN), rng.uniform(0.15, 0.5))
        for i in range(rng.integers(4, 7))
    )
    weights = rng.gamma(0.8, 1.0, len(FURNITURE_KINDS))
    return BuildingStyle(
        index=building,
        floor=_material(rng, floor_hue, rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.75),
                        (CHECKS, PLANKS, NOISE, PLANKS), rng.uniform(0.2, 0.6)),
        wall=_material(rng, hue, rng.uniform(0.05, 0.45), rng.uniform(0.6, 0.95), (PLAIN, STRIPES, NOISE),
                       rng.uniform(0.05, 0.25)),
        ceiling=_material(rng, hue, rng.uniform(0.0, 0.1), rng.uniform(0.8, 0.97), (PLAIN, NOISE), 0.08),
        furniture=furniture,
        kind_weights=tuple(float(w) for w in weights / weights.sum()),
        density=float(rng.uniform(0.3, 0.7)),
        room_width=(float(rng.uniform(2.8, 4.5)), float(rng.uniform(5.0, 9.0))),
        room_depth=(float(rng.uniform(2.8, 4.5)), float(rng.uniform(5.0, 9.0))),
        room_height=float(rng.uniform(2.4, 3.4)),
        n_rooms=int(rng.integers(3, 7)),
        window_rate=float(rng.uniform(0.2, 1.5)),
        door_rate=float(rng.uniform(0.2, 1.2)),
        skylight_rate=float(rng.choice([0.0, 0.0, rng.uniform(0.2, 0.8)])),
        lighting=Lighting(
            ambient=float(rng.uniform(0.15, 0.4)),
            tint=_hsv(0.08 if warm > 0 else 0.6, abs(warm) * 0.25, 1.0),
            exposure=float(rng.uniform(0.85, 1.25)),
            falloff_m=float(rng.uniform(3.0, 8.0)),
            top_light=float(rng.uniform(0.0, 0.4)),
        ),
        fov_deg=float(rng.uniform(55.0, 75.0)),
        camera_height=float(rng.uniform(1.4, 1.65)),
        noise=_noise_texture(rng),
    )
