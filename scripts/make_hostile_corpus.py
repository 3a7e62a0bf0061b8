"""Generate the hostile-input corpus: odd, broken and malicious uploads for ``POST /predict`` (issue 7, item 1).

Nothing is downloaded: every input is made here from a real photograph that scikit-image ships in its wheel
(``astronaut``) or from bytes crafted by hand (headers that lie about their size, truncated streams, random data).

    python scripts/make_hostile_corpus.py OUT_DIR

writes one file per input that is a byte payload, plus ``manifest.json`` describing every case — including the
request-shaped ones that are not a file (a 100 MB body, a multipart body with thousands of parts, a slow-loris
upload) — with how to send it and the documented answer (docs/api.md): the HTTP status and error code, or 200.
``tests/test_hostile_inputs.py`` builds the same corpus in memory with `build_corpus` and sends every case to the
real service.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zlib
from dataclasses import asdict, dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["HostileInput", "build_corpus", "write_corpus", "MIN_CASES"]

#: The issue asks for at least this many.
MIN_CASES = 40


@dataclass(frozen=True)
class HostileInput:
    """One case of the corpus.

    ``send`` says how the test sends it:

    - ``raw``: ``POST /predict`` with ``data`` as the body and ``content_type`` (None: no Content-Type header);
    - ``multipart``: ``POST /predict`` as multipart/form-data, ``data`` in the field ``field`` (default ``file``);
    - ``multipart_text``: ``POST /predict`` as multipart/form-data with only text fields (no file at all);
    - ``multipart_raw``: ``data`` is a complete multipart body sent with ``content_type``;
    - ``batch_raw``: ``data`` is a complete multipart body of ``parts`` parts for ``POST /predict/batch``;
    - ``huge_body``: a body of ``size`` bytes generated while sending, with a declared Content-Length
      (``chunked`` false) or chunked transfer encoding (``chunked`` true);
    - ``slow_upload``: a body trickled a few bytes at a time, slower than the service's body timeout.

    ``status`` is the documented answer and ``code`` the error code (None for a 200); ``params`` are query
    parameters; ``faces`` is, for a 200, the number of faces the default detector must report (None: not checked).
    """

    name: str
    description: str
    send: str
    status: int
    code: str | None = None
    data: bytes = b""
    content_type: str | None = None
    field: str = "file"
    parts: int = 0
    size: int = 0
    chunked: bool = False
    params: dict[str, str] = dataclass_field(default_factory=dict)
    faces: int | None = None

    def manifest_entry(self) -> dict[str, Any]:
        entry = asdict(self)
        entry.pop("data")
        entry["bytes"] = len(self.data)
        entry["file"] = self.name if self.data else None
        return entry


# --- building blocks -------------------------------------------------------------------------------------------


def _photo() -> np.ndarray:
    """A real photograph with one face (scikit-image's astronaut, 512x512 RGB)."""
    from skimage import data as skdata

    return skdata.astronaut()


def _encode(image: Image.Image | np.ndarray, fmt: str, **options: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, *, bit_depth: int, colour_type: int, rows: Any, extra: bytes = b"") -> bytes:
    """A PNG written chunk by chunk; ``rows`` yields the filtered scanlines (so huge canvases stream)."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for row in rows) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


def _png_bomb(width: int, height: int) -> bytes:
    """A PNG header declaring ``width x height`` pixels in front of a few bytes of data: a decompression bomb."""
    return _png(width, height, bit_depth=1, colour_type=0, rows=[b"\x00" * 64])


def _blank_1bit_png(width: int, height: int) -> bytes:
    """A real, complete 1-bit PNG of ``width x height`` black pixels (compresses ~1000:1)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    return _png(width, height, bit_depth=1, colour_type=0, rows=(row for _ in range(height)))


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF0/SOF2) patched to declare ``width x height``."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            struct.pack_into(">HH", data, at + 5, height, width)  # length(2) precision(1) height(2) width(2)
            return bytes(data)
    raise ValueError("no SOF marker")


def _gif_with_size(gif: bytes, width: int, height: int) -> bytes:
    """A GIF whose logical screen and first image descriptor declare ``width x height``."""
    data = bytearray(gif)
    struct.pack_into("<HH", data, 6, width, height)
    at = data.find(b"\x2c", 13)  # the image separator
    struct.pack_into("<HH", data, at + 5, width, height)
    return bytes(data)


