"""Vectorised ray casting of a Scene: per-pixel depth, normals, curvature, classes, shading and colour.

Rays are d = x * right + y * up + forward with x, y in the image plane at unit distance, so the ray
parameter t of a hit *is* its z-depth. Furniture is tested only inside the screen rectangle of its
projected bounding box, which keeps a view at 128 px to a few milliseconds.

Camera-frame axes (normals and `points`): x right, y up, z towards the camera (the camera looks down
-z; OpenGL convention). A surface facing the camera has normal (0, 0, 1), stored as (128, 128, 255).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mas_flower.synthetic.scene import (
    BOX,
    CHECKS,
    CYLINDER,
    FACE_UV,
    NOISE,
    PLANE,
    PLANKS,
    SPHERE,
    STRIPES,
    Camera,
    Scene,
)

#: Distance scale of the reshading label's point light at the camera: shade = cos / (1 + (dist / L)^2).
RESHADE_FALLOFF_M = 5.0
_EPS = 1e-4
_CORNERS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


@dataclass
class Fields:
    """Everything a view's labels are derived from (float fields; escape pixels have hit == False)."""

    depth: np.ndarray  # (S, S) z-depth in metres; inf where the ray leaves the building
    hit: np.ndarray  # (S, S) bool
    normal: np.ndarray  # (S, S, 3) unit normals in the camera frame (zero where no hit)
    curvature: np.ndarray  # (S, S, 2) principal curvatures in 1/m, larger first (convex positive)
    semantic: np.ndarray  # (S, S) uint8 class ids (0 where no hit)
    prim: np.ndarray  # (S, S) int32 primitive ids (-1 where no hit; 0..5 room faces)
    reshading: np.ndarray  # (S, S) in [0, 1]
    albedo: np.ndarray  # (S, S, 3) in [0, 1]
    rgb: np.ndarray  # (S, S, 3) in [0, 1]
    fov: float


