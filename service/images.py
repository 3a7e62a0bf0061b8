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

JPEG (most uploads, every webcam frame) takes a fast path through OpenCV's decoder, about twice as fast as
Pillow's (benchmarks/DETECTORS.md); OpenCV applies the EXIF orientation itself. The fast path is only taken for a
stream that ends with the JPEG end-of-image marker and is not CMYK, because OpenCV silently returns a partly grey
image for a truncated JPEG where Pillow raises; every other case goes through Pillow.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import EmptyImageError, ImageTooLargeError, InvalidImageError, UnsupportedImageError

__all__ = ["ACCEPTED_FORMATS", "decode_image"]

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
