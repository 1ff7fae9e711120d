"""The synthetic generator: labels obey the geometry, files follow tasks.py, output is reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_png, read_file

from mas_flower.synthetic import (
    BUILDING_NAMES,
    CURVATURE_SCALE_M,
    POINT_INFO_DOMAIN,
    SEMANTIC_CLASSES,
    Camera,
    Lighting,
    Material,
    SceneBuilder,
    building_names,
    encode_fields,
    generate_dataset,
    is_complete,
    render_building_view,
    render_view,
)
from mas_flower.synthetic import writer as writer_mod
from mas_flower.synthetic.labels import OCCLUSION_PEAK
from mas_flower.synthetic.layout import make_room
from mas_flower.synthetic.render import RESHADE_FALLOFF_M
from mas_flower.synthetic.style import building_style
from mas_flower.tasks import DEPTH_UNITS_PER_METRE, TASKS

SIZE, BUILDINGS, VIEWS, SEED = 48, 2, 3, 0
NO_DEPTH = 2 ** TASKS["d"].bits - 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, buildings=BUILDINGS, views=VIEWS, size=SIZE, seed=SEED)
    return root


def _views(root: Path) -> list[tuple[str, str]]:
    """(building, file prefix 'point_P_view_V') of every view in the dataset."""
    rgb = TASKS["a"].domain
    return sorted((p.parent.name, p.name.split("_domain_")[0]) for p in (root / rgb).glob("*/*.png"))


def _load(root: Path, letter: str, building: str, prefix: str) -> np.ndarray:
    domain = TASKS[letter].domain
    return np.array(Image.open(root / domain / building / f"{prefix}_domain_{domain}.png"))


def _decode(letter: str, raw: np.ndarray) -> np.ndarray:
    """Stored array -> tasks.py's decoded target as (C, H, W) numpy (ids as (H, W))."""
    t = torch.from_numpy(raw.astype(np.int64) if raw.dtype == np.uint16 else raw)
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    return TASKS[letter].decode(t)[0].numpy()


def _info(root: Path, building: str, prefix: str) -> dict:
    path = root / POINT_INFO_DOMAIN / building / f"{prefix}_domain_{POINT_INFO_DOMAIN}.json"
    return json.loads(path.read_text())


def _camera_points(depth_m: np.ndarray, fov: float) -> np.ndarray:
    """Back-project z-depth to camera-frame points (x right, y up, z towards the camera)."""
    s = depth_m.shape[0]
    f = (s / 2) / np.tan(fov / 2)
    c = (np.arange(s) + 0.5 - s / 2) / f
    x, y = np.meshgrid(c, -c)
    return np.stack([x * depth_m, y * depth_m, -depth_m], axis=-1)


def test_building_names() -> None:
    assert len(BUILDING_NAMES) == 32 and BUILDING_NAMES[0] == "allensville" and BUILDING_NAMES[-1] == "uvalda"
    assert building_names(3) == ["allensville", "beechwood", "benevolence"]
    names = building_names(34)
    assert names[31] == "uvalda" and names[32:] == ["allensville2", "beechwood2"]
    assert len(set(names)) == 34


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io's image codecs
def test_layout_and_bit_depths(dataset: Path) -> None:
    info = json.loads((dataset / "synthetic.json").read_text())
    assert info["complete"] is True and info["size"] == SIZE and info["seed"] == SEED
    views = _views(dataset)
    assert len(views) == BUILDINGS * VIEWS
    assert {b for b, _ in views} == set(building_names(BUILDINGS))
    modes = {(8, 1): "L", (8, 3): "RGB", (16, 1): "I;16"}
    for building, prefix in views:
        for task in TASKS.values():
            path = dataset / task.domain / building / f"{prefix}_domain_{task.domain}.png"
            im = Image.open(path)
            assert im.mode == modes[(task.bits, task.png_channels)], path
            t = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
            assert t.dtype == (torch.uint8 if task.bits == 8 else torch.uint16), path
            assert tuple(t.shape) == (task.png_channels, SIZE, SIZE), path
        meta = _info(dataset, building, prefix)
        assert 0.5 < meta["field_of_view_rads"] < 2.0 and len(meta["camera_location"]) == 3
        assert 1.2 < meta["camera_location"][1] < 1.9  # human eye height
        assert {"camera_yaw_rads", "camera_pitch_rads"} <= meta.keys()


