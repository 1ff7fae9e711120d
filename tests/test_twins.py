"""A federation with a known answer: keypoints are copies of edge texture and occlusion edges copies
of depth (`mas_flower.synthetic.twins`). MAS, run for real in Flower's simulation engine, must put
each twin pair into one group in at least 2 of 3 seeds; a flipped affinity sign fails this.

(MAS's score is the same for an affinity and its transpose: a group's score adds A + Aᵀ, and a
singleton's counts what it gives and what it receives. So no grouping can reveal a transposed
matrix; `tests/test_affinity_means.py` and `tests/test_affinity.py` pin the direction.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mas_flower.synthetic import generate_dataset
from mas_flower.synthetic.twins import apply_twins, parse_twins
from tests.test_app_simulation import run_app


def test_parse_twins_checks_letters_and_encodings() -> None:
    assert parse_twins("kt, ed") == [("k", "t"), ("e", "d")]
    for bad, named in (("kx", "'kx'"), ("kk", "'kk'"), ("sd", "8-bit"), ("kt,td", "'td'"), ("ktd", "'ktd'")):
        with pytest.raises(ValueError, match=named):
            parse_twins(bad)


def test_apply_twins_copies_the_stored_values_under_the_twins_names(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "tw"
    generate_dataset(root, buildings=1, views=2, size=16, seed=3)
    before_k = sorted((root / "keypoints2d").rglob("*.png"))
    apply_twins(root, "kt")
    after_k = sorted((root / "keypoints2d").rglob("*.png"))
    assert [p.name for p in after_k] == [p.name for p in before_k]  # same views, keypoints2d's own file names
    for k in after_k:
        t = Path(str(k).replace("keypoints2d", "edge_texture"))
        assert np.array_equal(np.asarray(Image.open(k)), np.asarray(Image.open(t)))
    assert json.loads((root / "synthetic.json").read_text())["twins"] == "kt"


@pytest.fixture(scope="module")
def twin_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("twins") / "synthetic"
    generate_dataset(root, buildings=4, views=24, size=32, seed=0)
    apply_twins(root, "kt,ed")
    return root


def test_mas_groups_each_twin_pair_together(private_homes, twin_federation: Path,
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("out")
    together = []
    for seed in (0, 1, 2):
        run_app({"method": "mas", "task-set": "dekt", "splits": 2, "num-rounds": 4, "merge-rounds": 3,
                 "affinity-rounds": 3, "affinity-every": 2, "local-epochs": 2, "clients-per-round": 3,
                 "batch-size": 4, "image-size": 32, "model": "tiny", "data-root": str(twin_federation),
                 "output-dir": str(out), "run-name": f"twins-{seed}", "seed": seed}, num_supernodes=4)
        splits = json.loads((out / f"twins-{seed}" / "results.json").read_text())["splits"]
        together.append(sorted(splits) == ["de", "kt"])
    assert sum(together) >= 2, f"twins grouped together in {sum(together)} of 3 seeds"
