"""Derived labels (edges, keypoints) and the encoding of every field into Taskonomy's stored values.

Encodings come from mas_flower.tasks: targets go through `Task.encode`, then round and clip to the
task's bit depth. Quantities Taskonomy defines in raw units (depth in 1/512 m, edge and keypoint
responses) are computed as raw values directly; their gains are chosen so that the decoded targets
land roughly where real Taskonomy's do (raw means near the decode offsets 718, 56 and 50).
"""

from __future__ import annotations

import numpy as np
import torch

from mas_flower.synthetic.render import Fields
from mas_flower.tasks import DEPTH_UNITS_PER_METRE, TASKS, Task

#: Decoded principal_curvature target = curvature (1/m) x this (a sphere of r = 0.4 m decodes to 1).
CURVATURE_SCALE_M = 0.4
#: Raw edge_occlusion value on a full-strength occlusion edge.
OCCLUSION_PEAK = 1000.0
#: Relative depth jump between neighbouring pixels of different surfaces at which an occlusion edge
#: starts, and at which it reaches full strength.
OCCLUSION_JUMP = (0.04, 0.12)
#: Raw edge_texture per unit of grey-level gradient (grey in [0, 1], per pixel, after blurring); gives
#: a raw mean near 700 at 128 px.
TEXTURE_GAIN = 80000.0
#: Raw keypoints2d per unit of corner strength (Harris response ** 0.25, linear in contrast); gives a
#: raw mean near 50 at 128 px.
KEYPOINT_GAIN = 34000.0
HARRIS_K = 0.05
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
_GREY = np.array([0.299, 0.587, 0.114])


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable 5-tap binomial blur (sigma ~ 1 px), edges replicated."""
    p = np.pad(x, 2, mode="edge")
    h, w = x.shape
    y = sum(k * p[:, i:i + w] for i, k in enumerate(_BINOMIAL))
    return sum(k * y[i:i + h, :] for i, k in enumerate(_BINOMIAL))


def _sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image gradients (d/dx, d/dy) in grey levels per pixel (Sobel / 8)."""
    p = np.pad(x, 1, mode="edge")
    dx = p[:, 2:] - p[:, :-2]
    dy = p[2:, :] - p[:-2, :]
    gx = (dx[:-2] + 2 * dx[1:-1] + dx[2:]) / 8
    gy = (dy[:, :-2] + 2 * dy[:, 1:-1] + dy[:, 2:]) / 8
    return gx, gy


def grey(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _GREY


def occlusion_edges(fields: Fields) -> np.ndarray:
    """Edge strength in [0, 1] on both sides of depth discontinuities between different surfaces.

    Neighbouring pixels on different primitives (all room faces count as one surface, so creases are
    not edges) whose depths differ by a relative jump above OCCLUSION_JUMP; rays that leave the
    building count as infinitely far. Zero on escaped pixels (they carry no depth).
    """
    z = np.where(fields.hit, fields.depth, 1e6).astype(np.float64)
    group = np.where(fields.prim < 6, 0, fields.prim)
    group = np.where(fields.hit, group, -1)
    lo, hi = OCCLUSION_JUMP
    e = np.zeros_like(z)
    for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                 ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):
        za, zb = z[a], z[b]
        rel = np.abs(za - zb) / np.minimum(za, zb)
        s = np.clip((rel - lo) / (hi - lo), 0.0, 1.0) * (group[a] != group[b])
        e[a] = np.maximum(e[a], s)
        e[b] = np.maximum(e[b], s)
    return np.where(fields.hit, e, 0.0)


def texture_edges(rgb: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the blurred grey image (grey levels per pixel)."""
    gx, gy = _sobel(_blur(grey(rgb)))
    return np.sqrt(gx * gx + gy * gy)


def keypoints(rgb: np.ndarray) -> np.ndarray:
    """Corner strength: the positive Harris response of the blurred grey image to the power 1/4."""
    gx, gy = _sobel(_blur(grey(rgb)))
    sxx, syy, sxy = _blur(gx * gx), _blur(gy * gy), _blur(gx * gy)
    r = sxx * syy - sxy * sxy - HARRIS_K * (sxx + syy) ** 2
    return np.sqrt(np.sqrt(np.maximum(r, 0.0)))


def _store(task: Task, raw: np.ndarray | torch.Tensor) -> np.ndarray:
    """Round and clip raw values to the task's bit depth; (H, W) for grey, (H, W, C) for colour."""
    x = raw.numpy() if isinstance(raw, torch.Tensor) else raw
    if x.ndim == 4:  # (1, C, H, W) from Task.encode
        x = np.moveaxis(x[0], 0, -1)
    if x.ndim == 3 and x.shape[-1] < task.png_channels:  # reshading keeps the mean, curvature 2 of 3
        fill = np.repeat(x[..., :1], task.png_channels, -1) if task.keep == "mean" else None
        x = fill if fill is not None else np.concatenate(
            [x, np.zeros(x.shape[:2] + (task.png_channels - x.shape[-1],), x.dtype)], axis=-1)
    if task.png_channels == 1 and x.ndim == 3:
        x = x[..., 0]
    dtype = np.uint8 if task.bits == 8 else np.uint16
    return np.clip(np.rint(x), 0, 2**task.bits - 1).astype(dtype)


def _encode(task: Task, target: np.ndarray) -> np.ndarray:
    """Target (H, W) or (H, W, C) -> stored values via Task.encode."""
    t = torch.from_numpy(np.ascontiguousarray(target))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)[None]  # (1, H, W) ids or (1, C, H, W)
    return _store(task, task.encode(t))


def encode_fields(fields: Fields) -> dict[str, np.ndarray]:
    """Stored arrays of every task letter (uint8 / uint16 as tasks.py states) for one rendered view."""
    out: dict[str, np.ndarray] = {}
    for letter, task in TASKS.items():
        if letter == "s":
            out[letter] = _encode(task, fields.semantic.astype(np.int64))
        elif letter == "d":
            z = np.where(fields.hit, fields.depth, np.inf).astype(np.float64) * DEPTH_UNITS_PER_METRE
            out[letter] = _store(task, np.where(np.isfinite(z), z, 2**task.bits - 1))
        elif letter == "n":
            out[letter] = _encode(task, fields.normal)
        elif letter == "c":
            out[letter] = _encode(task, fields.curvature * CURVATURE_SCALE_M)
        elif letter == "r":
            shade = fields.reshading.astype(np.float64) * (2**task.bits - 1) / task.scale
            out[letter] = _encode(task, ((shade - task.offset[0]) / task.std[0])[..., None])
        elif letter == "a":
            out[letter] = _encode(task, fields.rgb)
        elif letter == "e":
            out[letter] = _store(task, occlusion_edges(fields) * OCCLUSION_PEAK)
        elif letter == "t":
            out[letter] = _store(task, texture_edges(fields.rgb) * TEXTURE_GAIN)
        elif letter == "k":
            out[letter] = _store(task, keypoints(fields.rgb) * KEYPOINT_GAIN)
        else:
            raise ValueError(f"synthetic generator has no rule for task {letter!r} ({task.domain})")
    return out
