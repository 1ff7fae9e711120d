"""Reading PNGs exactly as stored (8-bit stays uint8, 16-bit stays uint16), with format and integrity checks.

Headers are parsed straight from the IHDR chunk (33 bytes) rather than through PIL, because PIL
reports a 16-bit RGB PNG as 8-bit "RGB" and so cannot tell a wrong bit depth; this lets the loader
and check-data validate every file before any decoding work starts. Integrity is proved by every
chunk's CRC-32 (PIL's `verify()`), about 0.1 ms per 512x512 file, rather than by a second inflate
checking zlib's Adler-32, which costs about 1 ms (benchmarks/bench_check_data.py).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mas_flower.data.layout import DOMAIN_SPECS, DataError, DomainSpec
from mas_flower.tasks import DEPTH_VALID_BELOW, MASK_DOMAIN, MASK_SOURCE_DOMAIN

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> (channels, name).
_COLOR_TYPES = {0: (1, "grey"), 2: (3, "RGB"), 3: (1, "palette"), 4: (2, "grey+alpha"), 6: (4, "RGBA")}


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int

    @property
    def channels(self) -> int:
        return _COLOR_TYPES[self.color_type][0]

    def describe(self) -> str:
        name = _COLOR_TYPES[self.color_type][1]
        return f"{self.bit_depth}-bit {name}, {self.channels} channel{'s' * (self.channels > 1)}"


def read_header(path: Path) -> PngHeader:
    """Size, bit depth and colour type from the PNG's IHDR chunk; DataError if it is not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DataError(f"{path}: not a PNG file (bad signature or header, {len(head)} bytes read)")
    width, height, bit_depth, color_type = struct.unpack(">IIBB", head[16:26])
    if color_type not in _COLOR_TYPES or width == 0 or height == 0:
        raise DataError(f"{path}: corrupt PNG header (colour type {color_type}, size {width}x{height})")
    return PngHeader(width, height, bit_depth, color_type)


def format_problem(header: PngHeader, spec: DomainSpec) -> str | None:
    """Why a file's storage does not match its domain (None if it does). Palette PNGs are refused:
    decoding would give colours, not the class ids or values the domain stores."""
    if header.color_type == 3 or header.channels != spec.channels or header.bit_depth not in spec.bits:
        return f"{spec.name} must be {spec.describe()}, found {header.describe()}"
    return None


def check_header(path: Path, spec: DomainSpec, size: tuple[int, int] | None = None) -> PngHeader:
    """Header of `path`, raising DataError on a wrong format or a (width, height) other than `size`."""
    header = read_header(path)
    problem = format_problem(header, spec)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    if size is not None and (header.width, header.height) != size:
        raise DataError(
            f"{path}: size {header.width}x{header.height} differs from its rgb image's {size[0]}x{size[1]}"
        )
    return header


def read_png(path: Path, domain: str) -> np.ndarray:
    """Decode `path` to a (C, H, W) uint8/uint16 array exactly as stored, checking format and integrity.

    PIL (not torchvision.io, whose image decoding is deprecated since 0.29) gives 16-bit grey as
    uint16; the IHDR check comes first because PIL would silently narrow 16-bit RGB to 8 bits. Every
    chunk's CRC-32 is verified (PIL's `verify()`): decoding alone stops once the image is full and
    never checks IDAT CRCs or zlib's Adler-32, so a flipped bit can decode to wrong values unnoticed.
    CRC-32 detects every single-bit and every burst error up to 32 bits in a chunk (PNG spec 1.2,
    section 3.4). Class-id domains (segmentation) must hold ids below their class count.
    Raises DataError naming the file.
    """
    spec = DOMAIN_SPECS[domain]
    header = check_header(path, spec)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error) as err:
        raise DataError(f"{path}: corrupt PNG, fails its checksum test ({_reason(err)}); "
                        "download this file again") from err
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            array = np.asarray(im)
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: does not decode as PNG ({_reason(err)})") from err
    want_dtype = np.uint16 if header.bit_depth == 16 else np.uint8
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = array.transpose(2, 0, 1)
    if array.shape != (spec.channels, header.height, header.width):
        raise DataError(f"{path}: decoded to {array.dtype} {array.shape}, expected {spec.channels} channels of "
                        f"{header.height}x{header.width}")
    array = np.ascontiguousarray(array, dtype=want_dtype)
    if spec.max_value is not None:
        check_values(path, spec, array)
    return array if array.flags.writeable else array.copy()  # PIL's buffer is read-only


def check_values(path: Path, spec: DomainSpec, array: np.ndarray) -> None:
    """DataError naming the file and the values if any stored value exceeds `spec.max_value`."""
    if spec.max_value is None or int(array.max()) <= spec.max_value:
        return
    bad = array > spec.max_value
    values = np.unique(array[bad])
    shown = ", ".join(map(str, values[:8].tolist())) + (f", ... ({len(values)} values)" if len(values) > 8 else "")
    _, y, x = (int(i[0]) for i in np.nonzero(bad))
    raise DataError(f"{path}: {spec.name} value{'s' * (len(values) > 1)} {shown} outside 0-{spec.max_value} "
                    f"(its {spec.max_value + 1} classes) at {int(bad.sum())} pixel{'s' * (int(bad.sum()) > 1)}, "
                    f"first at row {y}, column {x}")


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def valid_pixels(domain: str, raw: np.ndarray) -> np.ndarray:
    """Boolean valid-pixel mask from a mask-source image: `mask_valid` nonzero, or depth below the cut."""
    if domain == MASK_DOMAIN:
        return raw != 0
    if domain == MASK_SOURCE_DOMAIN:
        return raw < DEPTH_VALID_BELOW
    raise ValueError(f"{domain!r} gives no valid-pixel mask (use {MASK_DOMAIN} or {MASK_SOURCE_DOMAIN})")