def _rays(cam: Camera, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    right, up, fwd = cam.basis()
    c = (np.arange(size) + 0.5 - size / 2) / cam.focal(size)
    xs, ys = c[None, :], -c[:, None]
    return tuple(xs * right[i] + ys * up[i] + fwd[i] for i in range(3))  # type: ignore[return-value]


def _room(scene: Scene, o: np.ndarray, d: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance and face id of every ray from inside the room box; inf through openings."""
    ts, faces = [], []
    for a in range(3):
        with np.errstate(divide="ignore"):
            pos = d[a] > 0
            ts.append(np.where(pos, (scene.room[a] - o[a]) / d[a], -o[a] / d[a]))
        faces.append(2 * a + pos)
    t_all = np.stack(ts)
    axis = t_all.argmin(axis=0)
    t = np.take_along_axis(t_all, axis[None], 0)[0]
    face = np.choose(axis, faces)
    for f, u0, u1, v0, v1 in scene.holes:
        ua, va = FACE_UV[int(f) // 2]
        u = o[ua] + t * d[ua]
        v = o[va] + t * d[va]
        t = np.where((face == f) & (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1), np.inf, t)
    return t, face.astype(np.int32)


def _box(c: np.ndarray, h: np.ndarray, o: np.ndarray, inv: tuple[np.ndarray, ...]) -> np.ndarray:
    near = far = None
    for a in range(3):
        t1 = (c[a] - h[a] - o[a]) * inv[a]
        t2 = (c[a] + h[a] - o[a]) * inv[a]
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        near = lo if near is None else np.maximum(near, lo)
        far = hi if far is None else np.minimum(far, hi)
    return np.where((near <= far) & (near > _EPS), near, np.inf)


def _sphere(c: np.ndarray, r: float, o: np.ndarray, d: tuple[np.ndarray, ...], dd: np.ndarray) -> np.ndarray:
    oc = o - c
    b = oc[0] * d[0] + oc[1] * d[1] + oc[2] * d[2]
    disc = b * b - dd * (oc @ oc - r * r)
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / dd
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _cylinder(c: np.ndarray, h: np.ndarray, o: np.ndarray, d: tuple[np.ndarray, ...]) -> np.ndarray:
    r, y0, y1 = h[0], c[1] - h[1], c[1] + h[1]
    ox, oz = o[0] - c[0], o[2] - c[2]
    a = d[0] * d[0] + d[2] * d[2]
    b = ox * d[0] + oz * d[2]
    disc = b * b - a * (ox * ox + oz * oz - r * r)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / a
        y = o[1] + t * d[1]
        t = np.where((disc >= 0) & (t > _EPS) & (y >= y0) & (y <= y1), t, np.inf)
        if o[1] > y1 or o[1] < y0:  # the cap facing the camera
            yc = y1 if o[1] > y1 else y0
            tc = (yc - o[1]) / d[1]
            px, pz = ox + tc * d[0], oz + tc * d[2]
            t = np.minimum(t, np.where((tc > _EPS) & (px * px + pz * pz <= r * r), tc, np.inf))
    return t


def _screen_rects(scene: Scene, cam: Camera, size: int) -> np.ndarray:
    """Pixel rectangle (y0, y1, x0, x1) holding each furniture primitive's projected bounding box."""
    right, up, fwd = cam.basis()
    f = cam.focal(size)
    corners = scene.centre[6:, None, :] + _CORNERS[None] * scene.half[6:, None, :]
    rel = corners - np.asarray(cam.position)
    zc, xc, yc = rel @ fwd, rel @ right, rel @ up
    rects = np.zeros((len(zc), 4), dtype=np.int64)
    rects[:, [1, 3]] = size
    front = zc.min(axis=1) > 0.01
    if front.any():
        u = f * xc[front] / zc[front] + size / 2
        v = size / 2 - f * yc[front] / zc[front]
        r = np.stack([np.floor(v.min(1)) - 1, np.ceil(v.max(1)) + 1, np.floor(u.min(1)) - 1,
                      np.ceil(u.max(1)) + 1], axis=1)
        rects[front] = np.clip(r, 0, size).astype(np.int64)
    rects[zc.max(axis=1) <= 0] = 0  # wholly behind the camera
    return rects


def cast(scene: Scene, cam: Camera, size: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """z-depth (inf = escaped), primitive id (-1 = escaped) and ray directions of every pixel."""
    o = np.asarray(cam.position, dtype=np.float64)
    d = _rays(cam, size)
    t, face = _room(scene, o, d)
    pid = np.where(np.isfinite(t), face, -1).astype(np.int32)
    with np.errstate(divide="ignore"):
        inv = tuple(1.0 / x for x in d)
    dd = d[0] ** 2 + d[1] ** 2 + d[2] ** 2
    for k, (y0, y1, x0, x1) in enumerate(_screen_rects(scene, cam, size)):
        if y1 <= y0 or x1 <= x0:
            continue
        sl = (slice(y0, y1), slice(x0, x1))
        i = k + 6
        kind = scene.kind[i]
        if kind == BOX:
            tk = _box(scene.centre[i], scene.half[i], o, tuple(a[sl] for a in inv))
        elif kind == SPHERE:
            tk = _sphere(scene.centre[i], scene.half[i, 0], o, tuple(a[sl] for a in d), dd[sl])
        else:
            tk = _cylinder(scene.centre[i], scene.half[i], o, tuple(a[sl] for a in d))
        cur = t[sl]
        m = tk < cur
        if m.any():
            cur[m] = tk[m]
            pid[sl][m] = i
    return t, pid, d


def _surface(scene: Scene, pid: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World normals (S, S, 3) and principal curvatures (S, S, 2) at hit points p of primitives pid."""
    kind = scene.kind[pid]
    half = scene.half[pid]
    q = (p - scene.centre[pid]) / half
    aq = np.abs(q)
    n_box = np.where(aq == aq.max(axis=-1, keepdims=True), np.sign(q), 0.0)
    radial = np.sqrt(q[..., 0] ** 2 + q[..., 2] ** 2)
    cap = aq[..., 1] > radial
    n_cyl = np.where(cap[..., None], n_box * np.array([0.0, 1.0, 0.0]), q * np.array([1.0, 0.0, 1.0]))
    n = np.select([kind[..., None] == PLANE, kind[..., None] == BOX, kind[..., None] == CYLINDER],
                  [scene.normal[pid], n_box, n_cyl], q)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    inv_r = 1.0 / half[..., 0]
    sphere = kind == SPHERE
    k1 = np.where(sphere | ((kind == CYLINDER) & ~cap), inv_r, 0.0)
    k2 = np.where(sphere, inv_r, 0.0)
    return n, np.stack([k1, k2], axis=-1)


def _albedo(scene: Scene, pid: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Procedural texture in world coordinates on the plane the surface mostly faces (triplanar)."""
    mats = scene.materials
    mat = scene.material[pid]
    c1 = np.array([m.colour for m in mats])[mat]
    c2 = np.array([m.colour2 for m in mats])[mat]
    pattern = np.array([m.pattern for m in mats])[mat]
    period = np.array([m.period for m in mats])[mat]
    axis = np.abs(n).argmax(axis=-1)
    u = np.where(axis == 0, p[..., 2], p[..., 0]) / period
    v = np.where(axis == 1, p[..., 2], p[..., 1]) / period
    tex = scene.noise
    nn = tex.shape[0]
    noise = tex[np.floor(v * 8).astype(np.int64) % nn, np.floor(u * 8).astype(np.int64) % nn]
    stripes = (u % 1.0 < 0.5).astype(np.float64)
    checks = ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    joints = (v % 1.0 < 0.06) | ((u * 0.25 + np.floor(v) * 0.37) % 1.0 < 0.03)
    planks = np.maximum(joints, 0.5 * noise)
    w = np.select([pattern == STRIPES, pattern == CHECKS, pattern == NOISE, pattern == PLANKS],
                  [stripes, checks, noise, planks], 0.0)[..., None]
    return c1 * (1 - w) + c2 * w


def _outside(d: tuple[np.ndarray, ...]) -> np.ndarray:
    """Daylight seen through openings: sky above the horizon, ground below."""
    elev = d[1] / np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    s = np.clip(elev * 2.5, 0, 1)[..., None]
    sky = np.array([0.9, 0.93, 0.97]) * (1 - s) + np.array([0.5, 0.68, 0.92]) * s
    ground = np.array([0.55, 0.52, 0.45])
    return np.where((elev >= 0)[..., None], sky, ground)


def render_view(scene: Scene, cam: Camera, size: int, rng: np.random.Generator | None = None) -> Fields:
    """Ray-cast one size x size view; `rng` adds the RGB sensor noise (None: noiseless)."""
    t, pid, d = cast(scene, cam, size)
    hit = pid >= 0
    pc = np.maximum(pid, 0)
    ts = np.where(hit, t, 0.0)
    o = np.asarray(cam.position)
    dv = np.stack(d, axis=-1)
    p = o + ts[..., None] * dv
    n, curv = _surface(scene, pc, p)
    right, up, fwd = cam.basis()
    n_cam = np.stack([n @ right, n @ up, -(n @ fwd)], axis=-1)
    dn = np.sqrt((dv * dv).sum(-1))
    cos = np.clip(-(n * dv).sum(-1) / dn, 0.0, 1.0)
    dist = ts * dn
    reshade = cos / (1 + (dist / RESHADE_FALLOFF_M) ** 2)
    albedo = _albedo(scene, pc, p, n)
    lt = scene.lighting
    light = (lt.ambient + (1 - lt.ambient) * cos / (1 + (dist / lt.falloff_m) ** 2)
             + lt.top_light * np.maximum(n[..., 1], 0.0))
    rgb = albedo * light[..., None] * np.array(lt.tint) * lt.exposure
    if not hit.all():
        rgb = np.where(hit[..., None], rgb, _outside(d))
    if rng is not None:
        rgb = rgb + rng.normal(0.0, 0.012, rgb.shape)
    h3 = hit[..., None]
    return Fields(
        depth=np.where(hit, t, np.inf).astype(np.float32),
        hit=hit,
        normal=np.where(h3, n_cam, 0.0).astype(np.float32),
        curvature=np.where(h3, curv, 0.0).astype(np.float32),
        semantic=np.where(hit, scene.semantic[pc], 0).astype(np.uint8),
        prim=pid,
        reshading=np.where(hit, reshade, 0.0).astype(np.float32),
        albedo=np.where(h3, albedo, 0.0).astype(np.float32),
        rgb=np.clip(rgb, 0.0, 1.0).astype(np.float32),
        fov=cam.fov,
    )
