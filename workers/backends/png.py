"""PNG images made by hand (zlib + struct, no Pillow): the synthetic backend's pictures."""

from __future__ import annotations

import hashlib
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB_8BIT = (8, 2)  # bit depth, colour type 2 (truecolour)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """Encode `rgb` (height rows of width x 3 bytes) as an 8-bit RGB PNG."""
    if width < 1 or height < 1 or len(rgb) != width * height * 3:
        raise ValueError("rgb must hold width x height x 3 bytes")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, *_RGB_8BIT, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def pattern_png(seed: str, width: int = 64, height: int = 64) -> bytes:
    """A deterministic picture: gradients tinted by a hash of `seed` (e.g. the prompt)."""
    r0, g0, b0 = hashlib.sha256(seed.encode()).digest()[:3]
    sx, sy = 256 // width or 1, 256 // height or 1
    rgb = bytearray()
    for y in range(height):
        for x in range(width):
            rgb += bytes(((r0 + x * sx) & 255, (g0 + y * sy) & 255, (b0 + (x ^ y) * sx) & 255))
    return encode_png(width, height, bytes(rgb))
