"""The Taskonomy loader on hand-made PNGs with known raw values (docs/design.md, section "Taskonomy's encodings")."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import mas_flower.data.prepare as prepare
from mas_flower.data import DataError, clear_memory_cache, list_buildings, open_building
from mas_flower.data.split import split_counts, split_points
from tests.taskonomy_pngs import ALL, depth_ramp, grid, make_dataset, view_path, write_png

ROOT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    clear_memory_cache()
    yield
    clear_memory_cache()


def _const(value, size: int = 4, channels: int = 1) -> np.ndarray:
    shape = (size, size) if channels == 1 else (size, size, channels)
    return np.broadcast_to(np.asarray(value), shape).copy()


def _known_view(root: Path, building: str = "b", key=(0, 0), mask_valid: np.ndarray | None = None) -> Path:
    """A 4x4 view whose every domain holds known raw values."""
    p, v = key
    depth = _const(2500)
    depth[0, 0], depth[0, 1], depth[0, 2] = 8191, 8192, 65535
    write_png(view_path(root, "rgb", building, p, v), _const((255, 0, 51), channels=3), 8)
    write_png(view_path(root, "depth_zbuffer", building, p, v), depth, 16)
    write_png(view_path(root, "normal", building, p, v), _const((255, 0, 128), channels=3), 8)
    write_png(view_path(root, "keypoints2d", building, p, v), _const(150), 16)
    write_png(view_path(root, "edge_texture", building, p, v), _const(1788), 16)
    write_png(view_path(root, "edge_occlusion", building, p, v), _const(300), 16)
    write_png(view_path(root, "reshading", building, p, v), _const((10, 20, 30), channels=3), 8)
    write_png(view_path(root, "principal_curvature", building, p, v), _const((100, 200, 50), channels=3), 8)
    seg = _const(0)
    seg[1, :] = 5
    seg[2, :] = 17
    write_png(view_path(root, "segment_semantic", building, p, v), seg, 8)
    if mask_valid is not None:
        write_png(view_path(root, "mask_valid", building, p, v), mask_valid, 8)
    return root


def _one_batch(data, split: str = "train", **kw) -> dict[str, torch.Tensor]:
    return next(iter(data.split(split).batches(64, **kw)))


def test_decoded_targets_match_design_table(tmp_path):
    root = _known_view(tmp_path / "ds")
    data = open_building(root, "b", "sdnkterca", 4, fractions=(1.0, 0.0, 0.0))
    b = _one_batch(data)
    assert b["rgb"].dtype == torch.float32 and b["rgb"].shape == (1, 3, 4, 4)
    assert torch.allclose(b["rgb"][0, :, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    assert torch.equal(b["a"], b["rgb"])
    assert b["d"][0, 0, 3, 3].item() == pytest.approx(1.0)  # (2500 - 1500) / 1000
    assert b["n"][0, :, 3, 3].tolist() == pytest.approx([1.0, -1.0, 128 / 255 * 2 - 1], abs=1e-6)
    assert b["k"][0, 0, 3, 3].item() == pytest.approx(1.0)
    assert b["t"][0, 0, 3, 3].item() == pytest.approx(1.0)
    assert b["e"][0, 0, 3, 3].item() == pytest.approx((300 - 56.0248) / 239.1265)
    assert b["r"].shape == (1, 1, 4, 4)
    assert b["r"][0, 0, 3, 3].item() == pytest.approx((20 / 255 - 0.4962) / 0.2846, rel=1e-5)
    assert b["c"].shape == (1, 2, 4, 4)
    assert b["c"][0, :, 3, 3].tolist() == pytest.approx(
        [(100 / 255 - 0.5175) / 0.1373, (200 / 255 - 0.4987) / 0.0359], rel=1e-5)
    assert b["s"].dtype == torch.int64 and b["s"].shape == (1, 4, 4)
    assert b["s"][0, :, 0].tolist() == [0, 5, 17, 0]
    # mask from depth: valid strictly below 8192; 65535 = no value
    assert b["mask"].dtype == torch.bool and b["mask"].shape == (1, 1, 4, 4)
    assert b["mask"][0, 0, 0, :3].tolist() == [True, False, False]
    assert int(b["mask"].sum()) == 14


def test_mask_valid_takes_precedence_over_depth(tmp_path):
    mv = _const(255)
    mv[3, 3] = 0
    root = _known_view(tmp_path / "ds", mask_valid=mv)
    b = _one_batch(open_building(root, "b", "d", 4, fractions=(1.0, 0.0, 0.0)))
    assert b["mask"][0, 0].numpy().tolist() == (mv != 0).tolist()


def test_mask_needs_depth_even_when_d_not_requested(tmp_path):
    root = _known_view(tmp_path / "ds")
    b = _one_batch(open_building(root, "b", "n", 4, fractions=(1.0, 0.0, 0.0)))
    assert set(b) == {"rgb", "n", "mask"} and int(b["mask"].sum()) == 14
    assert "mask" not in _one_batch(open_building(root, "b", "kts", 4, fractions=(1.0, 0.0, 0.0)))
    os.rename(root / "depth_zbuffer", tmp_path / "gone")
    with pytest.raises(DataError, match=r"mask_valid/b.*depth_zbuffer/b"):
        open_building(root, "b", "n", 4)
    open_building(root, "b", "kta", 4, fractions=(1.0, 0.0, 0.0))  # unmasked tasks need no mask source


def test_segmentsemantic_alias(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "segment_semantic"), size=6,
                        folders={"segment_semantic": "segmentsemantic"})
    assert (root / "segmentsemantic" / "b" / "point_0_view_0_domain_segmentsemantic.png").exists()
    data = open_building(root, "b", "s", 6)
    assert sum(data.sizes().values()) == 3
    b = _one_batch(data)
    assert b["s"].dtype == torch.int64 and int(b["s"].max()) < 18


def test_flip_mirrors_everything_and_negates_normal_x(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(16, 1)}, ("rgb", "depth_zbuffer", "normal", "segment_semantic"),
                        size=6)
    data = open_building(root, "b", "dns", 6, fractions=(1.0, 0.0, 0.0))
    plain = _one_batch(data)
    aug = _one_batch(data, augment=True, generator=torch.Generator().manual_seed(3))
    flipped = []
    for i in range(16):
        if not torch.equal(aug["rgb"][i], plain["rgb"][i]):
            assert torch.equal(aug["rgb"][i], plain["rgb"][i].flip(-1))
            flipped.append(i)
            assert torch.equal(aug["d"][i], plain["d"][i].flip(-1))
            assert torch.equal(aug["s"][i], plain["s"][i].flip(-1))
            assert torch.equal(aug["mask"][i], plain["mask"][i].flip(-1))
            assert torch.equal(aug["n"][i, 0], -plain["n"][i, 0].flip(-1))
            assert torch.equal(aug["n"][i, 1:], plain["n"][i, 1:].flip(-1))
        else:
            assert all(torch.equal(aug[k][i], plain[k][i]) for k in plain)
    assert 0 < len(flipped) < 16
    again = _one_batch(data, augment=True, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(again[k], aug[k]) for k in aug)


@pytest.mark.parametrize("size", [3, 5, 16])
def test_resize_uses_nearest_for_ids_and_mask(tmp_path, size):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    write_png(view_path(root, "rgb", "b", 0, 0), rng.integers(0, 256, (8, 8, 3)), 8)
    write_png(view_path(root, "segment_semantic", "b", 0, 0), rng.choice([3, 7, 12], (8, 8)), 8)
    depth = np.full((8, 8), 3000)
    depth[:, :4] = 65535  # left half has no depth
    write_png(view_path(root, "depth_zbuffer", "b", 0, 0), depth, 16)
    b = _one_batch(open_building(root, "b", "sd", size, fractions=(1.0, 0.0, 0.0)))
    assert b["s"].shape == (1, size, size) and b["rgb"].shape == (1, 3, size, size)
    assert set(b["s"].unique().tolist()) <= {3, 7, 12}
    assert b["mask"].shape == (1, 1, size, size) and 0 < int(b["mask"].sum()) < size * size
    # valid pixels keep exactly the valid depth: the 65535s do not bleed into them
    assert torch.allclose(b["d"][b["mask"]], torch.tensor(1.5))


def test_bilinear_resize_is_resize_then_decode(tmp_path):
    root = tmp_path / "ds"
    ramp = np.tile(np.arange(0, 256, 32), (8, 1))  # 8x8 horizontal ramp
    write_png(view_path(root, "rgb", "b", 0, 0), np.stack([ramp] * 3, -1), 8)
    b = _one_batch(open_building(root, "b", "a", 4, fractions=(1.0, 0.0, 0.0)))
    expected = torch.nn.functional.interpolate(torch.tensor(ramp, dtype=torch.float32)[None, None] / 255,
                                               size=(4, 4), mode="bilinear", antialias=True)
    assert torch.allclose(b["rgb"][0, 0], expected[0, 0], atol=0.5 / 255 + 1e-6)


def test_split_disjoint_deterministic_grouped_by_point(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(10, 3), "c": grid(3, 2)}, ("rgb",), size=4)
    data = open_building(root, "b", "a", 4)
    assert data.sizes() == {"train": 24, "val": 3, "test": 3}
    keys = {name: data.split(name).keys for name in ("train", "val", "test")}
    assert sum(len(k) for k in keys.values()) == 30 and len(set().union(*map(set, keys.values()))) == 30
    points = {name: {p for p, _ in k} for name, k in keys.items()}
    assert not (points["train"] & points["val"]) and not (points["train"] & points["test"])
    assert not (points["val"] & points["test"])
    assert open_building(root, "b", "a", 4).split("val").keys == keys["val"]
    assert open_building(root, "c", "a", 4).sizes() == {"train": 2, "val": 2, "test": 2}  # 3 points: 1 each
    # the same in another process (no dependence on Python's salted hash)
    code = ("from mas_flower.data.split import split_points; "
            "print(sorted(split_points('b', list(range(10)), (0.8, 0.1, 0.1))['val']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == str(sorted(points["val"]))
    with pytest.raises(ValueError, match="fractions"):
        open_building(root, "b", "a", 4, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="fractions"):
        open_building(root, "b", "a", 4, fractions=(1.2, -0.1, -0.1))
    with pytest.raises(ValueError, match="split"):
        data.split("validation")


def test_split_counts_exact():
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(3, (0.8, 0.1, 0.1)) == [1, 1, 1]
    assert split_counts(7, (0.8, 0.1, 0.1)) == [5, 1, 1]
    assert split_counts(5, (1.0, 0.0, 0.0)) == [5, 0, 0]
    assert split_counts(2, (0.8, 0.1, 0.1)) == [2, 0, 0]
    assert split_counts(101, (0.6, 0.2, 0.2)) == [61, 20, 20]
    a, b = split_points("x", list(range(50)), (0.8, 0.1, 0.1)), split_points("y", list(range(50)), (0.8, 0.1, 0.1))
    assert a["test"] != b["test"]  # per-building order


def test_batches_shapes_order_shuffle_drop_last(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(10, 1)}, ("rgb", "keypoints2d"), size=4)
    train = open_building(root, "b", "k", 4).split("train")
    sizes = [len(b["rgb"]) for b in train.batches(3)]
    assert sizes == [3, 3, 2] and [len(b["k"]) for b in train.batches(3, drop_last=True)] == [3, 3]
    in_order = torch.cat([b["k"] for b in train.batches(3)])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    s1 = torch.cat([b["k"] for b in train.batches(3, shuffle=True, generator=g1)])
    s2 = torch.cat([b["k"] for b in train.batches(3, shuffle=True, generator=g2)])
    assert torch.equal(s1, s2) and not torch.equal(s1, in_order)
    assert torch.equal(s1.sort(0).values, in_order.sort(0).values)


class _ReadSpy:
    def __init__(self, monkeypatch, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after
        self._real = prepare.read_png
        monkeypatch.setattr(prepare, "read_png", self)

    def __call__(self, path, domain):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("killed")
        return self._real(path, domain)


def test_disk_cache_second_open_decodes_no_png(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", {"b": grid(4, 2)}, ALL, size=8)
    spy = _ReadSpy(monkeypatch)
    first = _one_batch(open_building(root, "b", "dnsa", 4, cache_dir=tmp_path / "cache"))
    assert spy.calls == 8 * 5  # rgb, depth, normal, segment, mask_valid
    clear_memory_cache()  # as a new process would start
    second = _one_batch(open_building(root, "b", "dnsa", 4, cache_dir=tmp_path / "cache"))
    assert spy.calls == 8 * 5
    assert all(torch.equal(first[k], second[k]) for k in first)
    # a subset of the tasks needs nothing new; a new task decodes only its own domain
    open_building(root, "b", "ds", 4, cache_dir=tmp_path / "cache")
    assert spy.calls == 8 * 5
    open_building(root, "b", "dsk", 4, cache_dir=tmp_path / "cache")
    assert spy.calls == 8 * 6
    npys = list((tmp_path / "cache").rglob("*.npy"))
    assert {p.name.split("-")[0] for p in npys} == {"rgb", "depth_zbuffer", "normal", "segment_semantic",
                                                    "mask", "keypoints2d"}


def test_memory_cache_without_cache_dir(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "keypoints2d"), size=8)
    spy = _ReadSpy(monkeypatch)
    open_building(root, "b", "k", 4)
    open_building(root, "b", "k", 4)
    assert spy.calls == 6
    open_building(root, "b", "k", 2)  # another size is another entry
    assert spy.calls == 12
    open_building(root, "b", "k", 4, cache_dir=tmp_path / "c")  # a RAM-only entry does not stop the disk one
    assert spy.calls == 18 and len(list((tmp_path / "c").rglob("*.npy"))) == 2


def test_cache_key_follows_source_files(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "keypoints2d"), size=4)
    cache = tmp_path / "cache"
    old = _one_batch(open_building(root, "b", "k", 4, fractions=(1.0, 0.0, 0.0), cache_dir=cache))
    path = view_path(root, "keypoints2d", "b", 1, 0)
    write_png(path, np.full((4, 4), 250), 16)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    clear_memory_cache()
    spy = _ReadSpy(monkeypatch)
    new = _one_batch(open_building(root, "b", "k", 4, fractions=(1.0, 0.0, 0.0), cache_dir=cache))
    assert spy.calls == 3  # the keypoint entry only; rgb still cached
    assert torch.allclose(new["k"][1], torch.tensor(2.0)) and not torch.equal(old["k"][1], new["k"][1])
    assert len(list(cache.rglob("keypoints2d-*.npy"))) == 1  # the superseded entry is gone


def test_killed_build_leaves_no_complete_looking_cache(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", {"b": grid(6, 1)}, ("rgb", "keypoints2d"), size=4)
    cache = tmp_path / "cache"
    _ReadSpy(monkeypatch, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        open_building(root, "b", "k", 4, cache_dir=cache)
    assert not list(cache.rglob("*.npy"))
    monkeypatch.undo()
    clear_memory_cache()
    spy = _ReadSpy(monkeypatch)
    assert sum(open_building(root, "b", "k", 4, cache_dir=cache).sizes().values()) == 6
    assert spy.calls == 12
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name]


def test_concurrent_opens_build_once(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", {"b": grid(5, 1)}, ("rgb", "keypoints2d"), size=8)
    spy = _ReadSpy(monkeypatch)
    results, errors = [], []

    def worker():
        try:
            results.append(_one_batch(open_building(root, "b", "k", 4, fractions=(1, 0, 0), cache_dir=tmp_path / "c")))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and spy.calls == 10
    assert all(torch.equal(r["k"], results[0]["k"]) for r in results)


def test_concurrent_processes_share_the_disk_cache(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(5, 1)}, ("rgb", "depth_zbuffer"), size=16)
    code = ("import sys; from pathlib import Path; from mas_flower.data import open_building; "
            "d = open_building(Path(sys.argv[1]), 'b', 'd', 8, fractions=(1, 0, 0), cache_dir=Path(sys.argv[2])); "
            "b = next(d.split('train').batches(8)); print(float(b['d'].sum()), int(b['mask'].sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(tmp_path / "c")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT_DIR) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert len(list((tmp_path / "c").rglob("*.npy"))) == 3  # rgb, depth, mask


# ---- errors name the file ---------------------------------------------------------------------------

def test_error_missing_root_and_unknown_building(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        open_building(tmp_path / "nowhere", "b", "d", 4)
    with pytest.raises(DataError, match="nowhere"):
        list_buildings(tmp_path / "nowhere")
    root = make_dataset(tmp_path / "ds", {"b": grid(1, 1)}, ("rgb",), size=4)
    with pytest.raises(DataError, match=r"unknown building 'zz'.*buildings: b"):
        open_building(root, "zz", "a", 4)
    with pytest.raises(ValueError, match="unknown task letter"):
        open_building(root, "b", "dx", 4)


def test_error_missing_domain_folder_names_folder_and_letter(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(1, 1)}, ("rgb", "depth_zbuffer"), size=4)
    with pytest.raises(DataError, match=r"task 'k'.*keypoints2d/b"):
        open_building(root, "b", "dk", 4)
    with pytest.raises(DataError, match=r"segment_semantic/b or .*segmentsemantic/b"):
        open_building(root, "b", "s", 4)


def test_error_rgb_without_label_names_expected_path(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "normal", "depth_zbuffer"), size=4)
    view_path(root, "normal", "b", 2, 0).unlink()
    with pytest.raises(DataError, match=r"normal/b/point_2_view_0_domain_normal\.png"):
        open_building(root, "b", "n", 4)


@pytest.mark.parametrize("content", [b"not a png at all", "truncated", "corrupt"])
def test_error_undecodable_file_is_named(tmp_path, content):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "keypoints2d"), size=16)
    bad = view_path(root, "keypoints2d", "b", 1, 0)
    good = bad.read_bytes()
    if content == "truncated":
        data = good[: len(good) // 2]
    elif content == "corrupt":
        data = good[:40] + bytes(len(good) - 60) + good[-20:]
    else:
        data = content
    bad.write_bytes(data)
    with pytest.raises(DataError, match=r"keypoints2d/b/point_1_view_0_domain_keypoints2d\.png"):
        open_building(root, "b", "k", 8)


def test_error_wrong_bit_depth_and_channels_say_expected_and_found(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "depth_zbuffer", "normal"), size=4)
    write_png(view_path(root, "depth_zbuffer", "b", 1, 0), np.full((4, 4), 200), 8)
    with pytest.raises(DataError, match=r"point_1_view_0_domain_depth_zbuffer\.png: .*16-bit.*found 8-bit grey"):
        open_building(root, "b", "d", 4)
    write_png(view_path(root, "depth_zbuffer", "b", 1, 0), np.full((4, 4), 2000), 16)
    write_png(view_path(root, "normal", "b", 0, 0), np.full((4, 4), 200), 8)
    with pytest.raises(DataError, match=r"domain_normal\.png: .*3 channels, found 8-bit grey, 1 channel"):
        open_building(root, "b", "n", 4)


def test_error_size_mismatch_names_label(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "keypoints2d"), size=8)
    write_png(view_path(root, "keypoints2d", "b", 0, 1 - 1), np.full((6, 8), 10), 16)
    with pytest.raises(DataError, match=r"domain_keypoints2d\.png: size 8x6 differs from its rgb image's 8x8"):
        open_building(root, "b", "k", 4)


# ---- faults found in the field: corrupt files, bad class ids, too few points --------------------------

def _flips(data: bytes, idat: tuple[int, int]) -> list[tuple[int, int]]:
    """(byte, bit) flips: one bit of every byte of the file, and every bit of the IDAT chunk's last 16
    data bytes (where deflate's codes of the last rows sit, and zlib's Adler-32 that PIL never reads)."""
    every_byte = [(i, i % 8) for i in range(len(data))]
    tail = [(i, b) for i in range(idat[1] - 16, idat[1]) for b in range(8)]
    return sorted(set(every_byte + tail))


def _idat_span(data: bytes) -> tuple[int, int]:
    pos = 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            return pos + 8, pos + 8 + length
        pos += 12 + length
    raise AssertionError("no IDAT chunk")


def _flipped(data: bytes, byte: int, bit: int) -> bytes:
    out = bytearray(data)
    out[byte] ^= 1 << bit
    return bytes(out)


def _pil_only(data: bytes) -> np.ndarray | None:
    """What decoding alone (PIL's load, no CRC check) gives, or None if it fails."""
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im).copy()
    except Exception:  # noqa: BLE001 - any failure counts as "noticed"
        return None


