"""Decode uploaded image bytes into one RGB uint8 array, safely.

What `decode_image` guarantees:

- The pixel limit is checked on the size declared in the file header, **before** any pixel is decoded, so a
  decompression bomb (a tiny file that declares a huge canvas) costs nothing.
- EXIF orientation (tags 1–8) is applied, so the array — and every face box computed on it — is in the
  coordinates of the image as a person sees it (phone photos store pixels sideways plus a rotation tag).
- Every accepted input becomes ``H×W×3`` uint8 RGB: grayscale is replicated to three channels; images with an
  alpha channel (RGBA, LA, palette with transparency) are composited on **white**, because fully transparent
  pixels carry arbitrary (often black) colour that would otherwise show up as a black background; 16-bit images
  are scaled to 8 bits over their full range (``v * 255 / 65535``, rounded), not truncated; CMYK and YCbCr are
  converted to RGB; of a multi-frame file (animated GIF/WebP/PNG, multi-page TIFF) the first frame is used.
- Failures are typed (``service.errors``): empty → `EmptyImageError`; not an image, truncated or corrupt →
  `InvalidImageError`; an image in a format outside `ACCEPTED_FORMATS` → `UnsupportedImageError`; more pixels
  than allowed → `ImageTooLargeError`.

`read_header` learns an image's declared size and bytes per pixel from its first bytes without decoding anything,
in bounded time (fixed offsets for PNG, GIF, BMP, WebP and TIFF; a JPEG's markers are walked segment by segment,
at most `MAX_JPEG_SEGMENTS` of them and `MAX_JPEG_JUNK_BYTES` of fill or junk bytes, else the file is refused as
invalid: Pillow's own header parser reads a JPEG one marker at a time in Python, and a 10 MiB file of nothing but
comment markers held it for 23 s). `decoded_bytes` turns that into what admission counts (`service.pipeline`).

JPEG (most uploads, every webcam frame) takes a fast path through OpenCV's decoder, about twice as fast as
Pillow's (benchmarks/DETECTORS.md); OpenCV applies the EXIF orientation itself. The fast path is only taken for a
stream that ends with the JPEG end-of-image marker and is not CMYK, because OpenCV silently returns a partly grey
image for a truncated JPEG where Pillow raises; every other case goes through Pillow.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from service.errors import EmptyImageError, ImageTooLargeError, InvalidImageError, UnsupportedImageError

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_DECODED_BYTES_PER_PIXEL",
    "MIN_DECODED_BYTES_PER_PIXEL",
    "ImageHeader",
    "decode_image",
    "decoded_bytes",
    "read_header",
]

#: Pillow format names that are decoded. MPO is what Pillow calls the JPEG files many phone cameras write
#: (a JPEG with extra images appended); GIF is accepted for its first frame.
ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "TIFF", "GIF"})

# Signatures of image formats Pillow cannot open here, so that they are answered "unsupported format" (415)
# rather than "not an image" (400). (offset, bytes) pairs.
_KNOWN_UNSUPPORTED_SIGNATURES: tuple[tuple[str, int, bytes], ...] = (
    ("HEIC", 4, b"ftypheic"),
    ("HEIC", 4, b"ftypheix"),
    ("HEIC", 4, b"ftyphevc"),
    ("HEIF", 4, b"ftypmif1"),
    ("HEIF", 4, b"ftypmsf1"),
    ("AVIF", 4, b"ftypavif"),
    ("AVIF", 4, b"ftypavis"),
    ("JPEG XL", 0, b"\xff\x0a"),
    ("JPEG XL", 0, b"\x00\x00\x00\x0cJXL \r\n\x87\n"),
    ("JPEG 2000", 0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"),
    ("JPEG 2000", 0, b"\xff\x4f\xff\x51"),
    ("SVG", 0, b"<svg"),
    ("PSD", 0, b"8BPS"),
    # A TIFF Pillow cannot identify uses a compression or layout Pillow does not decode (e.g. planar JPEG).
    ("This kind of TIFF", 0, b"II*\x00"),
    ("This kind of TIFF", 0, b"MM\x00*"),
)

# Exceptions Pillow's decoders raise on corrupt data (besides OSError): plugins parse headers with struct and
# plain Python, and do not wrap every failure.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    MemoryError,
)

_JPEG_EOI = b"\xff\xd9"


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode an encoded image into an ``H×W×3`` uint8 RGB array with its EXIF orientation applied.

    Args:
        data: the encoded file (JPEG, PNG, WebP, BMP, TIFF or GIF).
        max_pixels: the largest ``width * height`` accepted; checked on the header before decoding pixels.

    Raises:
        EmptyImageError: ``data`` is empty.
        InvalidImageError: not an image, or a truncated or corrupt one.
        UnsupportedImageError: an image in a format the service does not decode.
        ImageTooLargeError: the image declares more than ``max_pixels`` pixels.
    """
    if not data:
        raise EmptyImageError("The request carries no image data.")
    read_header(data)  # refuses a JPEG whose header Pillow would take seconds to parse (bounded: microseconds)
    image = _open_header(data, max_pixels)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"The image declares an empty canvas ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels."
        )
    if image.format in ("JPEG", "MPO") and image.mode in ("RGB", "L") and _ends_with_eoi(data):
        rgb = _decode_jpeg_opencv(data, expected=(width, height))
        if rgb is not None:
            return rgb
    if image.format == "WEBP" and getattr(image, "n_frames", 1) == 1:
        rgb = _decode_webp_opencv(data, expected=(width, height))
        if rgb is not None:
            return _orient(rgb, image.getexif().get(_EXIF_ORIENTATION, 1))
    return _decode_pillow(image)


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    """Open the file lazily (Pillow reads only the header here) and check that its format is accepted."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; our own limit is checked next.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (2 * Image.MAX_IMAGE_PIXELS, ~179 MP) tripped while reading the header.
        raise ImageTooLargeError(
            f"The image declares more pixels than Pillow decodes safely; the limit is {max_pixels} pixels."
        ) from exc
    except UnidentifiedImageError as exc:
        unsupported = _known_unsupported_format(data)
        if unsupported:
            raise UnsupportedImageError(
                f"{unsupported} images are not supported; send JPEG, PNG, WebP, BMP, TIFF or GIF."
            ) from exc
        raise InvalidImageError("The data is not a recognised image.") from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"The image header is corrupt ({type(exc).__name__}).") from exc
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedImageError(f"{image.format} images are not supported; send JPEG, PNG, WebP, BMP, TIFF or GIF.")
    return image


def _known_unsupported_format(data: bytes) -> str | None:
    head = data[:64].lstrip() if data[:1].isspace() or data[:1] == b"<" else data[:64]
    for name, offset, signature in _KNOWN_UNSUPPORTED_SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if head.startswith(b"<?xml") and b"<svg" in data[:1024]:
        return "SVG"
    return None


def _ends_with_eoi(data: bytes) -> bool:
    # Trailing zero padding after the end-of-image marker is common (some encoders pad to a block size).
    return data.rstrip(b"\x00").endswith(_JPEG_EOI)


def _decode_jpeg_opencv(data: bytes, *, expected: tuple[int, int]) -> np.ndarray | None:
    """Decode a complete baseline/progressive RGB or grayscale JPEG with OpenCV (EXIF orientation applied by
    ``IMREAD_COLOR``). Returns None when OpenCV cannot, so that Pillow decides."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or sorted(bgr.shape[:2]) != sorted(expected):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_webp_opencv(data: bytes, *, expected: tuple[int, int]) -> np.ndarray | None:
    """A still WebP through OpenCV's libwebp, which decodes straight into one array (Pillow's plugin holds the
    canvas three times over: measured 540 MiB for a 6000x6000 lossless WebP with alpha, 250 MiB this way); alpha
    is composited on white band by band. Returns None when OpenCV cannot, so that Pillow decides."""
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 3 or (decoded.shape[1], decoded.shape[0]) != expected:
        return None
    if decoded.shape[2] == 3:
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB, dst=decoded)  # in place
    if decoded.shape[2] != 4:
        return None
    height, width = decoded.shape[:2]
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        band = decoded[top : top + rows]
        pixels = band.astype(np.uint16)
        alpha = pixels[:, :, 3:4]
        out[top : top + rows] = ((pixels[:, :, 2::-1] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return out


def _decode_pillow(image: Image.Image) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.seek(0)  # multi-frame files: the first frame
            image.load()
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            rgb = _to_rgb_array(image)
            image.close()  # the decoded canvas goes before the orientation copy is made
            return _orient(rgb, orientation)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"The image declares too many pixels to decode safely ({exc}).") from exc
    except (ImageTooLargeError, UnsupportedImageError):
        raise
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"The image is truncated or corrupt ({_describe(exc)}).") from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: EXIF tag 0x0112; values 2-8 flip and/or rotate (1: as stored).
_EXIF_ORIENTATION = 0x0112
#: Pixels converted at a time: every conversion works on horizontal bands of about this many pixels, so its wide
#: intermediates (uint16 compositing, int64 16-bit scaling) cost a few MiB, never a multiple of the image.
_BAND_PIXELS = 1 << 20


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an ``H×W×3`` array, as ``ImageOps.exif_transpose`` would."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: a.transpose(1, 0, 2)[::-1],
    }
    op = ops.get(orientation if isinstance(orientation, int) else 1)
    return rgb if op is None else np.ascontiguousarray(op(rgb))


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to an ``H×W×3`` uint8 RGB array (see the module docstring for the rules).

    The output is allocated once and filled band by band, so the memory a conversion needs beyond the decoded
    image is the output (3 bytes a pixel) plus one band's intermediates, whatever the mode."""
    mode = image.mode
    if mode == "RGB":
        return np.array(image, dtype=np.uint8)
    convert = _band_converter(image)
    width, height = image.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        out[top:bottom] = convert(image.crop((0, top, width, bottom)))
    return out