def test_escape_rays_and_semantic_agree(dataset: Path) -> None:
    """No depth exactly where no class: rays that leave the building; classes stay within 0..17."""
    for building, prefix in _views(dataset):
        depth, seg = _load(dataset, "d", building, prefix), _load(dataset, "s", building, prefix)
        np.testing.assert_array_equal(depth == NO_DEPTH, seg == 0)
        assert seg.max() < len(SEMANTIC_CLASSES) and seg.max() < TASKS["s"].out_channels
        valid = depth[depth != NO_DEPTH] / DEPTH_UNITS_PER_METRE
        assert valid.min() > 0.05 and valid.max() < 16  # inside a room, all valid for the mask


def test_normals_agree_with_depth(dataset: Path) -> None:
    """Normals from the back-projected depth map match the stored normals on planar interiors."""
    angles = []
    for building, prefix in _views(dataset):
        raw_d = _load(dataset, "d", building, prefix)
        fov = _info(dataset, building, prefix)["field_of_view_rads"]
        p = _camera_points(raw_d.astype(np.float64) / DEPTH_UNITS_PER_METRE, fov)
        du = (p[1:-1, 2:] - p[1:-1, :-2])  # towards +x (image right)
        dv = (p[2:, 1:-1] - p[:-2, 1:-1])  # towards image down
        n_depth = np.cross(dv, du)
        n_depth /= np.linalg.norm(n_depth, axis=-1, keepdims=True) + 1e-12
        normal = _load(dataset, "n", building, prefix)
        n_stored = np.moveaxis(_decode("n", normal), 0, -1)[1:-1, 1:-1]
        n_stored /= np.linalg.norm(n_stored, axis=-1, keepdims=True)
        # planar interior: the 5x5 neighbourhood has one stored normal, one class, and depth everywhere
        key = normal.astype(np.int64) @ [1, 256, 65536] + _load(dataset, "s", building, prefix).astype(np.int64) * 2**24
        key = np.where(raw_d == NO_DEPTH, -1, key)
        same = np.ones((SIZE - 4, SIZE - 4), bool)
        for dy in range(5):
            for dx in range(5):
                same &= key[dy:dy + SIZE - 4, dx:dx + SIZE - 4] == key[2:-2, 2:-2]
        same &= key[2:-2, 2:-2] >= 0
        cos = (n_depth[1:-1, 1:-1] * n_stored[1:-1, 1:-1]).sum(-1)[same]
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    angles = np.concatenate(angles)
    assert angles.size > 0.3 * BUILDINGS * VIEWS * SIZE * SIZE
    assert np.median(angles) < 10.0, np.median(angles)
    assert np.mean(angles < 20) > 0.8


def test_reshading_follows_normals_and_depth(dataset: Path) -> None:
    """Reshading = cos(angle to the camera ray) / (1 + (distance / L)^2), recomputed from the files."""
    errs = []
    for building, prefix in _views(dataset):
        raw_d = _load(dataset, "d", building, prefix)
        fov = _info(dataset, building, prefix)["field_of_view_rads"]
        p = _camera_points(raw_d.astype(np.float64) / DEPTH_UNITS_PER_METRE, fov)
        n = np.moveaxis(_decode("n", _load(dataset, "n", building, prefix)), 0, -1)
        dist = np.linalg.norm(p, axis=-1)
        expect = np.clip(-(n * p).sum(-1) / dist, 0, 1) / (1 + (dist / RESHADE_FALLOFF_M) ** 2)
        shade = _load(dataset, "r", building, prefix).mean(-1) / 255.0
        ok = raw_d != NO_DEPTH
        errs.append(np.abs(shade - expect)[ok])
    errs = np.concatenate(errs)
    assert np.median(errs) < 0.02 and np.mean(errs < 0.05) > 0.95