def test_every_single_bit_flip_is_reported_or_harmless(tmp_path):
    """A flipped bit in a real 16-bit depth PNG: reported naming the file, or the values are unchanged."""
    from mas_flower.data.reading import read_png

    path = write_png(view_path(tmp_path, "depth_zbuffer", "b", 0, 0), depth_ramp(), 16)
    data = path.read_bytes()
    original = read_png(path, "depth_zbuffer")
    flips = _flips(data, _idat_span(data))
    assert len(flips) >= 200
    # The fault is real: decoding alone turns some of these flips into different values without an error.
    silent_in_pil = [f for f in flips if (v := _pil_only(_flipped(data, *f))) is not None
                     and not np.array_equal(v, original[0])]
    assert silent_in_pil
    silent, reported = [], 0
    for byte, bit in flips:
        path.write_bytes(_flipped(data, byte, bit))
        try:
            values = read_png(path, "depth_zbuffer")
        except DataError as err:
            assert str(path) in str(err)
            reported += 1
            continue
        if not np.array_equal(values, original):
            silent.append((byte, bit))
    assert silent == []
    # Every flip in the signature, IHDR and IDAT is reported (CRC-32 catches every single-bit error);
    # only the empty IEND chunk's 12 bytes may change without consequence.
    assert reported >= sum(byte < len(data) - 12 for byte, _ in flips)


