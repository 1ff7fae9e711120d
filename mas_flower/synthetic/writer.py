"""Writing a synthetic dataset in Taskonomy's layout: PNGs per domain, point_info JSON, synthetic.json.

The dataset is written into a hidden sibling folder and renamed into place at the end, so an
interrupted run never looks complete; `synthetic.json` (written last) records the parameters and
`"complete": true`. An existing complete dataset with the same parameters is reused as is.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mas_flower.synthetic.labels import CURVATURE_SCALE_M, encode_fields
from mas_flower.synthetic.layout import VIEWS_PER_POINT, make_camera, view_of
from mas_flower.synthetic.names import building_names
from mas_flower.synthetic.render import RESHADE_FALLOFF_M, Fields, render_view
from mas_flower.synthetic.scene import SEMANTIC_CLASSES, Camera, rng_for
from mas_flower.tasks import RGB_DOMAIN, TASKS

#: Bump when the generator's output changes, so an old dataset is not mistaken for a current one.
GENERATOR_VERSION = 1
INFO_FILE = "synthetic.json"
POINT_INFO_DOMAIN = "point_info"
#: zlib level: at 128 px, 1 takes 4.8 ms and 94 kB per view (9 PNGs), 6 takes 10.6 ms and 82 kB.
PNG_COMPRESS_LEVEL = 1
#: The parameters that must agree for an existing dataset to be reused.
_KEY_PARAMS = ("version", "buildings", "views", "size", "seed")
#: Work (views, counted at 32 px: a view of s px costs (s / 32)² of one) from which `workers=None`
#: renders on every core. One 32 px view takes about 9 ms on one core (1,000 buildings x 8 views:
#: 68 s on one core, 36 s on two) and starting the workers up to 3 s (the forkserver, see
#: `_pool_context`; a fork costs nothing), so smaller datasets render in this process.
PARALLEL_FROM_VIEWS = 500


def _letter_domains() -> list[tuple[str, str]]:
    """(letter, domain) of every task; the rgb task's domain is the input image folder."""
    return [(letter, task.domain) for letter, task in TASKS.items()]


def file_name(point: int, view: int, domain: str, ext: str = "png") -> str:
    return f"point_{point}_view_{view}_domain_{domain}.{ext}"


def view_fields(seed: int, building: int, view: int, size: int) -> tuple[Fields, Camera]:
    """The float fields (depth in m, camera-frame normals, curvature, ...) and camera of one view."""
    scene, cam = make_camera(seed, building, view)
    return render_view(scene, cam, size, rng_for(seed, building, 4, view)), cam


def render_building_view(seed: int, building: int, view: int, size: int) -> tuple[dict[str, np.ndarray], dict]:
    """Stored arrays per domain and the point_info record of one view (no files written)."""
    fields, cam = view_fields(seed, building, view, size)
    encoded = encode_fields(fields)
    point, sub, room = view_of(seed, building, view)
    right, up, fwd = cam.basis()
    info = {
        "point": point, "view": sub, "view_index": view, "room": room,
        "field_of_view_rads": cam.fov, "resolution": size,
        "camera_location": list(cam.position), "camera_yaw_rads": cam.yaw, "camera_pitch_rads": cam.pitch,
        "camera_roll_rads": 0.0,
        "camera_right": right.tolist(), "camera_up": up.tolist(), "camera_forward": fwd.tolist(),
    }
    return {domain: encoded[letter] for letter, domain in _letter_domains()}, info


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def write_building(root: Path, seed: int, building: int, name: str, views: int, size: int) -> int:
    """Render and write every view of one building under root; returns the number of views."""
    for domain in (*dict(_letter_domains()).values(), POINT_INFO_DOMAIN):
        (root / domain / name).mkdir(parents=True, exist_ok=True)
    for v in range(views):
        arrays, info = render_building_view(seed, building, v, size)
        point, sub = info["point"], info["view"]
        for domain, arr in arrays.items():
            _save_png(arr, root / domain / name / file_name(point, sub, domain))
        info["building"] = name
        (root / POINT_INFO_DOMAIN / name / file_name(point, sub, POINT_INFO_DOMAIN, "json")).write_text(
            json.dumps(info, indent=1, sort_keys=True))
    return views


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else every core)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_workers(buildings: int, views: int, size: int) -> int:
    """The processes `generate_dataset(workers=None)` renders with: one for a small dataset (fewer
    than `PARALLEL_FROM_VIEWS` views at 32 px, or one building), else every available core (at most
    one per building). The output is the same whatever the number."""
    work = buildings * views * (size / 32) ** 2
    if buildings < 2 or work < PARALLEL_FROM_VIEWS:
        return 1
    return min(available_cores(), buildings)


