"""Is this file a picture ComfyUI's LoadImage can read? A stdlib check of the file's structure, done
before anything is uploaded, so a damaged file fails with its name and a plain reason instead of a
decoder traceback from the server.

PNG: signature, every chunk's length and CRC, IHDR first, IDAT present, IEND last, and the image data
inflates to the size IHDR announces. JPEG: the marker segments up to the scan, a frame header, an end
marker after the scan. WebP: the RIFF size and the first chunk. GIF/BMP/TIFF: the signature only.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

_PNG = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_OTHER = ((b"GIF87a", ".gif"), (b"GIF89a", ".gif"), (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
KINDS = "PNG, JPEG, WebP, GIF, BMP or TIFF"


class BadImage(ValueError):
    """The file is not a readable picture; the message says why in plain words."""


def _png(data: bytes):
    pos, first, header, idat, inflater, size = 8, True, None, False, zlib.decompressobj(), 0
    while True:
        if pos + 8 > len(data):
            raise BadImage("the PNG is cut short (its end marker is missing)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if not kind.isalpha():
            raise BadImage(f"the PNG data is damaged (no valid chunk at byte {pos})")
        body = data[pos + 8:pos + 8 + length]
        if pos + 12 + length > len(data):
            raise BadImage(f"the PNG is cut short (inside its {kind.decode('latin-1')!r} chunk)")
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise BadImage(f"the PNG data is damaged (checksum mismatch in its {kind.decode('latin-1')!r} chunk)")
        if first and kind != b"IHDR":
            raise BadImage("the PNG has no header chunk (IHDR) where it must be")
        first = False
        if kind == b"IHDR":
            if length != 13:
                raise BadImage("the PNG header chunk (IHDR) is damaged")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat = True
            try:
                size += len(inflater.decompress(body))
            except zlib.error:
                raise BadImage("the PNG's compressed image data is damaged") from None
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, colour, _comp, _filter, interlace = header
    if not idat or width == 0 or height == 0 or colour not in _CHANNELS:
        raise BadImage("the PNG holds no image data" if not idat else "the PNG header describes no valid image")
    if not inflater.eof:
        raise BadImage("the PNG's compressed image data is incomplete")
    if interlace == 0 and size != height * (1 + (width * _CHANNELS[colour] * depth + 7) // 8):
        raise BadImage("the PNG's image data does not match its size (the file is damaged)")


def _jpeg(data: bytes):
    pos, frame = 2, False
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise BadImage("the JPEG is cut short or damaged (bad segment structure)")
        marker = data[pos + 1]
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # standalone markers
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2 or pos + 2 + length > len(data):
            raise BadImage("the JPEG is cut short (inside a header segment)")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            frame = True
        if marker == 0xDA:  # start of scan: compressed data follows up to the end marker
            if not frame:
                raise BadImage("the JPEG has no frame header (not a picture)")
            if b"\xff\xd9" not in data[pos + 2 + length:]:
                raise BadImage("the JPEG is cut short (its end marker is missing)")
            return
        pos += 2 + length


def _webp(data: bytes):
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data):
        raise BadImage("the WebP file is cut short")
    if len(data) < 20 or data[12:16] not in (b"VP8 ", b"VP8L", b"VP8X"):
        raise BadImage("the WebP file holds no image")
    (chunk,) = struct.unpack("<I", data[16:20])
    if 20 + chunk > len(data):
        raise BadImage("the WebP file is cut short (inside its image chunk)")


def check(data: bytes) -> str:
    """-> the file's usual extension (".png", ".jpg", ...) or BadImage saying what is wrong with it."""
    if not data:
        raise BadImage("the file is empty")
    if data.startswith(_PNG):
        _png(data)
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        _jpeg(data)
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _webp(data)
        return ".webp"
    for magic, ext in _OTHER:
        if data.startswith(magic):
            return ext
    raise BadImage(f"it is not a {KINDS} file")


def read(path: Path, name: str) -> tuple[bytes, str]:
    """-> (bytes, extension); BadImage naming ``name`` (the input as the user wrote it) and the reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadImage(f"{name} cannot be read: {e.strerror or e}") from None
    try:
        return data, check(data)
    except BadImage as e:
        raise BadImage(f"{name} is not a readable image: {e}") from None
    except struct.error:
        raise BadImage(f"{name} is not a readable image: the file is cut short") from None
