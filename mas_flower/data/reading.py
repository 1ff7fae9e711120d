"""Reading PNGs exactly as stored (8-bit stays uint8, 16-bit stays uint16), with format checks.

Headers are parsed straight from the IHDR chunk (33 bytes) rather than through PIL, because PIL
reports a 16-bit RGB PNG as 8-bit "RGB" and so cannot tell a wrong bit depth; this lets the loader
and check-data validate every file before any decoding work starts.
"""

from __future__ import annotations

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
    """Decode `path` to a (C, H, W) uint8/uint16 array exactly as stored, checking its format.

    PIL (not torchvision.io, whose image decoding is deprecated since 0.29) gives 16-bit grey as
    uint16; the IHDR check comes first because PIL would silently narrow 16-bit RGB to 8 bits.
    """
    spec = DOMAIN_SPECS[domain]
    header = check_header(path, spec)
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im)
    except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: does not decode as PNG ({reason})") from err
    want_dtype = np.uint16 if header.bit_depth == 16 else np.uint8
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = array.transpose(2, 0, 1)
    if array.shape != (spec.channels, header.height, header.width):
        raise DataError(f"{path}: decoded to {array.dtype} {array.shape}, expected {spec.channels} channels of "
                        f"{header.height}x{header.width}")
    array = np.ascontiguousarray(array, dtype=want_dtype)
    return array if array.flags.writeable else array.copy()  # PIL's buffer is read-only


def valid_pixels(domain: str, raw: np.ndarray) -> np.ndarray:
    """Boolean valid-pixel mask from a mask-source image: `mask_valid` nonzero, or depth below the cut."""
    if domain == MASK_DOMAIN:
        return raw != 0
    if domain == MASK_SOURCE_DOMAIN:
        return raw < DEPTH_VALID_BELOW
    raise ValueError(f"{domain!r} gives no valid-pixel mask (use {MASK_DOMAIN} or {MASK_SOURCE_DOMAIN})")
