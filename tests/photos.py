"""Real test photographs, encoded as an upload would be (shared by every test module).

Everything comes from photographs that installed packages ship in their wheels (no download): scikit-image's
``astronaut`` (one face, Eileen Collins in a space suit), matplotlib's ``grace_hopper.jpg`` (one face, Grace Hopper
in uniform with a tie, medals, cap and a flag: a test for false positives on clothes), scikit-image's ``coffee``
and ``chelsea`` (no face: a cup, a cat) and composed photographs made by pasting these two people's head and
shoulders, at several sizes, mirrored and in grayscale, onto a real background. The photographs themselves
are in sample_photos.py (the benchmarks use them too).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from skimage import data as skdata

from sample_photos import ASTRONAUT_FACE, HOPPER_FACE, FacePhoto, astronaut, head_and_shoulders, hopper, paste_head

__all__ = [
    "ASTRONAUT_FACE",
    "HOPPER_FACE",
    "FacePhoto",
    "astronaut",
    "hopper",
    "head_and_shoulders",
    "paste_head",
    "no_face",
    "several_faces",
    "encode",
    "one_face_jpeg",
    "no_face_jpeg",
    "several_faces_jpeg",
    "with_exif_orientation",
    "EXIF_ORIENTATION_INVERSE",
    "iou",
]


def no_face(kind: str = "coffee") -> FacePhoto:
    """A photograph without a face: ``"coffee"`` (a cup on a table) or ``"chelsea"`` (a cat)."""
    image = {"coffee": skdata.coffee, "chelsea": skdata.chelsea}[kind]()
    return FacePhoto(image, ())


def several_faces(
    face_sizes: tuple[int, ...] = (50, 100, 160),
    *,
    width: int = 1500,
    height: int = 900,
    grayscale_index: int | None = 1,
    mirror_index: int | None = 2,
) -> FacePhoto:
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
        faces.append(
            paste_head(
                canvas, "astronaut", size, left, top, mirror=index == mirror_index, grayscale=index == grayscale_index
            )
        )
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
