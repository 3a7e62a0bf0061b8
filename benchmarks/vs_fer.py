"""Our service against the library people install instead (issue 14): the ``fer`` PyPI package's
``FER().detect_emotions`` one photo at a time in one process, and our service over HTTP, on the same four photos in
the same run; photos/s of each, the ratio, and the faces each finds.

    .venv/bin/python benchmarks/vs_fer.py                      # about 3 minutes; rewrites the vs-fer section
    .venv/bin/python benchmarks/vs_fer.py --seconds 2 --results /tmp/vs-fer.md     # a smoke run (under a minute)

The photos (JPEG bytes written once to ``test-artifacts/benchmarks/vs-fer/``; both sides read the same files):

- ``portrait``: docs/examples/astronaut.jpg, 512x512, one face;
- ``two people``: the astronaut's and Grace Hopper's head and shoulders (sample_photos.py: real photographs shipped
  in scikit-image and matplotlib) on scikit-image's ``rocket`` photo enlarged to 1024x683;
- ``group``: five people, alternately the two, faces 75-100 px wide, one mirrored and one in grayscale, on
  scikit-image's ``coffee`` photo enlarged to 1600x900;
- ``1080p frame``: three people, faces 90-220 px wide, on scikit-image's ``stereo_motorcycle`` photo enlarged to
  1920x1080.

The composed photos are deterministic (no random numbers), so the true face boxes are known; each side's faces are
listed with how many of the true ones they hit (IoU >= 0.3: Haar's square boxes and YuNet's are cut differently).

``fer`` side: ``benchmarks/.fer-venv`` (made by benchmarks/fer_package.py; created here if missing) runs this file
as a child (``--fer-worker``) with that venv's python: ``FER()`` with the package's defaults (Haar cascade, i.e.
``mtcnn=False``; its int8 TFLite emotion model; OpenCV's and TFLite's default threads), then per photo a warm-up of
two calls and as many calls as fit in ``--seconds`` (at least 5), each ``cv2.imdecode`` of the JPEG bytes plus
``detect_emotions`` on the result, as a user of the package turns a received photo into emotions. CPU time is the
child's (all threads).

Our side: ``python -m service`` started here on ``--model-dir`` (default models/fer-cnn-48) with its default settings,
``--clients`` closed-loop keep-alive clients (default 4, which saturates the 2-core machine: each client sends its
next request as soon as the previous one is answered) posting the JPEG to ``/predict``; one second of warm-up, then
``--seconds``. CPU time is the service process's and its detection workers'. Clients share the machine.

The fer side runs first, then the service, never both at once. The load average before and after is recorded: on
a busy machine the figures are not comparable with an idle run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fer_package import FER_PACKAGE, FER_PYTHON, setup_fer_venv
from benchmarks.harness import (
    DEFAULT_MODEL,
    PHOTO,
    ROOT,
    Connection,
    cpu_seconds,
    cpu_used,
    http_request,
    machine_description,
    start_service,
    write_section,
)
from benchmarks.loadgen import closed_loop

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PHOTO_DIR = ROOT / "test-artifacts" / "benchmarks" / "vs-fer"
TARGET = 4.0  # issue 14: ours >= 4x fer's photos/s on each photo
FER_WARMUP = 2
FER_MIN_PHOTOS = 5

Box = tuple[int, int, int, int]


@dataclass
class Photo:
    key: str
    description: str
    path: Path
    width: int
    height: int
    truth: list[Box]


# ------------------------------------------------------------------------------------------------------------------
# The photos
# ------------------------------------------------------------------------------------------------------------------


def _compose(background: Any, width: int, height: int, people: list[tuple[str, int, bool, bool]]) -> tuple[Any, list]:
    """``people`` (person, face width, mirrored, grayscale) standing side by side on the bottom edge of ``background``
    enlarged to ``width``x``height``, spread evenly; the image (RGB) and the face boxes, left to right."""
    import cv2

    from sample_photos import head_and_shoulders, paste_head

    canvas = cv2.resize(background, (width, height), interpolation=cv2.INTER_CUBIC)
    sizes = []
    for person, face_width, _, _ in people:
        head, (_, _, fw, _) = head_and_shoulders(person)
        scale = face_width / fw
        sizes.append((round(head.shape[1] * scale), round(head.shape[0] * scale)))
    gap = (width - sum(w for w, _ in sizes)) // (len(people) + 1)
    if gap < 0 or max(h for _, h in sizes) > height:
        raise ValueError(f"{len(people)} people do not fit in {width}x{height}")
    faces, left = [], gap
    for (person, face_width, mirror, gray), (patch_w, patch_h) in zip(people, sizes, strict=True):
        faces.append(paste_head(canvas, person, face_width, left, height - patch_h, mirror=mirror, grayscale=gray))
        left += patch_w + gap
    return canvas, faces


def build_photos(folder: Path) -> list[Photo]:
    """The four photos as JPEG files in ``folder`` (composed ones encoded with Pillow at quality 92)."""
    from PIL import Image
    from skimage import data as skdata

    from sample_photos import ASTRONAUT_FACE

    folder.mkdir(parents=True, exist_ok=True)
    portrait = folder / "portrait.jpg"
    portrait.write_bytes(PHOTO.read_bytes())
    photos = [Photo("portrait", "512x512 portrait (docs/examples/astronaut.jpg)", portrait, 512, 512, [ASTRONAUT_FACE])]
    layouts = [
        (
            "two people",
            "two people on skimage `rocket`",
            skdata.rocket(),
            (1024, 683),
            [("astronaut", 130, False, False), ("hopper", 140, False, False)],
        ),
        (
            "group",
            "group of five on skimage `coffee`",
            skdata.coffee(),
            (1600, 900),
            [
                ("astronaut", 90, False, False),
                ("hopper", 80, False, False),
                ("astronaut", 100, True, False),
                ("hopper", 75, False, True),
                ("astronaut", 95, False, False),
            ],
        ),
        (
            "1080p frame",
            "1080p frame, three people on skimage `stereo_motorcycle`",
            skdata.stereo_motorcycle()[0],
            (1920, 1080),
            [("astronaut", 220, False, False), ("hopper", 110, False, False), ("astronaut", 160, True, False)],
        ),
    ]
    for key, description, background, (width, height), people in layouts:
        image, faces = _compose(background, width, height, people)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=92)
        path = folder / f"{key.replace(' ', '-')}.jpg"
        path.write_bytes(buffer.getvalue())
        photos.append(Photo(key, f"{width}x{height} {description}", path, width, height, list(faces)))
    return photos


def iou(a: Box, b: Box) -> float:
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return iw * ih / union if union else 0.0


def true_hits(found: list[dict], truth: list[Box]) -> int:
    """How many true faces some found box overlaps with IoU >= 0.3."""
    return sum(any(iou(tuple(face["box"]), box) >= 0.3 for face in found) for box in truth)


# ------------------------------------------------------------------------------------------------------------------
# The fer side: a child process in benchmarks/.fer-venv
# ------------------------------------------------------------------------------------------------------------------


def fer_worker(spec_path: str, out_path: str) -> None:
    """Inside the fer venv: ``FER()`` with its defaults, then each photo of the spec for ``seconds`` (after a
    warm-up); photos/s, CPU per photo and the faces found, as JSON in ``out_path``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import cv2
    import fer
    import numpy as np
    from fer.fer import FER  # (the package root does not export it)

    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    detector = FER()  # Haar cascade (mtcnn=False), int8 TFLite emotion model, min_face_size 50
    load_seconds = time.perf_counter() - started
    results = []
    for photo in spec["photos"]:
        data = Path(photo["path"]).read_bytes()

        def once(data: bytes = data) -> list[dict]:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            return detector.detect_emotions(image)

        for _ in range(FER_WARMUP):
            found = once()
        decode_started = time.perf_counter()
        for _ in range(5):
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        decode_ms = (time.perf_counter() - decode_started) / 5 * 1000
        count, cpu_started, started = 0, time.process_time(), time.perf_counter()
        while count < FER_MIN_PHOTOS or time.perf_counter() - started < spec["seconds"]:
            once()
            count += 1
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        faces = []
        for face in found:
            emotion = max(face["emotions"], key=face["emotions"].get)
            faces.append(
                {
                    "box": [int(v) for v in face["box"]],
                    "emotion": emotion,
                    "confidence": float(face["emotions"][emotion]),
                }
            )
        results.append(
            {
                "key": photo["key"],
                "photos": count,
                "seconds": elapsed,
                "photos_per_s": count / elapsed,
                "cpu_ms_per_photo": 1000 * cpu / count,
                "decode_ms": decode_ms,
                "faces": faces,
            }
        )
        print(f"  fer   {photo['key']:12s} {count / elapsed:7.2f} photos/s  {len(faces)} faces", flush=True)
    Path(out_path).write_text(
        json.dumps(
            {
                "fer": fer.__version__,
                "opencv": cv2.__version__,
                "load_seconds": load_seconds,
                "photos": results,
            }
        )
    )


