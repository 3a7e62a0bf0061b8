"""``python -m fer_client`` run as a user runs it (a subprocess) against the real service in its own process,
on short video files and image folders made here from a real photograph."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_client.cli import EXIT_AUTH, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, colour_for, http_url, stream_url
from sample_photos import two_people_crossing
from tests.live_service import ROOT, TEST_API_KEY, ServiceProcess, free_port, model_labels, running_service
from tests.photos import ASTRONAUT_FACE, astronaut, iou, no_face

FRAME_W, FRAME_H = 640, 512
STEP_PX = 6  # the photograph moves right by this much per frame, so every frame has its own face position

LINE = re.compile(
    r"^\s*(?P<index>\d+)\s+t=\s*(?P<time>\d+\.\d{3})s\s+faces=(?P<faces>\d+)\s+(?P<summary>.*?)\s+"
    r"\((?P<rtt>\d+) ms\)(?:\s+(?P<name>\S+))?$"
)


def video_frame(index: int) -> np.ndarray:
    """BGR frame ``index``: the astronaut photograph on a dark canvas, shifted right by ``STEP_PX`` per frame."""
    frame = np.full((FRAME_H, FRAME_W, 3), 40, np.uint8)
    x = STEP_PX * index
    frame[:, x : x + 512] = cv2.cvtColor(astronaut().image, cv2.COLOR_RGB2BGR)
    return frame


def face_at(index: int) -> tuple[int, int, int, int]:
    x, y, w, h = ASTRONAUT_FACE
    return (x + STEP_PX * index, y, w, h)


def write_video(path: Path, frames: int, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (FRAME_W, FRAME_H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(video_frame(i))
    writer.release()
    return path


def run_client(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fer_client", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def parse_lines(stdout: str) -> list[re.Match[str]]:
    lines = stdout.strip().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), f"unexpected output lines:\n{stdout}"
    return matches  # type: ignore[return-value]


# Session scope in every module that uses it: the process is shared (tests/live_service.py) and stops at the end.
@pytest.fixture(scope="session")
def service(exported_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with running_service(exported_model, tmp_path_factory.mktemp("service-logs"), TEST_API_KEY) as running:
        yield running


@pytest.fixture(scope="module")
def labels(exported_model: Path) -> list[str]:
    return model_labels(exported_model)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "interview.avi", frames=8)


def test_video_file_lines_jsonl_log_and_annotated_video(
    service: ServiceProcess, video: Path, labels: list[str], tmp_path: Path
) -> None:
    log, annotated = tmp_path / "out.jsonl", tmp_path / "out.mp4"
    result = run_client(service.url, video, "--api-key", TEST_API_KEY, "--log", log, "--annotate", annotated)
    assert result.returncode == EXIT_OK, result.stderr

    # one line per frame: index, media time (frame / fps), one face, its top emotion and confidence
    lines = parse_lines(result.stdout)
    assert [int(m["index"]) for m in lines] == list(range(8))
    assert [m["time"] for m in lines] == [f"{i / 10:.3f}" for i in range(8)]
    for m in lines:
        assert m["faces"] == "1"
        emotion, confidence = m["summary"].split()
        assert emotion in labels and 0 < float(confidence) <= 1
    assert "analysed 8 frames" in result.stderr

    # the JSON-lines log: one record per frame, the service's result with boxes where the face really is
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(8))
    assert [r["seq"] for r in records] == list(range(1, 9))  # one frame in flight: the server numbers them 1..8
    for i, record in enumerate(records):
        assert record["dropped"] == 0
        assert record["image"] == {"width": FRAME_W, "height": FRAME_H}
        assert set(record["timings_ms"]) >= {"decode", "detect", "infer", "total"}
        (face,) = record["faces"]
        box = face["box"]
        assert iou((box["x"], box["y"], box["width"], box["height"]), face_at(i)) > 0.5
        assert list(face["probabilities"]) == labels
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
        # the printed line shows the logged result
        assert lines[i]["summary"] == f"{face['emotion']} {face['confidence']:.2f}"

    # the annotated video: every frame, same size, the box drawn in the emotion's colour on the face's left edge
    capture = cv2.VideoCapture(str(annotated))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 8
    for i, (frame, record) in enumerate(zip(frames, records, strict=False)):
        assert frame.shape == (FRAME_H, FRAME_W, 3)
        box = record["faces"][0]["box"]
        edge = frame[box["y"] + box["height"] // 3 : box["y"] + 2 * box["height"] // 3, box["x"]]
        colour = np.array(colour_for(record["faces"][0]["emotion"]), float)
        assert np.abs(edge.astype(float).mean(axis=0) - colour).max() < 40, (i, edge.mean(axis=0), colour)
        # away from the box and its label the picture is the source frame (up to compression)
        assert np.abs(frame[400:, 400:].astype(float) - video_frame(i)[400:, 400:]).mean() < 8


def test_fps_cap_samples_the_video_and_csv_log(service: ServiceProcess, labels: list[str], tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.avi", frames=12, fps=10.0)
    log, annotated = tmp_path / "out.csv", tmp_path / "out.avi"
    result = run_client(
        service.url, video, "--api-key", TEST_API_KEY, "--fps", "5", "--log", log, "--annotate", annotated
    )
    assert result.returncode == EXIT_OK, result.stderr

    # 5 frames per second of a 10 fps video: every second frame is analysed
    lines = parse_lines(result.stdout)
    assert [int(m["index"]) for m in lines] == [0, 2, 4, 6, 8, 10]

    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6, 8, 10]
    for row in rows:
        assert row["face"] == "0" and row["emotion"] in labels
        probabilities = [float(row[f"p_{label}"]) for label in labels]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
        assert float(row["confidence"]) == pytest.approx(max(probabilities))
        box = tuple(int(row[k]) for k in ("x", "y", "width", "height"))
        assert iou(box, face_at(int(row["frame"]))) > 0.5

    # the annotated video keeps every frame of the source, so it stays in step with the original
    capture = cv2.VideoCapture(str(annotated))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    capture.release()


def test_image_folder_with_and_without_detection(service: ServiceProcess, labels: list[str], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "1-astronaut.jpg"), cv2.cvtColor(astronaut().image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "2-coffee.png"), cv2.cvtColor(no_face().image, cv2.COLOR_RGB2BGR))
    (folder / "3-broken.jpg").write_bytes(b"not a picture")
    (folder / "notes.txt").write_text("not an image either")

    result = run_client(service.url, folder, "--api-key", TEST_API_KEY)
    assert result.returncode == EXIT_OK, result.stderr
    lines = parse_lines(result.stdout)
    assert [(m["name"], m["faces"]) for m in lines] == [("1-astronaut.jpg", "1"), ("2-coffee.png", "0")]
    assert lines[1]["summary"] == "-"
    assert "skipping 3-broken.jpg" in result.stderr

    # --no-detect: each image is one face (the whole picture), so the cup gets an emotion too
    log = tmp_path / "nodetect.jsonl"
    result = run_client(service.url, folder, "--api-key", TEST_API_KEY, "--no-detect", "--log", log)
    assert result.returncode == EXIT_OK, result.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["source"] for r in records] == ["1-astronaut.jpg", "2-coffee.png"]
    for record in records:
        (face,) = record["faces"]
        assert face["box"] == {"x": 0, "y": 0, "width": record["image"]["width"], "height": record["image"]["height"]}
        assert face["emotion"] in labels


def test_errors_name_the_problem(service: ServiceProcess, video: Path, tmp_path: Path) -> None:
    # no key, and a wrong key: refused with the service's reason, exit code for auth
    for key_args in ([], ["--api-key", "wrong-key"]):
        result = run_client(service.url, video, *key_args)
        assert result.returncode == EXIT_AUTH, result.stderr
        assert "refused the API key" in result.stderr
        assert result.stdout == ""

    # nothing listening at the URL
    port = free_port()
    result = run_client(f"http://127.0.0.1:{port}", video, "--api-key", TEST_API_KEY)
    assert result.returncode == EXIT_UNREACHABLE
    assert f"cannot reach the service at http://127.0.0.1:{port}" in result.stderr

    # a source that does not exist, a file that is not a video, an unknown log format
    result = run_client(service.url, tmp_path / "missing.mp4", "--api-key", TEST_API_KEY)
    assert result.returncode == EXIT_USAGE and "source not found" in result.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = run_client(service.url, text, "--api-key", TEST_API_KEY)
    assert result.returncode == EXIT_USAGE and "cannot read" in result.stderr
    result = run_client(service.url, video, "--api-key", TEST_API_KEY, "--log", tmp_path / "out.xml")
    assert result.returncode == EXIT_USAGE and "--log must end in .csv or .jsonl" in result.stderr


def test_service_urls_are_derived_from_the_base_url() -> None:
    assert stream_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws/stream"
    assert stream_url("https://fer.example.org/api/") == "wss://fer.example.org/api/ws/stream"
    assert stream_url("localhost:8000") == "ws://localhost:8000/ws/stream"
    assert stream_url("ws://host:1/custom/path") == "ws://host:1/custom/path"
    assert http_url("ws://host:1/prefix/ws/stream", "readyz") == "http://host:1/prefix/readyz"
    assert http_url("https://fer.example.org/api", "readyz") == "https://fer.example.org/api/readyz"


def test_downscaled_frames_report_boxes_in_source_pixels(service: ServiceProcess, video: Path, tmp_path: Path) -> None:
    log = tmp_path / "small.jsonl"
    result = run_client(
        service.url, video, "--api-key", TEST_API_KEY, "--max-width", "480", "--max-frames", "3", "--log", log
    )
    assert result.returncode == EXIT_OK, result.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 3
    for i, record in enumerate(records):
        assert record["image"] == {"width": 480, "height": 384}  # what the service saw
        assert record["frame_size"] == {"width": FRAME_W, "height": FRAME_H}
        box = record["faces"][0]["box"]  # mapped back to the 640×512 source
        assert iou((box["x"], box["y"], box["width"], box["height"]), face_at(i)) > 0.5


def test_report_of_two_people_crossing_writes_every_file_and_they_parse(
    service: ServiceProcess, labels: list[str], tmp_path: Path
) -> None:
    frames, fps = 20, 10.0
    video = tmp_path / "two-people.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 360))
    for i in range(frames):
        writer.write(cv2.cvtColor(two_people_crossing(i, frames)[0], cv2.COLOR_RGB2BGR))
    writer.release()
    folder = tmp_path / "report"
    result = run_client(service.url, video, "--api-key", TEST_API_KEY, "--report", folder)
    assert result.returncode == EXIT_OK, result.stderr
    assert len(parse_lines(result.stdout)) == frames  # the per-frame lines still come, above the bar
    assert re.search(r"analysing: 100%.*\b20/20\b.*frame/s", result.stderr), result.stderr  # tqdm's bar with the rate
    assert f"report: {folder / 'report.html'} (2 face tracks)" in result.stderr

    # the JSON-lines log: every frame, every face with its track id and smoothed emotion
    records = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(frames))
    assert all(len(r["faces"]) == 2 for r in records)
    assert {f["track_id"] for r in records for f in r["faces"]} == {1, 2}
    assert all(f["smoothed"]["emotion"] in labels for r in records for f in r["faces"])

    # a CSV and a chart per track; the astronaut starts on the left (track 1) and ends on the right
    for track in (1, 2):
        with (folder / f"track_{track}.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == frames and [float(r["time_s"]) for r in rows] == [i / fps for i in range(frames)]
        assert {f"p_{x}" for x in labels} | {f"s_{x}" for x in labels} <= set(rows[0])
        assert all(r["smoothed_emotion"] in labels for r in rows)
        xs = [int(r["x"]) for r in rows]
        assert xs == sorted(xs, reverse=track == 2) and xs[0] != xs[-1]
        chart = cv2.imread(str(folder / f"track_{track}.png"))
        assert chart is not None and chart.shape[0] > 100 and chart.shape[1] > 300

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["frames"] == frames and summary["options"] == {"smoothing": 1.0, "hysteresis": 0.05}
    assert [t["track_id"] for t in summary["tracks"]] == [1, 2]
    for track in summary["tracks"]:
        assert set(track["share"]) == set(labels) and abs(sum(track["share"].values()) - 1) < 1e-3
        assert track["seconds"] == pytest.approx(frames / fps, abs=0.01)
        assert len(track["moments"]) <= 3 and all(m["from"] in labels and m["to"] in labels for m in track["moments"])
    with (folder / "summary.csv").open() as f:
        assert [row["track_id"] for row in csv.DictReader(f)] == ["1", "2"]
    page = (folder / "report.html").read_text()
    for name in ("track_1.png", "track_2.png", "track_1.csv", "summary.csv", 'id="track-2"', "Moments of strongest"):
        assert name in page
