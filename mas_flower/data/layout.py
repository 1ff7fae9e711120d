"""Where things live on disk, in either of the two layouts Taskonomy is distributed in.

- Taskonomy's own: `ROOT/<domain>/<building>/point_<P>_view_<V>_domain_<domain>.png`.
- Omnidata's (what `omnitools.download` writes): `ROOT/<domain>/<component>/<building>/...png`, where
  the component is the source dataset (`taskonomy`, `replica`, `hm3d`, ...; any name is accepted).

The layout is detected from `ROOT/rgb/`: a folder there that holds no view files but holds folders
is a component. With one component, buildings keep their plain names (`allensville`); when ROOT holds
several components, every building is named `<component>/<building>` (`taskonomy/allensville`), so
no name is ambiguous. Only this module knows the path conventions; it maps folders to the domains of
`mas_flower.tasks` (accepting each task's alias spellings, e.g. Taskonomy's own `segmentsemantic`),
lists buildings and views, and says which folder holds the valid-pixel mask of a building.
"""

from __future__ import annotations

import difflib
import os
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
    """How one domain folder's PNGs must be stored; `max_value` bounds class ids (None: any value)."""

    name: str
    folder_names: tuple[str, ...]
    bits: tuple[int, ...]
    channels: int
    max_value: int | None = None

    def describe(self) -> str:
        return f"{'/'.join(map(str, self.bits))}-bit, {self.channels} channel{'s' * (self.channels > 1)}"


def _spec_of_task(task: Task) -> DomainSpec:
    # Class ids index the decoder's logits: an id >= the class count is an out-of-bounds target
    # (a device-side assert on CUDA), so it is refused on reading.
    top = task.out_channels - 1 if task.is_classification else None
    return DomainSpec(task.domain, task.folder_names, (task.bits,), task.png_channels, top)


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


def _subfolders(folder: Path) -> list[str]:
    """Names of the visible sub-folders, sorted."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _holds_view_files(folder: Path) -> bool:
    """Whether `folder` directly holds a view file (stops at the first: building folders are large)."""
    with os.scandir(folder) as entries:
        return any(VIEW_FILE.match(e.name) for e in entries)


@dataclass(frozen=True)
class Layout:
    """The buildings of a dataset root and where each one's folder is below a domain folder.

    `components` is empty for Taskonomy's layout and lists the Omnidata components otherwise;
    `buildings` maps each building's name to its path below `ROOT/<domain>/` (`allensville` or
    `taskonomy/allensville`), in name order.
    """

    root: Path
    components: tuple[str, ...]
    buildings: dict[str, str]

    def describe(self) -> str:
        if not self.components:
            return "Taskonomy layout ROOT/<domain>/<building>/"
        named = "<component>/<building>" if len(self.components) > 1 else "<building>"
        return (f"Omnidata layout ROOT/<domain>/<component>/<building>/, components "
                f"{', '.join(self.components)}; buildings named {named}")

    def buildings_in(self, folder: str) -> dict[str, str]:
        """Building name -> path below `ROOT/<folder>/`, for every building folder found there."""
        base = self.root / folder
        if not self.components:
            return {b: b for b in _subfolders(base)}
        qualified = len(self.components) > 1
        found = {(f"{c}/{b}" if qualified else b): f"{c}/{b}" for c in _subfolders(base) for b in _subfolders(base / c)}
        return dict(sorted(found.items()))

    def relpath(self, building: str) -> str:
        """The building's path below a domain folder; DataError naming the known buildings if unknown."""
        if building in self.buildings:
            return self.buildings[building]
        names = list(self.buildings)
        near = [n for n in names if n.rsplit("/", 1)[-1] == building.rsplit("/", 1)[-1]]
        near = near or difflib.get_close_matches(building, names, n=1)
        hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
        raise DataError(f"unknown building {building!r}{hint}: no folder {self.root / RGB_DOMAIN / building} "
                        f"({self.describe()}; buildings: {shown or 'none'})")

    def domain_dir(self, domain: str, building: str) -> Path | None:
        """The folder holding `domain` for `building`, trying each spelling in order; None if none exists."""
        rel = self.relpath(building)
        for folder in DOMAIN_SPECS[domain].folder_names:
            path = self.root / folder / rel
            if path.is_dir():
                return path
        return None

    def rgb_dir(self, building: str) -> Path:
        return self.root / RGB_DOMAIN / self.relpath(building)

    def expected_path(self, domain: str, building: str, key: ViewKey, folder: Path | None = None) -> Path:
        """The file a view's label should be in (in `folder`, a domain_dir, when that exists)."""
        if folder is None:
            folder = self.root / DOMAIN_SPECS[domain].folder_names[0] / self.relpath(building)
        spelling = folder.relative_to(self.root).parts[0]
        return folder / f"point_{key[0]}_view_{key[1]}_domain_{spelling}.png"

    def mask_domain(self, building: str) -> str | None:
        """Which domain gives the building's valid-pixel mask: `mask_valid` if present, else depth, else None."""
        for domain in (MASK_DOMAIN, MASK_SOURCE_DOMAIN):
            if self.domain_dir(domain, building) is not None:
                return domain
        return None


