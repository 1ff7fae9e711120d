"""check_dataset and `mas-flower check-data` on hand-made datasets with planted problems."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mas_flower
from mas_flower.data.check import check_dataset
from tests.taskonomy_pngs import ALL, depth_ramp, grid, make_dataset, view_path, write_png


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`mas-flower ARGS` with this interpreter and the mas_flower package this test imported, whatever
    the environment (no console script or checkout-local .venv needed)."""
    package_parent = str(Path(mas_flower.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "mas_flower", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": path})


@pytest.fixture
def good(tmp_path) -> Path:
    domains = tuple(d for d in ALL if d != "mask_valid")
    root = make_dataset(tmp_path / "ds", {"b1": grid(3, 2), "b2": grid(3, 2)}, domains, size=8,
                        folders={"segment_semantic": "segmentsemantic"})
    (root / "depth_euclidean" / "b1").mkdir(parents=True)  # an extra domain it does not know
    return root


def test_good_dataset_passes_with_summary(good):
    report = check_dataset(good)
    text = report.format()
    assert report.ok, text
    assert report.files_checked == 12 * 9
    assert "extra folders (not checked): depth_euclidean" in text
    assert "segment_semantic (folder segmentsemantic)" in text
    b1 = next(line for line in text.splitlines() if line.startswith("b1"))
    assert b1.split()[:6] == ["b1", "6", "2", "2", "2", "9"]  # views, train/val/test views, domains
    # valid fraction from depth: random_raw sets ~10% to 65535 and some raw values >= 8192
    valid = [b.valid_fraction for b in report.buildings]
    assert all(v is not None and 0.5 < v < 1 for v in valid)
    assert text.splitlines()[-1].startswith("OK")


def test_every_bad_and_missing_file_is_named(good):
    missing = [view_path(good, "normal", "b2", 1, 0), view_path(good, "keypoints2d", "b1", 0, 1)]
    for p in missing:
        p.unlink()
    truncated = view_path(good, "reshading", "b1", 2, 1)
    truncated.write_bytes(truncated.read_bytes()[:60])
    wrong_bits = write_png(view_path(good, "edge_texture", "b2", 0, 0), np.zeros((8, 8)), 8)
    wrong_channels = write_png(view_path(good, "principal_curvature", "b1", 1, 1), np.zeros((8, 8)), 8)
    wrong_size = write_png(view_path(good, "depth_zbuffer", "b2", 1, 1), np.zeros((4, 8)), 16)
    garbage = view_path(good, "segment_semantic", "b1", 0, 0, "segmentsemantic")
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nnonsense")
    report = check_dataset(good)
    text = report.format()
    assert not report.ok
    assert len(report.problems) == 7, text
    for p in [*missing, truncated, wrong_bits, wrong_channels, wrong_size, garbage]:
        assert str(p) in text
    assert "16-bit, 1 channel, found 8-bit grey" in text
    assert "size 8x4 differs" in text
    assert "b2" in text and text.splitlines()[-1].startswith("FAILED: 7 problems")


def test_tasks_limit_what_is_checked(good):
    write_png(view_path(good, "normal", "b1", 0, 0), np.zeros((8, 8)), 8)  # broken normal
    assert check_dataset(good, "dk").ok
    report = check_dataset(good, "n")
    assert not report.ok and "normal" in report.problems[0]
    assert report.format().count("depth_zbuffer") >= 1  # the mask source of masked tasks is checked too


def test_masked_tasks_need_a_mask_source(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(3, 1)}, ("rgb", "normal"), size=4)
    report = check_dataset(root, "n")
    assert not report.ok and "depth_zbuffer" in report.format()
    assert check_dataset(root, "a").ok


def test_mask_valid_gives_the_valid_fraction(tmp_path):
    root = make_dataset(tmp_path / "ds", {"b": grid(1, 1)}, ("rgb", "depth_zbuffer"), size=4)
    write_png(view_path(root, "mask_valid", "b", 0, 0), np.array([[255] * 4] * 3 + [[0] * 4]), 8)
    report = check_dataset(root, fractions=(1.0, 0.0, 0.0))
    assert report.ok and report.buildings[0].valid_fraction == pytest.approx(0.75)


def test_headers_only_mode_misses_truncation_but_not_format(good):
    truncated = view_path(good, "reshading", "b1", 2, 1)
    truncated.write_bytes(truncated.read_bytes()[:60])
    assert check_dataset(good, decode=False).ok
    write_png(view_path(good, "normal", "b1", 0, 0), np.zeros((8, 8)), 8)
    assert not check_dataset(good, decode=False).ok


def test_missing_root_and_missing_building_folder(tmp_path, good):
    assert not check_dataset(tmp_path / "nope").ok
    (good / "normal" / "b2").rename(tmp_path / "moved")
    report = check_dataset(good)
    assert len(report.problems) == 1 and str(good / "normal" / "b2") in report.problems[0]


def test_cli_exit_codes_and_output(good):
    ok = run_cli("check-data", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "b1" in ok.stdout and "OK" in ok.stdout
    bad = view_path(good, "keypoints2d", "b2", 1, 1)
    bad.write_bytes(b"junk")
    fail = run_cli("check-data", str(good), "--tasks", "dk")
    assert fail.returncode == 1 and str(bad) in fail.stdout


def test_flipped_bit_and_bad_class_ids_are_named(good):
    """Files whose header is perfect: one bit flipped inside IDAT (decodes to other values), one with
    class id 255 in segmentation (CUDA would stop on a device-side assert)."""
    flipped = write_png(view_path(good, "depth_zbuffer", "b1", 1, 0), depth_ramp(8), 16)
    data = bytearray(flipped.read_bytes())
    data[len(data) - 12 - 4 - 6] ^= 0x10  # a byte of the deflate stream, before Adler-32 and the CRC
    flipped.write_bytes(bytes(data))
    seg = np.zeros((8, 8))
    seg[2, 5] = 255
    bad_ids = write_png(view_path(good, "segment_semantic", "b2", 2, 1, "segmentsemantic"), seg, 8)
    report = check_dataset(good)
    text = report.format()
    assert len(report.problems) == 2, text
    assert f"{flipped}: corrupt PNG, fails its checksum test" in text
    assert f"{bad_ids}: segment_semantic value 255 outside 0-17" in text
    assert check_dataset(good, decode=False).ok  # the header-only mode cannot see either


def test_split_sizes_are_printed_and_too_few_points_named(tmp_path):
    root = make_dataset(tmp_path / "ds", {"big": grid(10, 2), "small": grid(2, 3)}, ("rgb", "keypoints2d"), size=4)
    report = check_dataset(root)
    text = report.format()
    assert "building   views   train     val    test" in text
    assert next(line for line in text.splitlines() if line.startswith("big")).split()[:5] == ["big", "20", "16",
                                                                                              "2", "2"]
    assert next(line for line in text.splitlines() if line.startswith("small")).split()[:5] == ["small", "6", "6",
                                                                                                "0", "0"]
    assert report.problems == [f"{root / 'rgb' / 'small'}: building 'small' has 2 camera points, too few for the "
                               "(train, val, test) fractions (0.8, 0.1, 0.1): its val and test splits would be "
                               "empty (whole points go to one split, so it needs at least 3 points)"]
    assert check_dataset(root, fractions=(1.0, 0.0, 0.0)).ok


def test_omnidata_layout(tmp_path):
    """`omnitools.download ... --components taskonomy` writes ROOT/<domain>/taskonomy/<building>/."""
    domains = tuple(d for d in ALL if d != "mask_valid")
    root = make_dataset(tmp_path / "omni", {"allensville": grid(3, 2), "hanson": grid(3, 1)}, domains, size=8,
                        component="taskonomy")
    report = check_dataset(root)
    text = report.format()
    assert report.ok, text
    assert "layout: Omnidata layout ROOT/<domain>/<component>/<building>/, components taskonomy" in text
    assert [b.building for b in report.buildings] == ["allensville", "hanson"]
    assert report.files_checked == 9 * 9
    # a second component: every building is named <component>/<building>
    make_dataset(root, {"frl_apartment_0": grid(3, 1)}, domains, size=8, seed=1, component="replica")
    view_path(root, "normal", "hanson", 2, 0, component="taskonomy").unlink()
    report = check_dataset(root)
    text = report.format()
    assert [b.building for b in report.buildings] == ["replica/frl_apartment_0", "taskonomy/allensville",
                                                      "taskonomy/hanson"]
    assert report.problems == [f"{root}/normal/taskonomy/hanson/point_2_view_0_domain_normal.png: missing (label of "
                               f"{root}/rgb/taskonomy/hanson/point_2_view_0_domain_rgb.png)"], text