def run_fer(photos: list[Photo], seconds: float) -> dict[str, Any]:
    python = FER_PYTHON if FER_PYTHON.exists() else setup_fer_venv()
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "fer.json"
        spec.write_text(
            json.dumps({"seconds": seconds, "photos": [{"key": p.key, "path": str(p.path)} for p in photos]})
        )
        subprocess.run(
            [str(python), __file__, "--fer-worker", str(spec), str(out)],
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------------------------
# Our side: the service over HTTP
# ------------------------------------------------------------------------------------------------------------------


def _one_answer(host: str, port: int, request: bytes) -> list[dict]:
    async def once() -> bytes:
        connection = Connection(host, port)
        try:
            reply = await connection.send(request)
        finally:
            await connection.close()
        if reply.status != 200:
            raise SystemExit(f"the service answered {reply.status}: {reply.body[:300]!r}")
        return reply.body

    faces = json.loads(asyncio.run(once()))["faces"]
    return [
        {
            "box": [face["box"][k] for k in ("x", "y", "width", "height")],
            "emotion": face["emotion"],
            "confidence": face["confidence"],
        }
        for face in faces
    ]


def served_model(url: str, model_dir: Path) -> dict[str, Any]:
    """The default model version a running service answers with, from its /v1/models (no TensorFlow import here):
    ``model`` (a description like harness.model_description's), ``runtime``, ``precision``."""
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        models = json.loads(response.read())
    default: dict[str, Any] = next((v for v in models["versions"] if v.get("default")), {})
    size = default.get("input") or {}
    where = model_dir.resolve().relative_to(ROOT) if model_dir.resolve().is_relative_to(ROOT) else model_dir
    return {
        "model": (
            f"{models.get('name')} version {default.get('version')} (served from {where}; input "
            f"{size.get('height')}x{size.get('width')}x{size.get('channels')} {size.get('color_mode')}, "
            f"{len(default.get('labels') or [])} labels)"
        ),
        "runtime": default.get("runtime"),
        "precision": default.get("precision"),
    }


def run_service(photos: list[Photo], model_dir: Path, clients: int, seconds: float) -> dict[str, Any]:
    service = start_service(model_dir, ROOT / "test-artifacts" / "benchmarks" / "vs-fer-service.log")
    try:
        served = served_model(service.url, model_dir)
        parts = urlsplit(service.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        results = []
        for photo in photos:
            request = http_request("POST", "/predict", f"{host}:{port}", photo.path.read_bytes(), "image/jpeg")
            faces = _one_answer(host, port, request)
            asyncio.run(closed_loop(host, port, request, clients, min(1.0, seconds)))  # warm-up
            before = cpu_seconds(service.pid)
            tally, elapsed = asyncio.run(closed_loop(host, port, request, clients, seconds))
            own, workers = cpu_used(before, cpu_seconds(service.pid), service.pid)
            ok = max(tally.ok, 1)
            results.append(
                {
                    "key": photo.key,
                    "photos": tally.ok,
                    "seconds": elapsed,
                    "photos_per_s": tally.ok / elapsed,
                    "cpu_ms_per_photo": 1000 * (own + workers) / ok,
                    "service_cpu_ms": 1000 * own / ok,
                    "workers_cpu_ms": 1000 * workers / ok,
                    "non_200": sum(c for s, c in tally.statuses.items() if s != 200) + tally.transport_errors,
                    "faces": faces,
                }
            )
            print(
                f"  ours  {photo.key:12s} {tally.ok / elapsed:7.2f} photos/s  {len(faces)} faces  "
                f"non-200 {results[-1]['non_200']}",
                flush=True,
            )
    finally:
        service.stop()
    return {
        **served,
        "photos": results,
    }


# ------------------------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------------------------


def _faces_text(faces: list[dict], truth: list[Box]) -> str:
    listed = "; ".join(
        "({}, {}, {}, {}) {} {:.2f}".format(*face["box"], face["emotion"], face["confidence"])
        for face in sorted(faces, key=lambda f: f["box"][0])
    )
    return f"{len(faces)} ({true_hits(faces, truth)}/{len(truth)} true): {listed or 'none'}"


def render(
    photos: list[Photo],
    fer: dict[str, Any],
    ours: dict[str, Any],
    args: argparse.Namespace,
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> str:
    fer_by = {r["key"]: r for r in fer["photos"]}
    ours_by = {r["key"]: r for r in ours["photos"]}
    ratios = {p.key: ours_by[p.key]["photos_per_s"] / fer_by[p.key]["photos_per_s"] for p in photos}
    idle = load_before[0] < 0.5
    command = " ".join(sys.argv[1:])
    lines = [
        "## Our service vs the `fer` package, whole photos (benchmarks/vs_fer.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`.venv/bin/python benchmarks/vs_fer.py{' ' + command if command else ''}`.",
        "",
        f"- Machine: {machine_description()}.",
        f"- Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)} — "
        + (
            "the machine was idle before the run."
            if idle
            else "**the machine was NOT idle: these figures are not comparable with an idle run.**"
        ),
        f"- fer: `{FER_PACKAGE}` in benchmarks/.fer-venv (OpenCV {fer['opencv']}), `FER()` defaults (Haar cascade, "
        "`mtcnn=False`, int8 TFLite emotion model, min face 50 px), one process, one photo at a time: "
        f"`cv2.imdecode` + `detect_emotions`, {FER_WARMUP} warm-up calls then {args.seconds:g} s (at least "
        f"{FER_MIN_PHOTOS} photos) per photo.",
        f"- Ours: {ours['model']}, runtime {ours['runtime']} {ours['precision']}; "
        f"`python -m service` with default settings, {args.clients} closed-loop keep-alive clients posting the JPEG "
        f"to `/predict` over loopback (1 s warm-up, then {args.seconds:g} s per photo); clients share the machine.",
        "",
        "| photo | JPEG | fer photos/s | fer CPU ms/photo (decode ms) | ours photos/s | ours CPU ms/photo "
        f"(service + detection workers) | ours / fer | ≥ {TARGET:g}x |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for photo in photos:
        f, o = fer_by[photo.key], ours_by[photo.key]
        size = photo.path.stat().st_size
        digest = hashlib.sha256(photo.path.read_bytes()).hexdigest()[:10]
        non_200 = f", {o['non_200']} non-200" if o["non_200"] else ""
        lines.append(
            f"| {photo.description} | {size // 1024} KiB, sha256 {digest} | {f['photos_per_s']:.2f} | "
            f"{f['cpu_ms_per_photo']:.0f} ({f['decode_ms']:.1f}) | {o['photos_per_s']:.2f} | "
            f"{o['cpu_ms_per_photo']:.0f} ({o['service_cpu_ms']:.0f} + {o['workers_cpu_ms']:.0f})"
            f"{non_200} | **{ratios[photo.key]:.2f}x** | "
            f"{'yes' if ratios[photo.key] >= TARGET else 'no'} |"
        )
    lines += [
        "",
        f"Ratio range {min(ratios.values()):.2f}x–{max(ratios.values()):.2f}x; target ≥ {TARGET:g}x on each photo: "
        f"{'met' if all(r >= TARGET for r in ratios.values()) else 'not met'}. CPU ms per photo: all CPU time "
        "spent during the timed window divided by the photos answered (2 cores: at most 2000 ms of CPU per "
        "second); fer's decode ms is `cv2.imdecode` alone, included in its figures.",
        "",
        "Faces found (x, y, width, height, emotion, confidence; left to right), and how many of the true faces "
        "(known from the composition; IoU ≥ 0.3) they hit:",
        "",
        "| photo | true faces | fer | ours |",
        "|---|---|---|---|",
    ]
    for photo in photos:
        lines.append(
            f"| {photo.key} | {len(photo.truth)} | {_faces_text(fer_by[photo.key]['faces'], photo.truth)} | "
            f"{_faces_text(ours_by[photo.key]['faces'], photo.truth)} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per photo and side (default 15)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients driving the service (default 4)")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file whose vs-fer section is written")
    parser.add_argument("--section", default="vs-fer", help="section of the results file to rewrite")
    parser.add_argument("--fer-worker", nargs=2, metavar=("SPEC_JSON", "OUT_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fer_worker:
        fer_worker(*args.fer_worker)
        return 0

    load_before = os.getloadavg()
    if load_before[0] >= 0.5:
        print(f"warning: load average {load_before[0]:.2f}: the machine is busy", file=sys.stderr)
    started = time.perf_counter()
    photos = build_photos(PHOTO_DIR)
    print(f"photos in {PHOTO_DIR.relative_to(ROOT)}; fer package ...", flush=True)
    fer = run_fer(photos, args.seconds)
    print(f"our service ({args.clients} clients) ...", flush=True)
    ours = run_service(photos, args.model_dir, args.clients, args.seconds)
    load_after = os.getloadavg()
    report = render(photos, fer, ours, args, load_before, load_after)
    write_section(args.results, args.section, report, "Benchmark results")
    for photo in photos:
        f = next(r for r in fer["photos"] if r["key"] == photo.key)
        o = next(r for r in ours["photos"] if r["key"] == photo.key)
        print(
            f"{photo.key:12s} fer {f['photos_per_s']:7.2f}  ours {o['photos_per_s']:7.2f}  "
            f"{o['photos_per_s'] / f['photos_per_s']:.2f}x  faces fer {len(f['faces'])} ours {len(o['faces'])}"
        )
    print(f"wrote {args.results} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
