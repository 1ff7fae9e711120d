"""A federation whose right split is known by construction: twin tasks.

`apply_twins(root, "kt,ed")` makes keypoints2d a copy of edge_texture and edge_occlusion a copy of
depth_zbuffer, file by file, in every building. The stored values are copied as they are, so each
twin reads them through its own domain's decoding (tasks.py): k = (raw − 50) / 100 against
t = (raw − 718) / 1070, an affine function of each other, and likewise e of d (escaped depth pixels,
65535, stay outside the valid mask for both). A network learns one twin exactly when it learns the
other, so a step on one helps the other as much as itself: an affinity that works must put every
twin pair into one group (`tests/test_twins.py` runs MAS on it).

Only tasks stored alike (same bit depth and PNG channels) can be twins.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mas_flower.synthetic.writer import INFO_FILE
from mas_flower.tasks import TASKS


def parse_twins(spec: str) -> list[tuple[str, str]]:
    """"kt,ed" -> [("k", "t"), ("e", "d")]: (copy, source) pairs. Raises ValueError naming the pair
    for unknown letters, a task twinned twice, or tasks stored in different encodings."""
    pairs, seen = [], set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if len(part) != 2 or any(c not in TASKS for c in part) or part[0] == part[1]:
            raise ValueError(f"twins: {part!r} must be two different task letters (copy, source), e.g. 'kt'")
        copy, source = TASKS[part[0]], TASKS[part[1]]
        if (copy.bits, copy.png_channels) != (source.bits, source.png_channels):
            raise ValueError(f"twins: {part!r}: {copy.domain} is stored as {copy.bits}-bit x {copy.png_channels} "
                             f"but {source.domain} as {source.bits}-bit x {source.png_channels}")
        if seen & set(part):
            raise ValueError(f"twins: {part!r} reuses a task of another pair in {spec!r}")
        seen |= set(part)
        pairs.append((part[0], part[1]))
    return pairs


def apply_twins(root: Path, spec: str) -> list[tuple[str, str]]:
    """Overwrite each copy domain of `spec` with its source domain's files under `root` (every
    building), and record `"twins": spec` in synthetic.json when the root has one. Raises
    FileNotFoundError naming the missing source folder."""
    root = Path(root)
    pairs = parse_twins(spec)
    for copy, source in pairs:
        src_dom, dst_dom = TASKS[source].domain, TASKS[copy].domain
        if not (root / src_dom).is_dir():
            raise FileNotFoundError(f"twins: {root / src_dom} does not exist")
        shutil.rmtree(root / dst_dom, ignore_errors=True)
        for building in sorted(p for p in (root / src_dom).iterdir() if p.is_dir()):
            out = root / dst_dom / building.name
            out.mkdir(parents=True)
            for f in sorted(building.iterdir()):
                shutil.copyfile(f, out / f.name.replace(f"domain_{src_dom}", f"domain_{dst_dom}"))
    info_path = root / INFO_FILE
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        info["twins"] = spec
        info_path.write_text(json.dumps(info, indent=1))
    return pairs
