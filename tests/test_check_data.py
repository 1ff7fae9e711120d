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
from tests.taskonomy_pngs import ALL, grid, make_dataset, view_path, write_png


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`mas-flower ARGS` with this interpreter and the mas_flower package this test imported, whatever
    the environment (no console script or checkout-local .venv needed)."""
    package_parent = str(Path(mas_flower.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "mas_flower.cli", *args], capture_output=True, text=True,
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
