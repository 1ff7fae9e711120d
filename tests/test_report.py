"""`mas-flower report`: the PNG figures of a real tiny suite (validation skill included), from run and suite folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mas_flower.tools.cli import main
from mas_flower.tools.report import make_report
from tests.bench_suite import tiny_suite


def _check_png(path: Path) -> None:
    assert path.suffix == ".png" and path.stat().st_size > 5000, path
    with Image.open(path) as image:
        image.load()  # decodes the whole image
        width, height = image.size
    assert 400 <= width <= 4000 and 250 <= height <= 4000, (path, image.size)


def test_report_of_a_suite_folder(private_homes, tmp_path_factory: pytest.TempPathFactory,
                                  capsys: pytest.CaptureFixture) -> None:
    suite = tiny_suite(tmp_path_factory)
    capsys.readouterr()  # what running the suite printed, when this test runs it (alone, or first)
    assert main(["report", str(suite)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    names = sorted(p.name for p in written)
    assert names == ["affinity-matrix-sdk-mas-2.png", "affinity-rounds-sdk-mas-2.png", "cogrouping-sdk.png",
                     "loss-vs-energy.png", "validation-loss.png", "validation-skill-sdk.png"]
    assert all(p.parent == suite / "figures" for p in written)
    for path in written:
        _check_png(path)
    assert (suite / "figures" / "summary.csv").read_text() == (suite / "summary.csv").read_text()
    assert (suite / "figures" / "runs.csv").read_text() == (suite / "runs.csv").read_text()


def test_report_of_run_folders(private_homes, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    suite = tiny_suite(tmp_path_factory)
    fedavg = make_report([suite / "runs" / "fedavg-sdk-seed0"], tmp_path / "a")
    assert sorted(p.name for p in fedavg) == ["loss-vs-energy.png", "validation-loss.png",  # no affinity measured
                                              "validation-skill-sdk.png"]
    both = make_report([suite / "runs" / "fedavg-sdk-seed0", suite / "runs" / "mas-x2-sdk-seed0"], tmp_path / "b")
    assert len(both) == 6  # and the co-grouping of MAS-2's one seed
    for path in fedavg + both:
        _check_png(path)


def test_report_refuses_a_folder_without_runs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run folder"):
        make_report([tmp_path], None)
