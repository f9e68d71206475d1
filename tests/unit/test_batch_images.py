"""deepgen_batch.images: the stdlib check that a file is a readable PNG/JPEG/WebP before it is uploaded
(real files written by PIL pass; damaged ones fail with the file's name and a plain reason)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepgen_batch.images import BadImage, check, read


def encode(fmt: str, mode: str = "RGB", size=(37, 23), **kw) -> bytes:
    g = np.random.default_rng(0)
    im = Image.fromarray(g.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, mode, kw, ext", [
    ("PNG", "RGB", {}, ".png"), ("PNG", "RGBA", {}, ".png"), ("PNG", "L", {}, ".png"), ("PNG", "P", {}, ".png"),
    ("PNG", "1", {}, ".png"), ("PNG", "I;16", {}, ".png"), ("PNG", "RGB", {"optimize": True}, ".png"),
    ("PNG", "RGB", {"interlace": 1}, ".png"),
    ("JPEG", "RGB", {}, ".jpg"), ("JPEG", "L", {"progressive": True}, ".jpg"),
    ("WEBP", "RGB", {}, ".webp"), ("WEBP", "RGBA", {"lossless": True}, ".webp"),
    ("GIF", "P", {}, ".gif"), ("BMP", "RGB", {}, ".bmp"), ("TIFF", "RGB", {}, ".tif"),
])
def test_real_files_pass(fmt, mode, kw, ext):
    assert check(encode(fmt, mode, **kw)) == ext


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_cut_short_files_fail(fmt):
    data = encode(fmt, size=(200, 150))
    for cut in (len(data) // 3, len(data) - 3):
        with pytest.raises(BadImage, match="cut short|incomplete|damaged|end marker"):
            check(data[:cut])


def test_damaged_png_fails_with_reasons():
    data = bytearray(encode("PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # one flipped byte in the image data
    with pytest.raises(BadImage, match="checksum mismatch in its 'IDAT' chunk"):
        check(bytes(data))
    with pytest.raises(BadImage, match=r"the PNG data is damaged \(no valid chunk at byte 8\)"):
        check(b"\x89PNG\r\n\x1a\n" + b"this is not image data" * 4)  # the integration test's broken file
    with pytest.raises(BadImage, match="the file is empty"):
        check(b"")
    with pytest.raises(BadImage, match="not a PNG, JPEG, WebP, GIF, BMP or TIFF"):
        check(b"hello, I am a text file")


def test_read_names_the_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n junk")
    with pytest.raises(BadImage, match=r"^shoot/x.png is not a readable image: the PNG is cut short"):
        read(tmp_path / "x.png", "shoot/x.png")
    with pytest.raises(BadImage, match=r"^gone.png cannot be read: No such file"):
        read(tmp_path / "gone.png", "gone.png")
    (tmp_path / "ok.jpg").write_bytes(encode("JPEG"))
    assert read(tmp_path / "ok.jpg", "ok.jpg")[1] == ".jpg"