def test_loader_refuses_a_flipped_bit_that_decodes(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "depth_zbuffer"), size=16)
    path = write_png(view_path(root, "depth_zbuffer", "b", 2, 0), depth_ramp(), 16)
    data = path.read_bytes()
    original = _pil_only(data)
    byte, bit = next(f for f in _flips(data, _idat_span(data))
                     if (v := _pil_only(_flipped(data, *f))) is not None and not np.array_equal(v, original))
    path.write_bytes(_flipped(data, byte, bit))
    with pytest.raises(DataError, match=r"point_2_view_0_domain_depth_zbuffer\.png: corrupt PNG.*checksum"):
        open_building(root, "b", "d", 8)


@pytest.mark.parametrize("bad", [18, 255])
def test_segmentation_ids_outside_0_17_are_refused(tmp_path, bad):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "segment_semantic"), size=6)
    seg = np.full((6, 6), 3)
    seg[4, 1] = bad
    write_png(view_path(root, "segment_semantic", "b", 1, 0), seg, 8)
    with pytest.raises(DataError, match=rf"point_1_view_0_domain_segment_semantic\.png: segment_semantic value "
                                        rf"{bad} outside 0-17 .* at 1 pixel, first at row 4, column 1"):
        open_building(root, "b", "s", 6)


