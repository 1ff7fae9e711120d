"""Where things live on disk: `ROOT/<domain>/<building>/point_<P>_view_<V>_domain_<domain>.png`.

Only this module knows the path conventions; it maps folders to the domains of `mas_flower.tasks`
(accepting each task's alias spellings, e.g. Taskonomy's own `segmentsemantic`), lists buildings
and views, and says which folder holds the valid-pixel mask of a building.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mas_flower.tasks import MASK_DOMAIN, MASK_SOURCE_DOMAIN, RGB_DOMAIN, TASKS, Task

#: A view file; the domain part may be any spelling of the folder's domain.
VIEW_FILE = re.compile(r"^point_(\d+)_view_(\d+)_domain_(\w+)\.png$")
#: `mask_valid` is not a task, so tasks.py has no storage row for it: Omnidata writes it as 8-bit
#: grey, but 1-bit and 16-bit grey are accepted too because only "nonzero = valid" matters.
MASK_BITS = (1, 8, 16)

#: (point, view): one camera view of a building; sorts numerically.
ViewKey = tuple[int, int]


class DataError(ValueError):
    """A dataset problem a user must fix on disk; the message names the file or folder."""


@dataclass(frozen=True)
class DomainSpec:
    """How one domain folder's PNGs must be stored."""

    name: str
    folder_names: tuple[str, ...]
    bits: tuple[int, ...]
    channels: int

    def describe(self) -> str:
        return f"{'/'.join(map(str, self.bits))}-bit, {self.channels} channel{'s' * (self.channels > 1)}"


def _spec_of_task(task: Task) -> DomainSpec:
    return DomainSpec(task.domain, task.folder_names, (task.bits,), task.png_channels)


def _build_specs() -> dict[str, DomainSpec]:
    specs = {t.domain: _spec_of_task(t) for t in TASKS.values()}
    specs[MASK_DOMAIN] = DomainSpec(MASK_DOMAIN, (MASK_DOMAIN,), MASK_BITS, 1)
    if RGB_DOMAIN not in specs:  # the autoencoder task normally supplies the rgb row
        raise RuntimeError(f"tasks.py has no task stored in the {RGB_DOMAIN!r} domain")
    return specs


#: Domain name -> storage spec, for every domain the loader and check-data understand.
DOMAIN_SPECS: dict[str, DomainSpec] = _build_specs()
_FOLDER_TO_DOMAIN = {f: spec.name for spec in DOMAIN_SPECS.values() for f in spec.folder_names}


def domain_of_folder(folder: str) -> str | None:
    """The domain a folder name spells (`segmentsemantic` -> `segment_semantic`), or None if unknown."""
    return _FOLDER_TO_DOMAIN.get(folder)


def require_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder")
    if not (root / RGB_DOMAIN).is_dir():
        raise DataError(f"dataset root {root} has no {RGB_DOMAIN}/ folder (expected ROOT/<domain>/<building>/)")
    return root


def list_buildings(root: Path) -> list[str]:
    """Building names, discovered from `ROOT/rgb/`, sorted."""
    root = require_root(Path(root))
    return sorted(p.name for p in (root / RGB_DOMAIN).iterdir() if p.is_dir() and not p.name.startswith("."))


def domain_dir(root: Path, domain: str, building: str) -> Path | None:
    """The folder holding `domain` for `building`, trying each spelling in order; None if none exists."""
    for folder in DOMAIN_SPECS[domain].folder_names:
        path = Path(root) / folder / building
        if path.is_dir():
            return path
    return None


def expected_path(root: Path, domain: str, building: str, key: ViewKey, folder: Path | None = None) -> Path:
    """The file a view's label should be in (in `folder` when the domain folder exists)."""
    if folder is None:
        folder = Path(root) / DOMAIN_SPECS[domain].folder_names[0] / building
    return folder / f"point_{key[0]}_view_{key[1]}_domain_{folder.parent.name}.png"


@dataclass
class Listing:
    """The view files of one domain folder, plus files that do not belong there."""

    files: dict[ViewKey, Path]
    unexpected: list[Path]


def list_views(folder: Path, domain: str) -> Listing:
    """Index a domain folder by (point, view); names with another domain's spelling are unexpected."""
    names = DOMAIN_SPECS[domain].folder_names
    files: dict[ViewKey, Path] = {}
    unexpected: list[Path] = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        m = VIEW_FILE.match(path.name)
        if m is None or m.group(3) not in names or not path.is_file():
            unexpected.append(path)
            continue
        key = (int(m.group(1)), int(m.group(2)))
        if key in files:  # both spellings of one view: ambiguous, keep the first and flag the other
            unexpected.append(path)
            continue
        files[key] = path
    files = dict(sorted(files.items()))
    return Listing(files, sorted(unexpected))


def mask_domain(root: Path, building: str) -> str | None:
    """Which domain gives this building's valid-pixel mask: `mask_valid` if present, else depth, else None."""
    for domain in (MASK_DOMAIN, MASK_SOURCE_DOMAIN):
        if domain_dir(root, domain, building) is not None:
            return domain
    return None
