"""Real photographs with known face boxes, shared by the tests (tests/photos.py) and the benchmarks
(benchmarks/detectors.py); neither imports the other.

Everything comes from photographs that installed packages ship in their wheels (no download): scikit-image's
``astronaut`` (one face, Eileen Collins in a space suit) and matplotlib's ``grace_hopper.jpg`` (one face, Grace
Hopper in uniform with a tie, medals, cap and a flag), and their head and shoulders pasted onto other pictures.
Needs the test/training dependencies (scikit-image, matplotlib); not part of the installed service.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import matplotlib
import numpy as np
from PIL import Image
from skimage import data as skdata

__all__ = ["ASTRONAUT_FACE", "HOPPER_FACE", "FacePhoto", "astronaut", "hopper", "head_and_shoulders", "paste_head"]

#: Where the astronaut's face is in ``skimage.data.astronaut()`` (x, y, width, height), measured by hand with a
#: margin of a few pixels of tolerance (see `iou`).
ASTRONAUT_FACE: tuple[int, int, int, int] = (178, 68, 93, 93)

#: Where Grace Hopper's face is in matplotlib's ``grace_hopper.jpg`` (512×600), from eyebrows to chin.
HOPPER_FACE: tuple[int, int, int, int] = (175, 115, 180, 215)


@dataclass(frozen=True)
class FacePhoto:
    """An RGB photograph and the boxes ``(x, y, width, height)`` of the faces in it, left to right."""

    image: np.ndarray
    faces: tuple[tuple[int, int, int, int], ...]


def astronaut() -> FacePhoto:
    """512×512 colour photograph with one face of about 93 px."""
    image: np.ndarray = skdata.astronaut()  # type: ignore[no-untyped-call]  # (scikit-image: untyped)
    return FacePhoto(image, (ASTRONAUT_FACE,))


def hopper() -> FacePhoto:
    """512×600 colour portrait (matplotlib's sample ``grace_hopper.jpg``) with one face of about 190 px."""
    path = f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"
    with Image.open(path) as opened:
        return FacePhoto(np.asarray(opened.convert("RGB")), (HOPPER_FACE,))


def head_and_shoulders(person: str = "astronaut") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A head-and-shoulders cut-out of ``"astronaut"`` or ``"hopper"`` and the face box inside it; pasted into the
    composed photos so that each face comes with its natural context (hair, neck, clothes), not as a bare square."""
    if person == "astronaut":
        image, (x, y, w, h), top, left = astronaut().image[0:300, 100:360], ASTRONAUT_FACE, 0, 100
    elif person == "hopper":
        image, (x, y, w, h), top, left = hopper().image[40:480, 60:470], HOPPER_FACE, 40, 60
    else:
        raise ValueError(f"unknown person {person!r}")
    return image, (x - left, y - top, w, h)


def paste_head(
    canvas: np.ndarray,
    person: str,
    face_width: int,
    left: int,
    top: int,
    *,
    mirror: bool = False,
    grayscale: bool = False,
) -> tuple[int, int, int, int]:
    """Paste ``person``'s head and shoulders scaled so that the face is ``face_width`` px wide, with the cut-out's
    top-left corner at (``left``, ``top``), clipped at the canvas edges. Returns the pasted face box."""
    head, (fx, fy, fw, fh) = head_and_shoulders(person)
    scale = face_width / fw
    patch = cv2.resize(
        head,
        (round(head.shape[1] * scale), round(head.shape[0] * scale)),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
    )
    fx, fy, fw, fh = (round(v * scale) for v in (fx, fy, fw, fh))
    if mirror:
        patch = patch[:, ::-1]
        fx = patch.shape[1] - fx - fw
    if grayscale:
        patch = np.repeat(cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    height, width = canvas.shape[:2]
    ph = min(patch.shape[0], height - top)
    pw = min(patch.shape[1], width - left)
    canvas[top : top + ph, left : left + pw] = patch[:ph, :pw]
    return (left + fx, top + fy, fw, fh)


def blend_head(canvas: np.ndarray, person: str, face_width: int, face_x: int, face_y: int) -> tuple[int, int, int, int]:
    """Blend ``person``'s head (an oval around the face, soft-edged, with hair and chin) onto ``canvas`` so that the
    face is ``face_width`` px wide with its top-left corner at (``face_x``, ``face_y``); clipped at the edges.
    Returns the face box. Unlike `paste_head` no rectangle of the source background comes along, so two heads can
    pass close to each other."""
    head, (fx, fy, fw, fh) = head_and_shoulders(person)
    scale = face_width / fw
    patch = cv2.resize(
        head,
        (round(head.shape[1] * scale), round(head.shape[0] * scale)),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
    ).astype(np.float32)
    fx, fy, fw, fh = (round(v * scale) for v in (fx, fy, fw, fh))
    mask = np.zeros(patch.shape[:2], np.float32)
    centre = (fx + fw // 2, fy + fh // 2 - fh // 10)
    cv2.ellipse(mask, centre, (round(fw * 0.68), round(fh * 0.72)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, fw / 25))[:, :, None]
    top, left = face_y - fy, face_x - fx
    height, width = canvas.shape[:2]
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(height, top + patch.shape[0]), min(width, left + patch.shape[1])
    if y1 > y0 and x1 > x0:
        part = patch[y0 - top : y1 - top, x0 - left : x1 - left]
        alpha = mask[y0 - top : y1 - top, x0 - left : x1 - left]
        region = canvas[y0:y1, x0:x1].astype(np.float32)
        canvas[y0:y1, x0:x1] = np.clip(alpha * part + (1 - alpha) * region, 0, 255).astype(np.uint8)
    return (face_x, face_y, fw, fh)


def two_people_crossing(
    index: int, frames: int, *, width: int = 640, height: int = 360, face_width: int = 90
) -> tuple[np.ndarray, tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """Frame ``index`` of a ``frames``-long RGB video of two real people crossing: the astronaut's head moves from
    the left edge to the right one in the upper half, Grace Hopper's from right to left three quarters of a face
    lower, so their faces overlap as they pass each other (and the left-to-right order of the faces swaps) in the
    middle frame. Returns the frame and the two face boxes, the astronaut's first."""
    yy, xx = np.mgrid[0:height, 0:width]
    canvas = np.stack([90 + 40 * xx / width, 100 + 30 * yy / height, 110 + 20 * (xx + yy) / (width + height)], axis=2)
    canvas = canvas.astype(np.uint8)
    margin = face_width // 2
    progress = index / max(1, frames - 1)
    travel = width - 2 * margin - face_width
    astronaut_x = round(margin + progress * travel)
    hopper_x = round(width - margin - face_width - progress * travel)
    upper = height // 2 - face_width
    lower = upper + (3 * face_width) // 4
    a = blend_head(canvas, "astronaut", face_width, astronaut_x, upper)
    b = blend_head(canvas, "hopper", face_width, hopper_x, lower)
    return canvas, (a, b)