def test_too_few_points_for_val_and_test_is_refused_before_decoding(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", {"big": grid(5, 1), "small": grid(2, 3)}, ("rgb", "keypoints2d"), size=4)
    spy = _ReadSpy(monkeypatch)
    with pytest.raises(DataError, match=r"building 'small' has 2 camera points.*val and test splits would be "
                                        r"empty.*at least 3 points"):
        open_building(root, "small", "k", 4)
    assert spy.calls == 0
    assert open_building(root, "big", "k", 4).sizes() == {"train": 3, "val": 1, "test": 1}
    assert open_building(root, "small", "k", 4, fractions=(1.0, 0.0, 0.0)).sizes()["train"] == 6


def test_too_few_points_surfaces_at_discovery(private_homes, tmp_path):
    """The ServerApp's discovery asks every node for its split sizes: the run stops there, naming the building."""
    from tests.test_app_simulation import run_app

    root = make_dataset(tmp_path / "ds", {"big": grid(4, 1), "small": grid(2, 1)}, ("rgb", "keypoints2d"), size=8)
    config = {"method": "fedavg", "task-set": "k", "num-rounds": 1, "clients-per-round": 2, "batch-size": 2,
              "image-size": 8, "model": "tiny", "data-root": str(root), "output-dir": str(tmp_path / "out"),
              "run-name": "few-points", "node-timeout": 30.0}
    with pytest.raises(Exception, match=r"building 'small' has 2 camera points"):
        run_app(config, num_supernodes=2)
    assert not list((tmp_path / "out").glob("**/results.json"))


# ---- Omnidata's layout: ROOT/<domain>/<component>/<building>/ (docs/data.md, section "Real Taskonomy") ---

def test_omnidata_layout_loads_exactly_like_taskonomy_layout(tmp_path):
    views = {"allensville": grid(3, 2), "beechwood": grid(4, 1)}
    flat = make_dataset(tmp_path / "flat", views, ALL, size=8, seed=3)
    omni = make_dataset(tmp_path / "omni", views, ALL, size=8, seed=3, component="taskonomy")
    assert (omni / "normal" / "taskonomy" / "allensville" / "point_2_view_1_domain_normal.png").is_file()
    assert list_buildings(omni) == list_buildings(flat) == ["allensville", "beechwood"]
    for building in views:
        a = open_building(flat, building, "sdnkterca", 4)
        b = open_building(omni, building, "sdnkterca", 4, cache_dir=tmp_path / "cache")
        assert a.sizes() == b.sizes()
        for split in ("train", "val", "test"):
            assert a.split(split).keys == b.split(split).keys
            x, y = _one_batch(a, split), _one_batch(b, split)
            assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)
    view_path(omni, "normal", "beechwood", 3, 0, component="taskonomy").unlink()
    with pytest.raises(DataError, match=r"omni/normal/taskonomy/beechwood/point_3_view_0_domain_normal\.png"):
        open_building(omni, "beechwood", "n", 4)


