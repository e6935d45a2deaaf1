"""Hand-made PNGs: valid chunks and CRCs, the right size, the same bytes for a prompt."""

from __future__ import annotations

import struct
import zlib

import orjson
import pytest

from tests.workers.helpers import settings, worker
from workers.backends.png import PNG_SIGNATURE, encode_png, pattern_png
from workers.backends.synthetic import wants_image


def decode(png: bytes) -> tuple[int, int, bytes]:
    """Check every chunk's CRC; return width, height and the filtered scanlines."""
    assert png.startswith(PNG_SIGNATURE)
    pos, chunks = len(PNG_SIGNATURE), []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data)
        chunks.append((kind, data))
        pos += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour) == (8, 2)
    return width, height, zlib.decompress(chunks[1][1])


def test_pattern_is_a_valid_deterministic_png() -> None:
    png = pattern_png("a cat", 64, 64)
    width, height, raw = decode(png)
    assert (width, height) == (64, 64) and len(raw) == 64 * (1 + 64 * 3)
    assert png == pattern_png("a cat", 64, 64) and png != pattern_png("a dog", 64, 64)
    assert decode(encode_png(1, 1, b"\x01\x02\x03"))[2] == b"\x00\x01\x02\x03"
    with pytest.raises(ValueError):
        encode_png(2, 2, b"short")


@pytest.mark.parametrize(
    ("accept", "image"),
    [
        ("image/png", True),
        ("image/*", True),
        ("text/html, IMAGE/PNG;q=0.9", True),
        ("*/*", False),
        ("application/json", False),
        ("", False),
    ],
)
def test_wants_image(accept: str, image: bool) -> None:
    assert wants_image(accept) is image


async def test_synthetic_generate_answers_png_on_accept_image() -> None:
    async with worker(settings(verify=False, ttft_ms=0)) as client:
        resp = await client.post(
            "/generate", data=orjson.dumps({"inputs": "a cat"}), headers={"Accept": "image/png"}
        )
        assert resp.status == 200 and resp.content_type == "image/png"
        body = await resp.read()
        assert body.startswith(PNG_SIGNATURE) and body == pattern_png("a cat")
        resp = await client.post(
            "/generate",
            headers={"Accept": "image/*"},
            data=orjson.dumps({"prompt": "x", "width": 10_000, "height": 3}),
        )
        assert decode(await resp.read())[:2] == (256, 3)  # sides clamped to 1..256
        resp = await client.post("/generate", data=orjson.dumps({"inputs": "a cat"}))
        assert resp.content_type == "application/json"  # text unless an image is asked for
