"""Real test photographs, encoded as an upload would be (shared by every test module).

Everything comes from photographs that installed packages ship in their wheels (no download): scikit-image's
``astronaut`` (one face, Eileen Collins in a space suit), matplotlib's ``grace_hopper.jpg`` (one face, Grace Hopper
in uniform with a tie, medals, cap and a flag: a test for false positives on clothes), scikit-image's ``coffee``
and ``chelsea`` (no face: a cup, a cat) and composed photographs made by pasting these two people's head and
shoulders, at several sizes, mirrored and in grayscale, onto a real background.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import matplotlib
import numpy as np
from PIL import Image
from skimage import data as skdata

__all__ = [
    "ASTRONAUT_FACE", "HOPPER_FACE", "FacePhoto", "astronaut", "hopper", "head_and_shoulders", "paste_head",
    "no_face", "several_faces", "encode", "one_face_jpeg", "no_face_jpeg", "several_faces_jpeg", "with_exif_orientation", "EXIF_ORIENTATION_INVERSE", "iou",
]

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
    return FacePhoto(skdata.astronaut(), (ASTRONAUT_FACE,))


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


def paste_head(canvas: np.ndarray, person: str, face_width: int, left: int, top: int, *, mirror: bool = False,
               grayscale: bool = False) -> tuple[int, int, int, int]:
    """Paste ``person``'s head and shoulders scaled so that the face is ``face_width`` px wide, with the cut-out's
    top-left corner at (``left``, ``top``), clipped at the canvas edges. Returns the pasted face box."""
    head, (fx, fy, fw, fh) = head_and_shoulders(person)
    scale = face_width / fw
    patch = cv2.resize(head, (round(head.shape[1] * scale), round(head.shape[0] * scale)),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    fx, fy, fw, fh = (round(v * scale) for v in (fx, fy, fw, fh))
    if mirror:
        patch = patch[:, ::-1]
        fx = patch.shape[1] - fx - fw
    if grayscale:
        patch = np.repeat(cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    height, width = canvas.shape[:2]
    ph = min(patch.shape[0], height - top)
    pw = min(patch.shape[1], width - left)
    canvas[top:top + ph, left:left + pw] = patch[:ph, :pw]
    return (left + fx, top + fy, fw, fh)


def no_face(kind: str = "coffee") -> FacePhoto:
    """A photograph without a face: ``"coffee"`` (a cup on a table) or ``"chelsea"`` (a cat)."""
    image = {"coffee": skdata.coffee, "chelsea": skdata.chelsea}[kind]()
    return FacePhoto(image, ())


def several_faces(face_sizes: tuple[int, ...] = (50, 100, 160), *, width: int = 1500, height: int = 900,
                  grayscale_index: int | None = 1, mirror_index: int | None = 2) -> FacePhoto:
    """A composed photograph: the astronaut's head and shoulders pasted side by side onto a real background
    (``skimage.data.coffee()`` enlarged to ``width×height``), so that the faces are ``face_sizes`` pixels wide.

    The face at ``grayscale_index`` is pasted in grayscale and the one at ``mirror_index`` mirrored, so the
    detector does not just see one picture copied. Faces are returned left to right.
    """
    canvas = cv2.resize(skdata.coffee(), (width, height), interpolation=cv2.INTER_CUBIC)
    head, (_, _, face_w, _) = head_and_shoulders("astronaut")
    slot = width // len(face_sizes)
    faces = []
    for index, size in enumerate(face_sizes):
        scale = size / face_w
        ph, pw = round(head.shape[0] * scale), round(head.shape[1] * scale)
        if ph > height or pw > slot:
            raise ValueError(f"a {size}px face does not fit in a {slot}x{height} slot")
        left = index * slot + (slot - pw) // 2
        top = height - ph  # heads stand on the bottom edge, like people in a photo
        faces.append(paste_head(canvas, "astronaut", size, left, top, mirror=index == mirror_index,
                                grayscale=index == grayscale_index))
    return FacePhoto(canvas, tuple(faces))


def encode(image: np.ndarray, fmt: str = "JPEG", **options: object) -> bytes:
    """Encode an RGB (or grayscale 2-D) array with Pillow; ``options`` go to ``Image.save``."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        options.setdefault("quality", 92)
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def one_face_jpeg() -> bytes:
    """The astronaut as a JPEG upload."""
    return encode(astronaut().image)


def no_face_jpeg() -> bytes:
    """The coffee cup as a JPEG upload."""
    return encode(no_face().image)


def several_faces_jpeg() -> bytes:
    """The composed three-face photograph (`several_faces`) as a JPEG upload."""
    return encode(several_faces().image)


# Pillow transpose that undoes what a viewer does for EXIF orientation n: storing ``inverse(image)`` with tag n
# makes a correct decoder show ``image``.
EXIF_ORIENTATION_INVERSE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def with_exif_orientation(image: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    """Encode ``image`` the way a phone would: pixels stored turned/flipped plus an EXIF Orientation tag, so that
    applying the tag gives back ``image`` (its boxes are then in ``image``'s coordinates)."""
    stored = Image.fromarray(image)
    transpose = EXIF_ORIENTATION_INVERSE[orientation]
    if transpose is not None:
        stored = stored.transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    options: dict[str, object] = {"exif": exif}
    if fmt == "JPEG":
        options["quality"] = 95
    stored.save(buffer, fmt, **options)
    return buffer.getvalue()


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(x, y, width, height)`` boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0
