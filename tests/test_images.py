"""decode_image on real photographs in every accepted format and mode, EXIF orientation, and every failure."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from service.errors import EmptyImageError, ImageTooLargeError, InvalidImageError, UnsupportedImageError
from service.images import decode_image
from tests.photos import astronaut, encode, with_exif_orientation

LIMIT = 50_000_000


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return astronaut().image


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# --- formats ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, options, tolerance",
    [
        ("PNG", {}, 0.0),
        ("WEBP", {"lossless": True}, 0.0),
        ("BMP", {}, 0.0),
        ("TIFF", {}, 0.0),
        ("TIFF", {"compression": "tiff_lzw"}, 0.0),
        ("JPEG", {"quality": 95}, 3.0),
        ("JPEG", {"quality": 90, "progressive": True}, 3.0),
        ("WEBP", {"quality": 90}, 4.0),
    ],
)
def test_accepted_formats_decode_to_rgb(photo, fmt, options, tolerance):
    decoded = decode_image(encode(photo, fmt, **options), max_pixels=LIMIT)
    assert decoded.shape == (512, 512, 3) and decoded.dtype == np.uint8
    assert mean_abs_diff(decoded, photo) <= tolerance


def test_jpeg_fast_path_matches_pillow(photo):
    # The OpenCV path must give the same picture as Pillow (colour order, orientation, size).
    jpeg = encode(photo, "JPEG", quality=95)
    pillow = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert mean_abs_diff(decode_image(jpeg, max_pixels=LIMIT), pillow) < 1.0


def test_gif_first_frame_of_animation(photo):
    frames = [Image.fromarray(photo), Image.fromarray(255 - photo)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert decoded.shape == (512, 512, 3)
    assert mean_abs_diff(decoded, photo) < 12  # 256-colour palette quantisation
    assert mean_abs_diff(decoded, 255 - photo) > 60


def test_multipage_tiff_first_page(photo):
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "TIFF", save_all=True, append_images=[Image.fromarray(photo[::-1])])
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), max_pixels=LIMIT), photo)


def test_tiff_variant_pillow_cannot_read_is_unsupported():
    # scikit-image's multipage_rgb.tif is a valid TIFF in a layout Pillow does not decode.
    raw = open(skdata.__path__[0] + "/multipage_rgb.tif", "rb").read()
    with pytest.raises(UnsupportedImageError):
        decode_image(raw, max_pixels=LIMIT)


# --- colour modes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_grayscale_becomes_three_equal_channels(fmt):
    gray = skdata.camera()
    decoded = decode_image(encode(gray, fmt), max_pixels=LIMIT)
    assert decoded.shape == gray.shape + (3,)
    assert np.array_equal(decoded[:, :, 0], decoded[:, :, 1]) and np.array_equal(decoded[:, :, 1], decoded[:, :, 2])
    assert mean_abs_diff(decoded[:, :, 0], gray) <= (2.0 if fmt == "JPEG" else 0.0)


def test_rgba_is_composited_on_white(photo):
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0  # fully transparent: whatever colour is stored there must not show
    alpha[:, 100:200] = 128  # half transparent: halfway to white
    rgba = np.dstack([photo, alpha])
    rgba[:, :100, :3] = 0
    decoded = decode_image(encode(rgba, "PNG"), max_pixels=LIMIT)
    assert decoded.shape == (512, 512, 3)
    assert (decoded[:, :100] == 255).all()
    expected_half = (photo[:, 100:200].astype(np.int32) * 128 + 255 * 127 + 127) // 255
    assert np.abs(decoded[:, 100:200].astype(np.int32) - expected_half).max() <= 1
    np.testing.assert_array_equal(decoded[:, 200:], photo[:, 200:])


def test_grayscale_with_alpha(photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    la = Image.fromarray(
        np.dstack([gray, np.where(np.arange(512) < 256, 0, 255).astype(np.uint8)[None, :].repeat(512, 0)]), "LA"
    )
    buffer = io.BytesIO()
    la.save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert (decoded[:, :256] == 255).all()
    np.testing.assert_array_equal(decoded[:, 256:, 1], gray[:, 256:])


def test_palette_png(photo):
    palette = Image.fromarray(photo).quantize(colors=64)
    assert palette.mode == "P"
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded, np.asarray(palette.convert("RGB")))


def test_palette_png_with_transparent_colour(photo):
    palette = Image.fromarray(photo).quantize(colors=64)
    index = int(np.asarray(palette)[0, 0])
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=index)
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    transparent = np.asarray(palette) == index
    assert transparent.any() and (decoded[transparent] == 255).all()


def test_16bit_grayscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256 * 64).astype(np.uint16).reshape(64, 256)
    ok, png = cv2.imencode(".png", ramp)
    assert ok
    decoded = decode_image(png.tobytes(), max_pixels=LIMIT)
    assert decoded.shape == (64, 256, 3)
    expected = np.round(ramp.astype(np.float64) * 255 / 65535)
    assert np.abs(decoded[:, :, 0].astype(np.float64) - expected).max() <= 0.5
    assert decoded.min() == 0 and decoded.max() == 255


def test_16bit_grayscale_photo_keeps_its_content():
    gray16 = skdata.camera().astype(np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, "TIFF")
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    np.testing.assert_array_equal(decoded[:, :, 2], skdata.camera())


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_16bit_colour(photo, ext):
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(photo.astype(np.uint16) * 257, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode_image(encoded.tobytes(), max_pixels=LIMIT), photo)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(photo, fmt):
    cmyk = Image.fromarray(photo).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert decoded.shape == (512, 512, 3)
    assert mean_abs_diff(decoded, np.asarray(cmyk.convert("RGB"))) < 3.0


# --- EXIF orientation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(orientation, fmt):
    # A non-square picture, so that a missing or wrong rotation changes the shape or the content.
    image = astronaut().image[:, 64 : 448 - 64]
    decoded = decode_image(with_exif_orientation(image, orientation, fmt=fmt), max_pixels=LIMIT)
    assert decoded.shape == image.shape
    assert mean_abs_diff(decoded, image) < (3.0 if fmt == "JPEG" else 0.01)


# --- failures -----------------------------------------------------------------------------------------------------


def test_empty():
    with pytest.raises(EmptyImageError) as caught:
        decode_image(b"", max_pixels=LIMIT)
    assert caught.value.status == 400 and caught.value.code == "empty_body"


@pytest.mark.parametrize(
    "payload", [b"hello, this is not an image", b"\x00" * 1000, b'{"image": "x.jpg"}', bytes(range(256)) * 4]
)
def test_not_an_image(payload):
    with pytest.raises(InvalidImageError) as caught:
        decode_image(payload, max_pixels=LIMIT)
    assert caught.value.status == 400 and caught.value.code == "invalid_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated(photo, fmt, keep):
    full = encode(photo, fmt)
    with pytest.raises(InvalidImageError):
        decode_image(full[: int(len(full) * keep)], max_pixels=LIMIT)


def test_truncated_header():
    with pytest.raises(InvalidImageError):
        decode_image(encode(astronaut().image, "PNG")[:30], max_pixels=LIMIT)


def test_corrupt_png_data(photo):
    png = bytearray(encode(photo, "PNG"))
    idat = png.index(b"IDAT")
    png[idat + 100 : idat + 400] = b"\x13" * 300  # breaks the zlib stream (and the CRC)
    with pytest.raises(InvalidImageError):
        decode_image(bytes(png), max_pixels=LIMIT)


def test_jpeg_with_trailing_data_still_decodes(photo):
    # Some cameras append data after the end-of-image marker; that is not a truncated file.
    jpeg = encode(photo, "JPEG") + b"SEFH" + b"\x01" * 500
    assert decode_image(jpeg, max_pixels=LIMIT).shape == (512, 512, 3)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX", "SGI"])
def test_image_in_unaccepted_format(photo, fmt):
    with pytest.raises(UnsupportedImageError) as caught:
        decode_image(encode(photo[:128, :128], fmt), max_pixels=LIMIT)
    assert caught.value.status == 415 and caught.value.code == "unsupported_image_format"


@pytest.mark.parametrize(
    "head",
    [
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf",
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
    ],
)
def test_known_formats_pillow_cannot_open_are_unsupported(head):
    with pytest.raises(UnsupportedImageError):
        decode_image(head + b"\x00" * 200, max_pixels=LIMIT)


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width×height`` but which carries only a few bytes of (invalid) pixel data:
    decoding its pixels would fail, so refusing it proves that only the header was read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def test_pixel_limit_refused_from_the_header_before_decoding():
    bomb = bomb_png(10_000, 10_000)
    assert len(bomb) < 200
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(bomb, max_pixels=LIMIT)
    assert caught.value.status == 413 and caught.value.code == "image_too_large"
    assert "10000x10000" in caught.value.message and str(LIMIT) in caught.value.message


@pytest.mark.parametrize("max_pixels", [LIMIT, 10**10])
def test_pillow_decompression_bomb_guard_is_mapped(max_pixels):
    # 30000x30000 is above twice Pillow's own limit: Pillow raises while opening. That must still be a 413,
    # also when the service's limit is configured higher than Pillow's.
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb_png(30_000, 30_000), max_pixels=max_pixels)


def test_small_bomb_header_under_limit_is_a_corrupt_image():
    # The same construction under the limit: now the pixels are decoded and found missing.
    with pytest.raises(InvalidImageError):
        decode_image(bomb_png(300, 300), max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_pixel_limit_every_format(photo, fmt):
    encoded = encode(photo, fmt)
    with pytest.raises(ImageTooLargeError):
        decode_image(encoded, max_pixels=512 * 512 - 1)
    assert decode_image(encoded, max_pixels=512 * 512).shape == (512, 512, 3)