def _depth_jump(depth_m: np.ndarray) -> np.ndarray:
    """Largest relative depth jump from each pixel to its 4-neighbours (escaped = infinitely far)."""
    z = np.pad(depth_m, 1, mode="edge")
    c = z[1:-1, 1:-1]
    jump = np.zeros_like(c)
    for nb in (z[:-2, 1:-1], z[2:, 1:-1], z[1:-1, :-2], z[1:-1, 2:]):
        jump = np.maximum(jump, np.abs(nb - c) / np.minimum(nb, c))
    return jump


def test_occlusion_edges_lie_on_depth_jumps(dataset: Path) -> None:
    strong_ok, strong_n, jumps_ok, jumps_n = 0, 0, 0, 0
    for building, prefix in _views(dataset):
        raw_d = _load(dataset, "d", building, prefix).astype(np.float64)
        z = np.where(raw_d == NO_DEPTH, 1e6, raw_d / DEPTH_UNITS_PER_METRE)
        jump = _depth_jump(z)
        edge = _load(dataset, "e", building, prefix).astype(np.float64)
        valid = raw_d != NO_DEPTH
        strong = edge >= OCCLUSION_PEAK / 2
        strong_n += int(strong.sum())
        strong_ok += int((strong & (jump > 0.08)).sum())
        big = valid & (jump > 0.5)
        jumps_n += int(big.sum())
        jumps_ok += int((big & strong).sum())
        assert np.all(edge[~valid] == 0)
    assert strong_n > 0 and jumps_n > 0
    assert strong_ok / strong_n > 0.9
    assert jumps_ok / jumps_n > 0.95


def _test_scene(hole: bool = False) -> tuple[SceneBuilder, Camera]:
    plain = Material((0.6, 0.6, 0.6), (0.4, 0.4, 0.4), 0, 0.2)
    b = SceneBuilder((6.0, 3.0, 6.0), (0, 0, 0), [plain], Lighting(0.3, (1.0, 1.0, 1.0), 1.0, 5.0, 0.2),
                     np.zeros((8, 8), np.float32))
    b.sphere((3.0, 1.5, 4.5), 0.5, "vase", 0)
    b.cylinder(1.8, 4.0, 0.3, 0.0, 2.0, "column", 0)
    b.box((3.8, 0.0, 3.5), (4.6, 0.8, 4.3), "cabinet", 0)
    if hole:
        b.hole(5, 3.8, 5.5, 1.0, 2.6)  # far wall (z = 6), right of the sphere
    return b, Camera((3.0, 1.5, 1.0), 0.0, 0.0, np.deg2rad(70))


def test_curvature_from_primitives() -> None:
    b, cam = _test_scene()
    scene = b.build()
    f = render_view(scene, cam, 64)
    sphere, cyl, box = 6, 7, 8
    assert {sphere, cyl, box} <= set(np.unique(f.prim))
    np.testing.assert_allclose(f.curvature[f.prim == sphere], 2.0, rtol=1e-6)
    k = f.curvature[f.prim == cyl]
    assert np.allclose(k[:, 1], 0) and np.mean(np.isclose(k[:, 0], 1 / 0.3)) > 0.9  # side; cap is flat
    planar = (f.prim < 6) | (f.prim == box)
    assert np.all(f.curvature[planar] == 0)
    # and through the stored encoding: decoded target / scale gives curvature in 1/m
    c = _decode("c", encode_fields(f)["c"]) / CURVATURE_SCALE_M
    np.testing.assert_allclose(c[0][f.prim == sphere], 2.0, atol=0.1)
    np.testing.assert_allclose(c[1][f.prim == sphere], 2.0, atol=0.3)
    assert np.abs(c[:, planar]).max() < 0.3
    # sphere normals: the pixel nearest the sphere's centre faces the camera
    n_mid = f.normal[f.prim == sphere]
    assert n_mid[:, 2].max() > 0.99