def _band_converter(image: Image.Image) -> Callable[[Image.Image], np.ndarray]:
    """The function that turns one band (a crop of ``image``, same mode) into ``h×w×3`` uint8 RGB."""
    mode = image.mode
    if mode == "P":
        if "transparency" in image.info:
            transparency = image.info["transparency"]

            def palette_alpha(band: Image.Image) -> np.ndarray:
                band.info["transparency"] = transparency
                return _composite_on_white(band.convert("RGBA"))

            return palette_alpha
        return lambda band: np.asarray(band.convert("RGB"), dtype=np.uint8)
    if mode == "RGBX":
        return lambda band: np.asarray(band.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return lambda band: _composite_on_white(band if band.mode == "RGBA" else band.convert("RGBA"))
    if mode in ("L", "1"):
        return lambda band: np.repeat(np.asarray(band.convert("L"), dtype=np.uint8)[:, :, None], 3, axis=2)
    if mode.startswith("I;16") or mode == "I":
        return lambda band: np.repeat(_scale_16bit(np.asarray(band))[:, :, None], 3, axis=2)
    if mode == "F":
        # Float images are 0..1 by convention; larger values are taken as 0..255 (decided on the whole image).
        low, high = image.getextrema()
        scale = 255.0 if not (isinstance(high, float) and high > 1.0) else 1.0

        def floats(band: Image.Image) -> np.ndarray:
            values = np.asarray(band, dtype=np.float32)
            gray = np.clip(np.nan_to_num(values) * scale + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)

        return floats
    if mode in ("CMYK", "YCbCr", "HSV", "LAB"):

        def colour(band: Image.Image) -> np.ndarray:
            try:
                return np.asarray(band.convert("RGB"), dtype=np.uint8)
            except ValueError as exc:
                raise UnsupportedImageError(f"Images in colour mode {mode} are not supported.") from exc

        return colour
    raise UnsupportedImageError(f"Images in colour mode {mode} are not supported.")


def _composite_on_white(rgba: Image.Image) -> np.ndarray:
    pixels = np.asarray(rgba, dtype=np.uint16)
    alpha = pixels[:, :, 3:4]
    rgb = (pixels[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return rgb.astype(np.uint8)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map 16-bit samples (0..65535) to 8 bits with rounding: 65535 → 255, 32768 → 128 (on one band at a time)."""
    values = np.clip(values.astype(np.int64), 0, 65535)
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


# --- declared size without decoding (admission by decoded bytes) --------------------------------------------------

#: Bytes a pixel is counted at, at least (the RGB array every image becomes) and at most (the widest canvas a
#: decoder here holds: Pillow stores every multi-channel mode, 16-bit RGB(A) and 32-bit gray included, in 4 bytes a
#: pixel; OpenCV's JPEG decoder 3 and its WebP decoder 4).
MIN_DECODED_BYTES_PER_PIXEL = 3
MAX_DECODED_BYTES_PER_PIXEL = 4
#: A JPEG's header may have at most this many marker segments before its first scan (real files have tens; the
#: walk of 2,000 takes a few ms, Pillow's parse of them ~30 ms).
MAX_JPEG_SEGMENTS = 2_000
#: ...and at most this many fill (0xFF) or junk bytes between them (real files have none or a few).
MAX_JPEG_JUNK_BYTES = 64 * 1024

_NOT_FF = re.compile(rb"[^\xff]")


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header declares: its format (Pillow's name), canvas size and bytes per pixel of its samples
    (channels x bytes per sample, e.g. 8 for 16-bit RGBA PNG, 1 for a palette or 8-bit gray image)."""

    format: str
    width: int
    height: int
    bytes_per_pixel: float

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decoded_bytes(data: bytes, *, max_pixels: int) -> int:
    """The bytes of decoded pixels admission counts for ``data``: its declared pixels (at most ``max_pixels``: a
    larger image is refused before it is decoded) x its bytes per pixel, between 3 and 4 (see
    `MIN_DECODED_BYTES_PER_PIXEL`). When the header cannot be read, the worst case: ``max_pixels`` x 4.

    Raises `InvalidImageError` for a JPEG whose header is not bounded (`read_header`)."""
    header = read_header(data)
    if header is None or header.width <= 0 or header.height <= 0:
        return max_pixels * MAX_DECODED_BYTES_PER_PIXEL
    per_pixel = min(MAX_DECODED_BYTES_PER_PIXEL, max(MIN_DECODED_BYTES_PER_PIXEL, header.bytes_per_pixel))
    return int(min(header.pixels, max_pixels) * per_pixel)


def read_header(data: bytes) -> ImageHeader | None:
    """The size and sample layout ``data``'s header declares, read without decoding and in bounded time; None when
    the format is not recognised or the header is short or odd (the decoder then says what is wrong).

    Raises `InvalidImageError` for a JPEG with more than `MAX_JPEG_SEGMENTS` marker segments or more than
    `MAX_JPEG_JUNK_BYTES` junk bytes before its first scan."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_header(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png_header(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack_from("<HH", data, 6)
            return ImageHeader("GIF", width, height, 3)
        if data[:2] == b"BM":
            return _bmp_header(data, 14, "BMP")
        if len(data) >= 4 and struct.unpack_from("<I", data)[0] in (12, 40, 52, 56, 64, 108, 124):
            return _bmp_header(data, 0, "DIB")
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_header(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_header(data)
    except struct.error:  # shorter than its header
        return None
    return None


def _png_header(data: bytes) -> ImageHeader | None:
    if data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour)
    if channels is None:
        return None
    return ImageHeader("PNG", width, height, channels * (2 if depth == 16 else 1))


def _bmp_header(data: bytes, at: int, name: str) -> ImageHeader | None:
    size = struct.unpack_from("<I", data, at)[0]
    if size == 12:  # OS/2 core header
        width, height, _, bits = struct.unpack_from("<HHHH", data, at + 4)
    else:
        width, height, _, bits = struct.unpack_from("<iiHH", data, at + 4)
    return ImageHeader(name, abs(width), abs(height), max(bits, 8) / 8)


def _webp_header(data: bytes) -> ImageHeader | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("WEBP", width, height, 4 if flags & 0x10 else 3)
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack_from("<I", data, 21)[0]
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("WEBP", width, height, 4 if (bits >> 28) & 1 else 3)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("WEBP", width & 0x3FFF, height & 0x3FFF, 3)
    return None


#: TIFF field types' sizes (SHORT, LONG) and the tags read.
_TIFF_SIZES = {3: ("H", 2), 4: ("I", 4)}
_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_BITS, _TIFF_SAMPLES = 256, 257, 258, 277


def _tiff_header(data: bytes) -> ImageHeader | None:
    """The first image file directory's size, samples per pixel and bits per sample (the first page is decoded)."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    fields: dict[int, int] = {}
    for index in range(count):  # at most 65,535 entries of 12 bytes
        tag, kind, values, value = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * index)
        if tag not in (_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_BITS, _TIFF_SAMPLES) or kind not in _TIFF_SIZES:
            continue
        code, size = _TIFF_SIZES[kind]
        raw = value if values * size <= 4 else data[struct.unpack(order + "I", value)[0] :][:size]
        fields[tag] = struct.unpack_from(order + code, raw)[0]  # (bits per sample: the first sample's)
    if _TIFF_WIDTH not in fields or _TIFF_HEIGHT not in fields:
        return None
    samples = fields.get(_TIFF_SAMPLES, 1)
    bits = fields.get(_TIFF_BITS, 1)
    return ImageHeader("TIFF", fields[_TIFF_WIDTH], fields[_TIFF_HEIGHT], samples * max(bits, 8) / 8)


def _jpeg_header(data: bytes) -> ImageHeader | None:
    """Walk the markers up to the first scan as Pillow's parser does (its table says which have a length), in at
    most `MAX_JPEG_SEGMENTS` steps; the size and components come from the frame header (SOFn)."""
    markers = JpegImagePlugin.MARKER
    position, segments, junk = 2, 0, 0
    header: ImageHeader | None = None
    end = len(data)
    while position < end:
        if data[position] != 0xFF:  # junk before a marker: skip to the next 0xFF
            found = data.find(b"\xff", position, position + MAX_JPEG_JUNK_BYTES - junk + 1)
            junk += (found if found >= 0 else end) - position
            position = found if found >= 0 else end
            if junk > MAX_JPEG_JUNK_BYTES:
                raise InvalidImageError(f"The JPEG header has more than {MAX_JPEG_JUNK_BYTES} bytes of junk.")
            continue
        # fill bytes: 0xFF repeated; the last one starts the marker
        run = _NOT_FF.search(data, position, position + MAX_JPEG_JUNK_BYTES - junk + 2)
        stop = run.start() if run else end
        junk += stop - position - 1
        position = stop - 1
        if junk > MAX_JPEG_JUNK_BYTES:
            raise InvalidImageError(f"The JPEG header has more than {MAX_JPEG_JUNK_BYTES} bytes of junk or padding.")
        if position + 1 >= end:
            return None
        marker = 0xFF00 | data[position + 1]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise InvalidImageError(f"The JPEG header has more than {MAX_JPEG_SEGMENTS} marker segments.")
        if marker == 0xFF00:  # an escaped 0xFF: junk
            position += 2
            continue
        entry = markers.get(marker)
        if entry is None:
            return None  # not a marker Pillow knows: it refuses the file
        if marker == 0xFFDA:  # start of scan: the header is over
            return header
        if entry[2] is None:  # no length (SOI, EOI, RSTn, ...)
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2:
            return None
        if 0xFFC0 <= marker <= 0xFFCF and marker not in (0xFFC4, 0xFFC8, 0xFFCC) and header is None:
            precision, height, width, components = struct.unpack_from(">BHHB", data, position + 4)
            header = ImageHeader("JPEG", width, height, components * (2 if precision > 8 else 1))
        position += 2 + length
    return None