def scan_root(root: Path) -> Layout:
    """Detect the layout of a dataset root from its `rgb/` folder and list its buildings.

    Raises DataError if ROOT or ROOT/rgb is missing, or if ROOT/rgb mixes building folders (holding
    view files) with component folders (holding building folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder")
    rgb = root / RGB_DOMAIN
    if not rgb.is_dir():
        raise DataError(f"dataset root {root} has no {RGB_DOMAIN}/ folder (expected ROOT/<domain>/<building>/ or "
                        "Omnidata's ROOT/<domain>/<component>/<building>/)")
    children = _subfolders(rgb)
    with_views = {c for c in children if _holds_view_files(rgb / c)}
    components = tuple(c for c in children if c not in with_views and _subfolders(rgb / c))
    if components and with_views:
        raise DataError(f"{rgb} mixes building folders holding view files ({', '.join(sorted(with_views)[:3])}) "
                        f"with Omnidata component folders holding building folders ({', '.join(components[:3])}): "
                        "use one layout")
    layout = Layout(root, components, {})
    return Layout(root, components, layout.buildings_in(RGB_DOMAIN))


#: Data root -> (stamp of its rgb folders when scanned, the Layout found): `scan_root_cached`.
_SCANNED: dict[str, tuple[tuple, Layout]] = {}


def _stamp(rgb: Path, components: tuple[str, ...]) -> tuple:
    """What changes when a building folder is added, removed or renamed: the modification time, inode
    and link count of `rgb` and of each component folder below it (the Omnidata layout)."""
    out = []
    for folder in (rgb, *(rgb / c for c in components)):
        try:
            st = folder.stat()
            out.append((st.st_mtime_ns, st.st_ino, st.st_nlink))
        except OSError:
            out.append(None)
    return tuple(out)


def scan_root_cached(root: Path) -> Layout:
    """`scan_root(root)`, scanned again in this process only when a folder holding building folders
    changed (`_stamp`). Scanning looks into every building folder (N listings for N buildings), and a
    process that serves many nodes (simulation) opens one building per node: uncached, discovery of
    N nodes cost N x N listings (about 45 s at N = 1,000). Raises DataError as `scan_root`."""
    key, rgb = str(root), Path(root) / RGB_DOMAIN
    seen = _SCANNED.get(key)
    if seen is not None and _stamp(rgb, seen[1].components) == seen[0]:
        return seen[1]
    before = _stamp(rgb, ())  # taken before scanning: a change during the scan is seen next time
    layout = scan_root(Path(root))
    _SCANNED[key] = (before + _stamp(rgb, layout.components)[1:], layout)
    return layout


def list_buildings(root: Path) -> list[str]:
    """Building names, discovered from `ROOT/rgb/` (see the module doc for naming), sorted."""
    return list(scan_root(Path(root)).buildings)


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
