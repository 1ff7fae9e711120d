"""`mas-flower check-data`: verify a dataset (Taskonomy or Omnidata layout) before spending compute on it.

Checks that every rgb view has every label of the requested tasks (default: every known domain
folder present under ROOT), that every file has its domain's bit depth, channel count and the size
of its rgb image, and (by default) that every file passes its CRC checks, fully decodes and holds
valid class ids; and that every building has enough camera points for non-empty train, val and test
splits (whose sizes it prints). Unknown folders are listed, not checked. All problems are collected
and named, not just the first.

Cost: the header check reads 33 bytes per file; the full check is what proves a file is intact
(a truncated download has a perfect header, a flipped bit can decode silently to wrong values) and
costs about as much as inflating the file, roughly 2-6 ms per 512x512 PNG, spread over threads; the
CRC pass adds a few percent. `decode=False` gives the header-only check for quick looks at huge trees
(the valid-pixel fraction then stays unknown).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mas_flower.data.layout import DOMAIN_SPECS, DataError, Layout, ViewKey, domain_of_folder, list_views, scan_root
from mas_flower.data.reading import PngHeader, check_header, read_png, valid_pixels
from mas_flower.data.split import DEFAULT_FRACTIONS, SPLIT_NAMES, empty_split_problem, split_sizes
from mas_flower.tasks import MASK_DOMAIN, MASK_SOURCE_DOMAIN, RGB_DOMAIN, TASKS, needs_mask, parse_tasks


@dataclass
class BuildingSummary:
    building: str
    views: int
    domains: int
    valid_fraction: float | None
    problems: int
    #: Views per split (train, val, test) under the checked fractions.
    splits: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckReport:
    """What check_dataset found; `ok` is False on any problem (warnings do not count)."""

    root: Path
    tasks: str | None
    domains: list[str] = field(default_factory=list)
    extra_folders: list[str] = field(default_factory=list)
    buildings: list[BuildingSummary] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_checked: int = 0
    decoded: bool = True
    layout: str = ""
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"dataset {self.root} (tasks: {self.tasks or 'every domain present'})"]
        if self.layout:
            lines.append(f"layout: {self.layout}")
        if self.domains:
            lines.append("checked domains: " + ", ".join(self.domains))
        if self.extra_folders:
            lines.append("extra folders (not checked): " + ", ".join(self.extra_folders))
        lines.append("check: headers, CRCs, full decode and class ids" if self.decoded
                     else "check: headers only (no decode)")
        if self.buildings:
            width = max(8, *(len(b.building) for b in self.buildings))
            fr = "/".join(f"{f:g}" for f in self.fractions)
            lines.append(f"split sizes in views (whole camera points, fractions {fr})")
            splits = "".join(f"  {name:>6}" for name in SPLIT_NAMES)
            lines.append(f"{'building':<{width}}  {'views':>6}{splits}  {'domains':>7}  {'valid':>6}  {'problems':>8}")
            for b in self.buildings:
                valid = "-" if b.valid_fraction is None else f"{b.valid_fraction:.3f}"
                sizes = "".join(f"  {b.splits.get(name, 0):>6}" for name in SPLIT_NAMES)
                lines.append(f"{b.building:<{width}}  {b.views:>6}{sizes}  {b.domains:>7}  {valid:>6}  {b.problems:>8}")
            totals = "".join(f"  {sum(b.splits.get(name, 0) for b in self.buildings):>6}" for name in SPLIT_NAMES)
            lines.append(f"{'total':<{width}}  {sum(b.views for b in self.buildings):>6}{totals}  {'':>7}  {'':>6}  "
                         f"{sum(b.problems for b in self.buildings):>8}")
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines += [f"  {w}" for w in self.warnings]
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines += [f"  {p}" for p in self.problems]
        views = sum(b.views for b in self.buildings)
        verdict = "OK" if self.ok else f"FAILED: {len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        lines.append(f"{verdict} ({len(self.buildings)} buildings, {views} views, {self.files_checked} files checked)")
        return "\n".join(lines)


def check_dataset(root: Path, tasks: str | None = None, *, decode: bool = True, workers: int | None = None,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> CheckReport:
    """Check ROOT for the given task letters (None: every known domain present). See module doc."""
    root = Path(root)
    letters = None if tasks is None else "".join(t.letter for t in parse_tasks(tasks))
    report = CheckReport(root, letters, decoded=decode, fractions=fractions)
    if not root.is_dir():
        report.problems.append(f"{root}: dataset root does not exist or is not a folder")
        return report
    present: dict[str, list[str]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        domain = domain_of_folder(sub.name)
        if domain is None:
            report.extra_folders.append(sub.name)
        else:
            present.setdefault(domain, []).append(sub.name)
    if RGB_DOMAIN not in present:
        report.problems.append(f"{root / RGB_DOMAIN}: no rgb folder (expected ROOT/<domain>/<building>/*.png "
                               "or Omnidata's ROOT/<domain>/<component>/<building>/*.png)")
        return report
    try:
        layout = scan_root(root)
    except DataError as err:
        report.problems.append(str(err))
        return report
    report.layout = layout.describe()

    if letters is None:
        wanted = [d for d in DOMAIN_SPECS if d in present and d != RGB_DOMAIN]
        masked = needs_mask("".join(t.letter for t in TASKS.values() if t.domain in present))
    else:
        wanted = list(dict.fromkeys(TASKS[c].domain for c in letters if TASKS[c].domain != RGB_DOMAIN))
        masked = needs_mask(letters)
    shown = [RGB_DOMAIN, *wanted]
    if masked and letters is not None:  # the loader's mask source, whichever exists per building
        shown += [d for d in (MASK_DOMAIN, MASK_SOURCE_DOMAIN) if d in present and d not in shown]
    report.domains = [d if present.get(d) == [d] else f"{d} (folder {'/'.join(present.get(d, ['missing']))})"
                      for d in shown]

    buildings = list(layout.buildings)
    if not buildings:
        report.problems.append(f"{root / RGB_DOMAIN}: no building folders")
    for folders in present.values():
        for folder in folders:
            for name, rel in layout.buildings_in(folder).items():
                if name not in layout.buildings:
                    report.warnings.append(f"{root / folder / rel}: building has no rgb folder (ignored)")
    pool_size = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(pool_size) as pool:
        for building in buildings:
            domains = list(wanted)
            mask_by = layout.mask_domain(building)
            if masked and letters is not None and mask_by is not None and mask_by not in domains:
                domains.append(mask_by)
            report.buildings.append(_check_building(layout, building, domains, masked, mask_by, decode, pool, report))
    report.problems.sort()
    return report


def _check_building(layout: Layout, building: str, domains: list[str], masked: bool, mask_by: str | None,
                    decode: bool, pool: ThreadPoolExecutor, report: CheckReport) -> BuildingSummary:
    problems: list[str] = []
    root, rel = layout.root, layout.relpath(building)
    rgb_dir = layout.rgb_dir(building)
    rgb = list_views(rgb_dir, RGB_DOMAIN)
    report.warnings += [f"{p}: not a view file of this folder (ignored)" for p in rgb.unexpected]
    if not rgb.files:
        problems.append(f"{rgb_dir}: no view files point_<P>_view_<V>_domain_{RGB_DOMAIN}.png")
    else:
        empty = empty_split_problem(building, [p for p, _ in rgb.files], report.fractions)
        if empty is not None:
            problems.append(f"{rgb_dir}: {empty}")
    if masked and mask_by is None:
        problems.append(f"{root / MASK_SOURCE_DOMAIN / rel}: missing; masked tasks need "
                        f"{MASK_SOURCE_DOMAIN} or {MASK_DOMAIN} for every building")
    labels: dict[str, dict[ViewKey, Path]] = {}
    for domain in domains:
        folder = layout.domain_dir(domain, building)
        if folder is None:
            if domain not in (MASK_DOMAIN, MASK_SOURCE_DOMAIN) or not masked or mask_by is not None:
                problems.append(f"{root / DOMAIN_SPECS[domain].folder_names[0] / rel}: folder missing "
                                f"({len(rgb.files)} views need their {domain} label)")
            continue
        listing = list_views(folder, domain)
        report.warnings += [f"{p}: not a view file of this folder (ignored)" for p in listing.unexpected]
        report.warnings += [f"{p}: no rgb view {rgb_dir}/point_{k[0]}_view_{k[1]}_domain_rgb.png (ignored)"
                            for k, p in listing.files.items() if k not in rgb.files]
        for key, rgb_path in rgb.files.items():
            if key not in listing.files:
                problems.append(f"{layout.expected_path(domain, building, key, folder)}: missing "
                                f"(label of {rgb_path})")
        labels[domain] = listing.files

    jobs = [(key, path, {d: files[key] for d, files in labels.items() if key in files})
            for key, path in rgb.files.items()]
    valid_sum, pixel_sum = 0, 0
    for view_problems, n_files, valid in pool.map(lambda job: _check_view(job[1], job[2], mask_by, decode), jobs):
        problems += view_problems
        report.files_checked += n_files
        if valid is not None:
            valid_sum += valid[0]
            pixel_sum += valid[1]
    report.problems += problems
    fraction = valid_sum / pixel_sum if pixel_sum else None
    return BuildingSummary(building, len(rgb.files), len(labels) + 1, fraction, len(problems),
                           split_sizes(building, list(rgb.files), report.fractions))


def _check_view(rgb_path: Path, labels: dict[str, Path], mask_by: str | None,
                decode: bool) -> tuple[list[str], int, tuple[int, int] | None]:
    """Problems of one view's files, how many files were checked, and (valid, total) mask pixels."""
    problems: list[str] = []
    valid = None
    size = None
    for domain, path in [(RGB_DOMAIN, rgb_path), *labels.items()]:
        try:
            header: PngHeader = check_header(path, DOMAIN_SPECS[domain], size)
            if domain == RGB_DOMAIN:
                size = (header.width, header.height)
            if decode:
                raw = read_png(path, domain)
                if domain == mask_by:
                    v = valid_pixels(domain, raw)
                    valid = (int(v.sum()), v.size)
        except DataError as err:
            problems.append(str(err))
    return problems, 1 + len(labels), valid