def _pool_context() -> BaseContext:
    """How the workers start: `fork` (as torch's DataLoader does: no re-import of torch) when this process
    runs no other Python thread; else (e.g. a ServerApp inside Flower, beside gRPC and Ray threads, where a
    fork may copy a lock another thread holds) the `forkserver`, a clean process that imports this module
    once and forks the workers from itself (about 3 s once); `spawn` where neither exists."""
    methods = get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return get_context("fork")
    if "forkserver" in methods:
        context = get_context("forkserver")
        context.set_forkserver_preload([__name__])  # no effect once a forkserver runs
        return context
    return get_context("spawn")


def _write_building_job(job: tuple[str, int, int, str, int, int]) -> int:
    root, seed, building, name, views, size = job
    return write_building(Path(root), seed, building, name, views, size)


def read_info(root: Path) -> dict[str, Any] | None:
    """The synthetic.json of a dataset root, or None when absent or unreadable."""
    try:
        return json.loads((Path(root) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: Path, params: dict[str, Any] | None = None) -> bool:
    """Whether root holds a completely written synthetic dataset (with these key parameters, if given)."""
    info = read_info(root)
    if not info or info.get("complete") is not True:
        return False
    return params is None or all(info.get(k) == params[k] for k in _KEY_PARAMS)


def _params(buildings: int, views: int, size: int, seed: int) -> dict[str, Any]:
    for key, value, low in (("buildings", buildings, 1), ("views", views, 1), ("size", size, 8), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"synthetic dataset: {key} must be an integer >= {low}, got {value!r}")
    return {
        "generator": "mas_flower.synthetic", "version": GENERATOR_VERSION,
        "buildings": int(buildings), "views": int(views), "size": int(size), "seed": int(seed),
        "building_names": building_names(buildings), "views_per_point": VIEWS_PER_POINT,
        "domains": [RGB_DOMAIN, *(d for _, d in _letter_domains() if d != RGB_DOMAIN)],
        "point_info": POINT_INFO_DOMAIN,
        "semantic_classes": list(SEMANTIC_CLASSES),
        "conventions": {
            "world": "metres, y up, floor at y = 0",
            "normal": "camera frame: x right, y up, z towards the camera; stored (n + 1) / 2 * 255",
            "depth": "z-depth (along the optical axis), 1/512 m; 65535 where the ray leaves the building",
            "principal_curvature": f"channels 0, 1: principal curvatures k1 >= k2 (1/m, convex positive) "
                                   f"x {CURVATURE_SCALE_M} m as the decoded target; channel 2: 0",
            "reshading": f"Lambert cosine from a point light at the camera / (1 + (distance / "
                         f"{RESHADE_FALLOFF_M} m)^2), grey in all 3 channels",
        },
    }


def generate_dataset(out: Path, buildings: int, views: int, size: int, seed: int, workers: int | None = None,
                     progress: Callable[[int], None] | None = None) -> None:
    """Write `buildings` x `views` synthetic views of size x size px under `out` (see module doc).

    `workers`: processes rendering buildings in parallel; None (default): `default_workers` (every
    core for a large dataset, this process alone for a small one). The files are byte-identical
    whatever the number: each view depends only on (seed, building, view).
    Reuses `out` without work when it already holds a complete dataset with the same parameters;
    refuses (ValueError) any other non-empty `out`, and a `workers` that is not an integer >= 1 or None.
    `progress(k)`, if given, is called after the k-th building (in building order) is written.
    """
    params = _params(buildings, views, size, seed)
    if workers is None:
        workers = default_workers(buildings, views, size)
    if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"synthetic dataset: workers must be an integer >= 1 (or None: every core for a large "
                         f"dataset), got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthetic dataset: output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if is_complete(out, params):
            return
        found = read_info(out)
        what = (f"a synthetic dataset with other parameters ({ {k: found.get(k) for k in _KEY_PARAMS} })"
                if found else "files that are not a complete synthetic dataset")
        raise ValueError(f"synthetic dataset: output folder {out} is not empty and holds {what}; "
                         f"wanted {({k: params[k] for k in _KEY_PARAMS})}. Choose another --out or remove it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        jobs = [(str(tmp), seed, b, name, views, size) for b, name in enumerate(params["building_names"])]
        if workers == 1 or buildings == 1:
            for k, job in enumerate(jobs, 1):
                _write_building_job(job)
                if progress is not None:
                    progress(k)
        else:  # one torch thread per worker
            with ProcessPoolExecutor(min(workers, buildings), mp_context=_pool_context(),
                                     initializer=_worker_init) as pool:
                for k, _ in enumerate(pool.map(_write_building_job, jobs), 1):
                    if progress is not None:
                        progress(k)
        (tmp / INFO_FILE).write_text(json.dumps({**params, "complete": True}, indent=1))
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        try:
            os.rename(tmp, out)
        except OSError:
            if not is_complete(out, params):  # not a concurrent writer of the same dataset: a real error
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