def test_escape_rays_through_openings() -> None:
    b, cam = _test_scene(hole=True)
    f = render_view(b.build(), cam, 64)
    enc = encode_fields(f)
    hole = ~f.hit
    assert 50 < hole.sum() < 64 * 64 / 2
    assert np.all(enc["d"][hole] == NO_DEPTH) and np.all(enc["s"][hole] == 0)
    assert np.all(enc["d"][~hole] < NO_DEPTH) and np.all(enc["s"][~hole] > 0)
    e = enc["e"].astype(np.float64)  # the wall around the opening is an occlusion edge
    ring = np.zeros_like(hole)
    ring[1:-1, 1:-1] = ~hole[1:-1, 1:-1] & (hole[:-2, 1:-1] | hole[2:, 1:-1] | hole[1:-1, :-2] | hole[1:-1, 2:])
    assert ring.any() and np.all(e[ring] >= OCCLUSION_PEAK / 2)
    b2, _ = _test_scene(hole=False)
    assert render_view(b2.build(), cam, 64).hit.all()


def _spread(feats: dict[int, list[np.ndarray]]) -> tuple[float, float]:
    """Mean distance between views of different buildings and between views of the same building."""
    within, between = [], []
    for b1, f1 in feats.items():
        for b2, f2 in feats.items():
            for i, x in enumerate(f1):
                for j, y in enumerate(f2):
                    if (b1, i) < (b2, j):
                        (within if b1 == b2 else between).append(np.linalg.norm(x - y))
    return float(np.mean(between)), float(np.mean(within))


def test_buildings_differ_more_than_views() -> None:
    """Per-view colours cluster by building (palette, lighting): the federation is non-IID."""
    mean_rgb: dict[int, list[np.ndarray]] = {b: [] for b in range(4)}
    wall_rgb: dict[int, list[np.ndarray]] = {b: [] for b in range(4)}
    wall = SEMANTIC_CLASSES.index("wall")
    for b in mean_rgb:
        for v in range(4):
            arrays, _ = render_building_view(SEED, b, v, 32)
            rgb = arrays[TASKS["a"].domain].reshape(-1, 3) / 255
            seg = arrays[TASKS["s"].domain].ravel()
            mean_rgb[b].append(rgb.mean(0))
            wall_rgb[b].append(rgb[seg == wall].mean(0) if (seg == wall).any() else rgb.mean(0))
    between, within = _spread(mean_rgb)
    assert between > 1.3 * within, (between, within)
    between, within = _spread(wall_rgb)
    assert between > 1.5 * within, (between, within)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_view_independent(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "a", buildings=2, views=2, size=32, seed=5)
    generate_dataset(tmp_path / "b", buildings=2, views=2, size=32, seed=5, workers=2)
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert len(ta) == 2 * 2 * (len(TASKS) + 1) + 1 and ta == tb
    # a view rendered alone, with no cached building state, gives the same arrays as the files
    building_style.cache_clear()
    make_room.cache_clear()
    arrays, _ = render_building_view(5, 1, 1, 32)
    for domain, arr in arrays.items():
        name = f"{domain}/{building_names(2)[1]}/point_0_view_1_domain_{domain}.png"
        np.testing.assert_array_equal(np.array(Image.open(tmp_path / "a" / name)), arr)
    generate_dataset(tmp_path / "c", buildings=1, views=2, size=32, seed=6)
    assert _tree(tmp_path / "c") != {k: v for k, v in ta.items() if k in _tree(tmp_path / "c")}


def test_reuse_and_refusal(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_dataset(out, buildings=1, views=1, size=16, seed=0)
    assert is_complete(out, {"version": 1, "buildings": 1, "views": 1, "size": 16, "seed": 0})
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    generate_dataset(out, buildings=1, views=1, size=16, seed=0)  # identical: reused, untouched
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(ValueError, match="other parameters"):
        generate_dataset(out, buildings=1, views=1, size=16, seed=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=str(foreign)):
        generate_dataset(foreign, buildings=1, views=1, size=16, seed=0)
    assert (foreign / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_dataset(empty, buildings=1, views=1, size=16, seed=0)
    assert is_complete(empty)


def test_interrupted_run_leaves_nothing_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fail_second(*args: object) -> int:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    real = writer_mod.write_building
    monkeypatch.setattr(writer_mod, "write_building", fail_second)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "x", buildings=2, views=1, size=16, seed=0)
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []
    assert not is_complete(tmp_path / "x")


def test_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="views"):
        generate_dataset(tmp_path / "x", buildings=1, views=0, size=16, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_dataset(tmp_path / "x", buildings=1, views=1, size=16, seed=-1)
