"""check-data cost per file: the full check (header, CRCs, decode, class ids) against decoding alone.

Times, on a dataset folder you give (e.g. one `mas-flower synth --size 512` building or real
Taskonomy), with one thread so the figure is per core:
  decode   PIL open + load of every file (what the check did before it verified CRCs)
  verify   PIL open + verify (CRC-32 of every chunk) of every file: the added cost alone
  inflate  zlib.decompress of every file's IDAT data (the other way to prove the stream intact, via
           zlib's Adler-32: a second inflate, which is why the check uses the CRCs instead)
  read     mas_flower.data.reading.read_png on every file (header, CRC-32 of every chunk, decode, ids)
  check    check_dataset(ROOT, workers=1), divided by the files it checked
Prints the minimum over --repeats runs of this process's CPU time in ms per file (CPU time and the
minimum are the least disturbed by other load on the machine). Run it under another checkout's
PYTHONPATH to compare versions.

    python benchmarks/bench_check_data.py ROOT [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

from PIL import Image

from mas_flower.data.check import check_dataset
from mas_flower.data.layout import domain_of_folder
from mas_flower.data.reading import read_png


def _files(root: Path) -> list[tuple[Path, str]]:
    out = []
    for folder in sorted(root.iterdir()):
        domain = domain_of_folder(folder.name)
        if domain is not None:
            out += [(p, domain) for p in sorted(folder.rglob("*.png"))]
    return out


def _idat(data: bytes) -> bytes:
    """The concatenated IDAT chunk data of a PNG (the zlib stream)."""
    pos, parts = 8, []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            parts.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return b"".join(parts)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    files = _files(args.root)
    size = sum(p.stat().st_size for p, _ in files) / len(files)
    print(f"{len(files)} files, {size / 1024:.0f} KiB on average")

    def decode() -> None:
        for p, _ in files:
            with Image.open(p) as im:
                im.load()

    def verify() -> None:
        for p, _ in files:
            with Image.open(p) as im:
                im.verify()

    streams = [_idat(p.read_bytes()) for p, _ in files]

    def inflate() -> None:
        for stream in streams:
            zlib.decompress(stream)

    def read() -> None:
        for p, d in files:
            read_png(p, d)

    checked = check_dataset(args.root, workers=1).files_checked
    for name, fn, n in (("decode", decode, len(files)), ("verify", verify, len(files)),
                        ("inflate", inflate, len(files)), ("read", read, len(files)),
                        ("check", lambda: check_dataset(args.root, workers=1), checked)):
        print(f"{name:>7}: {1000 * _best(fn, args.repeats) / n:.2f} ms/file")


if __name__ == "__main__":
    main()