def _tiff_with_size(tiff: bytes, width: int, height: int) -> bytes:
    """A little-endian TIFF whose first IFD declares ``width x height`` (tags 256/257 rewritten as LONG)."""
    data = bytearray(tiff)
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, ifd)[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, entry)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", data, entry, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def _webp_lossless_with_size(webp: bytes, width: int, height: int) -> bytes:
    """A simple lossless WebP (VP8L) whose bitstream header declares ``width x height`` (at most 16384 each)."""
    data = bytearray(webp)
    at = data.find(b"VP8L")
    if at < 0:
        raise ValueError("not a lossless WebP")
    header = struct.unpack_from("<I", data, at + 9)[0]  # after 'VP8L', chunk size(4), signature 0x2f(1)
    header = (header & ~0x0FFFFFFF) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    struct.pack_into("<I", data, at + 9, header)
    return bytes(data)


def _with_exif(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG stored as a phone would: pixels turned so that applying EXIF ``orientation`` gives ``image``."""
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = Image.fromarray(image)
    if inverse is not None:
        stored = stored.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(stored, "JPEG", quality=90, exif=exif)


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "hostile-boundary") -> bytes:
    """A multipart/form-data body from ``(field, filename or None for a text field, payload)``."""
    out = io.BytesIO()
    for name, filename, payload in parts:
        out.write(f"--{boundary}\r\n".encode())
        if filename is None:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        else:
            out.write(
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
        out.write(payload + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


# --- the corpus ------------------------------------------------------------------------------------------------


def build_corpus() -> list[HostileInput]:
    """Every case, in a fixed order (deterministic: a fixed random seed)."""
    rng = np.random.default_rng(7)
    photo = _photo()
    face = photo[40:340, 100:360]  # the astronaut's head and shoulders: one face, small upload
    jpeg = _encode(face, "JPEG", quality=90)
    png = _encode(face, "PNG")
    tiny_rgb = np.full((1, 1, 3), 200, dtype=np.uint8)
    cases: list[HostileInput] = []

    def add(*args: Any, **kwargs: Any) -> None:
        cases.append(HostileInput(*args, **kwargs))

    # Nothing, noise and text.
    add("empty.bin", "zero bytes", "raw", 400, "empty_body", b"", "image/jpeg")
    add("random-1.bin", "one random byte", "raw", 400, "invalid_image", rng.bytes(1), "image/jpeg")
    add("random-64.bin", "64 random bytes", "raw", 400, "invalid_image", rng.bytes(64), "image/png")
    add("random-64k.bin", "64 KiB of random bytes", "raw", 400, "invalid_image", rng.bytes(65536), "image/jpeg")
    add("random-4m.bin", "4 MiB of random bytes", "raw", 400, "invalid_image", rng.bytes(4 << 20), "image/webp")
    add("zeros-1m.bin", "1 MiB of zero bytes", "raw", 400, "invalid_image", bytes(1 << 20), "image/jpeg")
    add(
        "text.txt", "plain text sent as an image", "raw", 400, "invalid_image", b"GET / HTTP/1.1\r\n" * 50, "image/jpeg"
    )
    add("json.json", "JSON sent as an image", "raw", 400, "invalid_image", b'{"image": "astronaut.jpg"}', "image/png")
    add(
        "svg.svg",
        "an SVG (vector, not decoded)",
        "raw",
        415,
        "unsupported_image_format",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "image/svg+xml",
    )
    add(
        "heic.heic",
        "an HEIC header (phone format, not decoded)",
        "raw",
        415,
        "unsupported_image_format",
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(256),
        "image/heic",
    )

    # Truncated and corrupt files of every accepted format.
    add("jpeg-header-only.jpg", "the first 200 bytes of a JPEG", "raw", 400, "invalid_image", jpeg[:200], "image/jpeg")
    add("jpeg-half.jpg", "a JPEG cut in half", "raw", 400, "invalid_image", jpeg[: len(jpeg) // 2], "image/jpeg")
    add("jpeg-no-eoi.jpg", "a JPEG without its last 300 bytes", "raw", 400, "invalid_image", jpeg[:-300], "image/jpeg")
    add("png-half.png", "a PNG cut in half", "raw", 400, "invalid_image", png[: len(png) // 2], "image/png")
    bad_crc = bytearray(png)
    bad_crc[29:33] = b"\x00\x00\x00\x00"  # the IHDR chunk's CRC
    add(
        "png-bad-crc.png",
        "a PNG whose header chunk fails its CRC",
        "raw",
        400,
        "invalid_image",
        bytes(bad_crc),
        "image/png",
    )
    add(
        "webp-half.webp",
        "a WebP cut in half",
        "raw",
        400,
        "invalid_image",
        (lambda b: b[: len(b) // 2])(_encode(face, "WEBP", quality=80)),
        "image/webp",
    )
    add(
        "gif-half.gif",
        "a GIF cut in half",
        "raw",
        400,
        "invalid_image",
        (lambda b: b[: len(b) // 2])(_encode(face, "GIF")),
        "image/gif",
    )
    add(
        "bmp-half.bmp",
        "a BMP cut in half",
        "raw",
        400,
        "invalid_image",
        (lambda b: b[: len(b) // 2])(_encode(face, "BMP")),
        "image/bmp",
    )
    add(
        "tiff-half.tif",
        "a TIFF cut in half",
        "raw",
        400,
        "invalid_image",
        (lambda b: b[: len(b) // 2])(_encode(face, "TIFF")),
        "image/tiff",
    )
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (16 << 20), 9))
    add(
        "png-ztxt-bomb.png",
        "a PNG with a text chunk that inflates to 16 MiB",
        "raw",
        400,
        "invalid_image",
        _png(8, 8, bit_depth=8, colour_type=0, rows=[b"\x00" + bytes(8)] * 8, extra=ztxt),
        "image/png",
    )

    # Decompression bombs: tiny files whose headers declare huge canvases (refused before decoding).
    add(
        "bomb-png-100000x100000.png",
        "PNG header declaring 10^10 pixels, 100 bytes of data",
        "raw",
        413,
        "image_too_large",
        _png_bomb(100_000, 100_000),
        "image/png",
    )
    add(
        "bomb-png-7000x7000.png",
        "PNG header declaring 49 MP (just over the 40 MP default)",
        "raw",
        413,
        "image_too_large",
        _png_bomb(7000, 7000),
        "image/png",
    )
    add(
        "bomb-jpeg-65000x65000.jpg",
        "JPEG frame header declaring 65000x65000",
        "raw",
        413,
        "image_too_large",
        _jpeg_with_size(jpeg, 65000, 65000),
        "image/jpeg",
    )
    add(
        "bomb-gif-65535x65535.gif",
        "GIF screen declaring 65535x65535",
        "raw",
        413,
        "image_too_large",
        _gif_with_size(_encode(face[:8, :8], "GIF"), 65535, 65535),
        "image/gif",
    )
    add(
        "bomb-tiff-100000x100000.tif",
        "TIFF tags declaring 100000x100000",
        "raw",
        413,
        "image_too_large",
        _tiff_with_size(_encode(face[:8, :8], "TIFF"), 100_000, 100_000),
        "image/tiff",
    )
    add(
        "bomb-webp-16384x16384.webp",
        "lossless WebP header declaring 16384x16384",
        "raw",
        413,
        "image_too_large",
        _webp_lossless_with_size(_encode(face[:8, :8], "WEBP", lossless=True), 16384, 16384),
        "image/webp",
    )
    add(
        "png-20000x20000.png",
        "a real, complete 20000x20000 PNG (400 MP, ~50 KB compressed)",
        "raw",
        413,
        "image_too_large",
        _blank_1bit_png(20_000, 20_000),
        "image/png",
    )

    # Extreme but valid shapes.
    add("png-1x1.png", "a 1x1 PNG", "raw", 200, None, _encode(tiny_rgb, "PNG"), "image/png", faces=0)
    add("jpeg-1x1.jpg", "a 1x1 JPEG", "raw", 200, None, _encode(tiny_rgb, "JPEG"), "image/jpeg", faces=0)
    add("gif-1x1.gif", "a 1x1 GIF", "raw", 200, None, _encode(tiny_rgb, "GIF"), "image/gif", faces=0)
    add(
        "png-1x1-no-detect.png",
        "a 1x1 PNG with detect=false: the whole image is the face",
        "raw",
        200,
        None,
        _encode(tiny_rgb, "PNG"),
        "image/png",
        params={"detect": "false"},
        faces=1,
    )
    add("png-20000x1.png", "a 20000x1 strip", "raw", 200, None, _blank_1bit_png(20_000, 1), "image/png", faces=0)
    add("png-1x20000.png", "a 1x20000 strip", "raw", 200, None, _blank_1bit_png(1, 20_000), "image/png", faces=0)
    add(
        "png-4000x4000.png",
        "a real 16 MP PNG (under the 40 MP limit, ~20 KB compressed)",
        "raw",
        200,
        None,
        _blank_1bit_png(4000, 4000),
        "image/png",
        faces=0,
    )

    # Odd but valid formats and modes (one face each).
    frames = [Image.fromarray(face), Image.fromarray(face[:, ::-1]), Image.fromarray(255 - face)]
    add(
        "gif-animated.gif",
        "an animated GIF (3 frames): the first frame is used",
        "raw",
        200,
        None,
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        "image/gif",
        faces=1,
    )
    add(
        "tiff-multipage.tif",
        "a 3-page TIFF: the first page is used",
        "raw",
        200,
        None,
        _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "image/tiff",
        faces=1,
    )
    add(
        "jpeg-cmyk.jpg",
        "a CMYK JPEG",
        "raw",
        200,
        None,
        _encode(Image.fromarray(face).convert("CMYK"), "JPEG"),
        "image/jpeg",
        faces=1,
    )
    gray16 = (face.mean(axis=2) * 257).astype(np.uint16)
    add(
        "png-16bit-gray.png",
        "a 16-bit grayscale PNG",
        "raw",
        200,
        None,
        _encode(Image.fromarray(gray16), "PNG"),
        "image/png",
        faces=1,
    )
    rgb16 = _png(
        face.shape[1],
        face.shape[0],
        bit_depth=16,
        colour_type=2,
        rows=(b"\x00" + (row.astype(">u2") * 257).tobytes() for row in face),
    )
    add("png-16bit-rgb.png", "a 16-bit RGB PNG", "raw", 200, None, rgb16, "image/png", faces=1)
    palette = Image.fromarray(face).quantize(64)
    add(
        "png-palette-transparent.png",
        "a palette PNG with a transparent colour",
        "raw",
        200,
        None,
        _encode(palette, "PNG", transparency=0),
        "image/png",
        faces=1,
    )
    rgba = np.dstack([face, np.full(face.shape[:2], 128, np.uint8)])
    add(
        "png-rgba-half-transparent.png",
        "an RGBA PNG, 50 % transparent everywhere",
        "raw",
        200,
        None,
        _encode(rgba, "PNG"),
        "image/png",
        faces=1,
    )
    add(
        "tiff-float.tif",
        "a 32-bit float grayscale TIFF",
        "raw",
        200,
        None,
        _encode(Image.fromarray(face.mean(axis=2).astype(np.float32) / 255.0), "TIFF"),
        "image/tiff",
        faces=1,
    )
    for orientation in range(1, 9):
        add(
            f"jpeg-exif-orientation-{orientation}.jpg",
            f"EXIF orientation {orientation} (phone photo)",
            "raw",
            200,
            None,
            _with_exif(face, orientation),
            "image/jpeg",
            faces=1,
        )
    add(
        "png-as-jpeg.png",
        "a PNG sent as image/jpeg (the format is read from the bytes)",
        "raw",
        200,
        None,
        png,
        "image/jpeg",
        faces=1,
    )

    # Wrong or missing content types.
    add("ct-text-plain.jpg", "a JPEG sent as text/plain", "raw", 415, "unsupported_media_type", jpeg, "text/plain")
    add(
        "ct-octet-stream.jpg",
        "a JPEG sent as application/octet-stream",
        "raw",
        415,
        "unsupported_media_type",
        jpeg,
        "application/octet-stream",
    )
    add("ct-none.jpg", "a JPEG without a Content-Type", "raw", 415, "unsupported_media_type", jpeg, None)
    add(
        "ct-json.jpg", "a JPEG sent as application/json", "raw", 415, "unsupported_media_type", jpeg, "application/json"
    )

    # Multipart abuse.
    add(
        "multipart-wrong-field.jpg",
        "multipart with the image in the field 'image' instead of 'file'",
        "multipart",
        422,
        "missing_field",
        jpeg,
        field="image",
    )
    add("multipart-no-file", "multipart with text fields only", "multipart_text", 422, "missing_field")
    add("multipart-empty-file.jpg", "multipart with an empty file part", "multipart", 400, "empty_body", b"")
    add(
        "multipart-no-boundary.bin",
        "multipart Content-Type without a boundary",
        "multipart_raw",
        422,
        "missing_field",
        _multipart([("file", "a.jpg", jpeg)]),
        "multipart/form-data",
    )
    add(
        "multipart-unterminated.bin",
        "a multipart body that never ends",
        "multipart_raw",
        422,
        "missing_field",
        _multipart([("file", "a.jpg", jpeg)])[:-40],
        "multipart/form-data; boundary=hostile-boundary",
    )
    batch_type = "multipart/form-data; boundary=hostile-boundary"
    add(
        "batch-5000-parts.bin",
        "/predict/batch with 5000 tiny file parts",
        "batch_raw",
        413,
        "too_many_images",
        _multipart([("files", f"{i}.jpg", b"x") for i in range(5000)]),
        batch_type,
        parts=5000,
    )
    add(
        "batch-20000-parts.bin",
        "/predict/batch with 20000 tiny file parts (the parser stops at max_batch_images + 1)",
        "batch_raw",
        413,
        "too_many_images",
        _multipart([("files", f"{i}.jpg", b"x") for i in range(20_000)]),
        batch_type,
        parts=20_000,
    )
    add(
        "batch-5000-fields.bin",
        "/predict/batch with 5000 text fields and one file",
        "batch_raw",
        422,
        "missing_field",
        _multipart([(f"field{i}", None, b"x") for i in range(5000)] + [("files", "a.jpg", jpeg)]),
        batch_type,
        parts=5001,
    )

    # Bodies too big or too slow (generated while sending: not stored as files).
    add(
        "body-100mb-declared",
        "a 100 MB body with Content-Length",
        "huge_body",
        413,
        "payload_too_large",
        size=100 << 20,
        content_type="image/jpeg",
    )
    add(
        "body-100mb-chunked",
        "a 100 MB body with chunked transfer encoding",
        "huge_body",
        413,
        "payload_too_large",
        size=100 << 20,
        content_type="image/jpeg",
        chunked=True,
    )
    add(
        "body-100mb-multipart",
        "a 100 MB multipart body",
        "huge_body",
        413,
        "payload_too_large",
        size=100 << 20,
        content_type="multipart/form-data; boundary=hostile-boundary",
    )
    add(
        "slow-loris-upload",
        "a JPEG body trickled a few bytes at a time, slower than the body timeout",
        "slow_upload",
        408,
        "request_timeout",
        jpeg,
        "image/jpeg",
    )
    return cases


def memory_cases(side: int = 6000) -> list[HostileInput]:
    """Small files that decode to a large canvas (``side`` x ``side``, under the default 40 MP limit) in the modes
    whose conversion to 8-bit RGB used to need wide dtypes on the whole image (issue 13): lossless WebP with alpha,
    RGBA PNG, 16-bit grayscale TIFF and RGBA TIFF. Each is a valid image without a face: the documented answer is
    200 with no faces. Not part of `build_corpus` (decoding each takes seconds): tests/test_hardening.py and
    benchmarks/memory_per_image.py use them."""
    yy, xx = np.mgrid[0:side, 0:side]
    gradient = ((xx + yy) * 255 // (2 * side)).astype(np.uint8)
    alpha = np.where((xx // 500 + yy // 500) % 2 == 0, 255, 96).astype(np.uint8)
    rgba = np.dstack([gradient, 255 - gradient, np.full_like(gradient, 128), alpha])
    gray16 = ((xx // 250 + yy // 250) * 65535 // (2 * side // 250)).astype(np.uint16)  # blocks: compresses well
    del xx, yy
    cases = [
        HostileInput(
            f"webp-lossless-rgba-{side}.webp",
            f"a lossless WebP with alpha, {side}x{side}",
            "raw",
            200,
            None,
            _encode(Image.new("RGBA", (side, side), (20, 40, 60, 100)), "WEBP", lossless=True),
            "image/webp",
            faces=0,
        ),
        HostileInput(
            f"png-rgba-{side}.png",
            f"an RGBA PNG, {side}x{side}",
            "raw",
            200,
            None,
            _encode(Image.fromarray(rgba, "RGBA"), "PNG", compress_level=9),
            "image/png",
            faces=0,
        ),
        HostileInput(
            f"tiff-16bit-gray-{side}.tif",
            f"a 16-bit grayscale TIFF, {side}x{side} (deflate)",
            "raw",
            200,
            None,
            _encode(Image.fromarray(gray16), "TIFF", compression="tiff_adobe_deflate"),
            "image/tiff",
            faces=0,
        ),
        HostileInput(
            f"tiff-rgba-{side}.tif",
            f"an RGBA TIFF, {side}x{side} (deflate)",
            "raw",
            200,
            None,
            _encode(Image.fromarray(rgba, "RGBA"), "TIFF", compression="tiff_adobe_deflate"),
            "image/tiff",
            faces=0,
        ),
    ]
    return cases


def write_corpus(out_dir: Path) -> list[HostileInput]:
    """Write every byte-payload case to ``out_dir`` and ``out_dir/manifest.json`` describing all of them."""
    cases = build_corpus()
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        if case.data:
            (out_dir / case.name).write_bytes(case.data)
    manifest = {"cases": [case.manifest_entry() for case in cases]}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the corpus and manifest.json into")
    args = parser.parse_args(argv)
    cases = write_corpus(args.out_dir)
    print(f"{len(cases)} cases written to {args.out_dir}")
    return 0 if len(cases) >= MIN_CASES else 1


if __name__ == "__main__":
    sys.exit(main())