def test_omnidata_components_name_buildings_unambiguously(tmp_path):
    root = make_dataset(tmp_path / "ds", {"allensville": grid(3, 1), "hanson": grid(3, 1)}, ("rgb", "keypoints2d"),
                        size=4, component="taskonomy")
    make_dataset(root, {"allensville": grid(3, 1), "frl_apartment_0": grid(3, 1)}, ("rgb", "keypoints2d"),
                 size=4, seed=1, component="replica")
    assert list_buildings(root) == ["replica/allensville", "replica/frl_apartment_0", "taskonomy/allensville",
                                    "taskonomy/hanson"]
    a = open_building(root, "taskonomy/allensville", "k", 4, cache_dir=tmp_path / "cache")
    b = open_building(root, "replica/allensville", "k", 4, cache_dir=tmp_path / "cache")
    assert not torch.equal(_one_batch(a)["k"], _one_batch(b)["k"])  # two buildings, two cache entries
    assert a.split("test").keys == b.split("test").keys  # the split follows the building's folder name
    with pytest.raises(DataError, match=r"unknown building 'hanson' \(did you mean 'taskonomy/hanson'\?\)"):
        open_building(root, "hanson", "k", 4)
    with pytest.raises(DataError, match=r"unknown building 'allensville' \(did you mean 'replica/allensville' or "
                                        r"'taskonomy/allensville'\?\)"):
        open_building(root, "allensville", "k", 4)


def test_mixed_layouts_are_refused(tmp_path):
    root = make_dataset(tmp_path / "ds", {"allensville": grid(3, 1)}, ("rgb",), size=4)
    make_dataset(root, {"hanson": grid(3, 1)}, ("rgb",), size=4, component="taskonomy")
    with pytest.raises(DataError, match=r"ds/rgb mixes building folders .*\(allensville\) with Omnidata component "
                                        r"folders .*\(taskonomy\)"):
        list_buildings(root)
