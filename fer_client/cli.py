"""Command-line stream client: send a webcam, a video file or a folder of images to a running service over
``/ws/stream`` and print one line per analysed frame.

    python -m fer_client http://127.0.0.1:8000 interview.mp4 --fps 5 --log interview.csv --annotate out.mp4
    python -m fer_client http://127.0.0.1:8000 0            # webcam 0
    python -m fer_client http://127.0.0.1:8000 photos/      # every image in a folder, in name order

At most one frame is in flight: the next frame is sent when the reply to the previous one has arrived, so the
server never has to drop a frame of a file and every analysed frame gets its own result. The client imports
nothing from the service (it only speaks HTTP and WebSocket) and needs ``websockets``, ``opencv-python-headless``
and ``numpy`` (the ``client`` extra).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from fer_client.colours import colour_for

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
API_KEY_ENV = "FER_API_KEY"

# Exit codes: part of the interface, so scripts can tell a dead service from a bad key.
EXIT_OK = 0
EXIT_USAGE = 1  # bad arguments, or the source cannot be opened
EXIT_UNREACHABLE = 2  # nothing answers at the URL
EXIT_NOT_READY = 3  # the service answers but /readyz did not turn 200 in time
EXIT_AUTH = 4  # the API key is missing or wrong
EXIT_STREAM = 5  # the stream broke and could not be re-established


class ClientError(Exception):
    """A failure with a message for the user and the process exit code that goes with it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---- URLs and readiness ------------------------------------------------------------------------------------------


def _split_base(url: str) -> urllib.parse.SplitResult:
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.netloc:
        raise ClientError(f"not a service URL: {url!r} (expected e.g. http://127.0.0.1:8000)", EXIT_USAGE)
    return parts


def stream_url(url: str) -> str:
    """The ``/ws/stream`` URL for a service URL (``http://host:port[/prefix]``); a ``ws://…/path`` is kept."""
    parts = _split_base(url)
    if parts.scheme in {"ws", "wss"} and parts.path not in {"", "/"}:
        return urllib.parse.urlunsplit(parts)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/ws/stream"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def http_url(url: str, route: str) -> str:
    """``route`` (e.g. ``readyz``) under the service URL's path prefix, over HTTP(S)."""
    parts = _split_base(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path
    if parts.scheme in {"ws", "wss"} and path.endswith("/ws/stream"):
        path = path[: -len("/ws/stream")]
    return urllib.parse.urlunsplit((scheme, parts.netloc, path.rstrip("/") + "/" + route, "", ""))


def wait_until_ready(url: str, timeout_s: float, api_key: str | None = None, quiet: bool = False) -> None:
    """Poll ``GET /readyz`` until it answers 200. Raises ``ClientError`` naming the problem otherwise."""
    ready_url = http_url(url, "readyz")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    announced = False
    delay = 0.25
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(ready_url, headers=headers), timeout=10) as response:
                if response.status == 200:
                    return
                status, detail = response.status, ""
        except urllib.error.HTTPError as error:
            status, detail = error.code, _error_detail(error.read())
            if status in (401, 403):
                raise ClientError(f"the service at {url} refused the API key ({status}{detail})", EXIT_AUTH) from None
            if status == 404:
                raise ClientError(
                    f"{ready_url} answered 404: is {url} the facial-expression service?", EXIT_UNREACHABLE
                ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ClientError(
                f"cannot reach the service at {url}: {reason}. Is it running (python -m service --port …)?",
                EXIT_UNREACHABLE,
            ) from None
        if time.monotonic() >= deadline:
            raise ClientError(
                f"the service at {url} is not ready after {timeout_s:g} s "
                f"(/readyz answered {status}{detail}); it may still be loading the model",
                EXIT_NOT_READY,
            )
        if not announced and not quiet:
            print(f"waiting for the service to become ready (/readyz answered {status}{detail}) …", file=sys.stderr)
            announced = True
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def _error_detail(body: bytes | bytearray) -> str:
    """``": <message>"`` from a service error body, or ``""``."""
    try:
        return ": " + str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return ""


# ---- frame sources -----------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One frame of a source: ``index`` counts every frame the source produced (from 0), ``time_s`` is the
    position in the video for files and seconds since the start for webcams and image folders."""

    index: int
    time_s: float
    image: np.ndarray
    name: str = ""


@dataclass
class FrameSource:
    """An opened source. ``kind`` is ``webcam``, ``video`` or ``images``; ``fps`` is the file's frame rate (0
    when unknown or not a video file); ``frames`` yields every frame in order."""

    kind: str
    description: str
    fps: float
    frames: Iterator[Frame]
    close: Any = field(default=lambda: None)
    count: int = 0  # frames in a video file (0: unknown)


def open_source(spec: str) -> FrameSource:
    """Open a webcam (an integer), a folder of images, or a video file OpenCV can read."""
    if spec.isdigit():
        capture = cv2.VideoCapture(int(spec))
        if not capture.isOpened():
            raise ClientError(f"cannot open webcam {spec} (no such camera, or it is in use)", EXIT_USAGE)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the newest frame, not a queue of stale ones
        return FrameSource("webcam", f"webcam {spec}", 0.0, _capture_frames(capture, live=True), capture.release)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ClientError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}", EXIT_USAGE)
        return FrameSource("images", f"{len(files)} images in {path}", 0.0, _folder_frames(files))
    if not path.exists():
        raise ClientError(
            f"source not found: {spec} (give a webcam index, a video file or a folder of images)", EXIT_USAGE
        )
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ClientError(f"OpenCV cannot read {path} as a video", EXIT_USAGE)
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    description = f"{path.name}: {count} frames at {fps:g} fps" if fps else path.name
    frames = _capture_frames(capture, live=False, fps=fps)
    return FrameSource("video", description, fps, frames, capture.release, max(0, count))


def _capture_frames(capture: cv2.VideoCapture, live: bool, fps: float = 0.0) -> Iterator[Frame]:
    start = time.monotonic()
    index = 0
    while True:
        ok, image = capture.read()
        if not ok:
            return
        if live or not fps:
            t = time.monotonic() - start if live else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        else:
            t = index / fps  # exact media time; POS_MSEC is off by one frame on some backends
        yield Frame(index, t, image)
        index += 1


def _folder_frames(files: list[Path]) -> Iterator[Frame]:
    start = time.monotonic()
    for index, path in enumerate(files):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipping {path.name}: OpenCV cannot read it", file=sys.stderr)
            continue
        yield Frame(index, time.monotonic() - start, image, path.name)


def encode_frame(image: np.ndarray, max_width: int, quality: int) -> tuple[bytes, float]:
    """JPEG bytes of ``image`` downscaled to at most ``max_width`` pixels wide, and the scale applied."""
    scale = 1.0
    if max_width and image.shape[1] > max_width:
        scale = max_width / image.shape[1]
        image = cv2.resize(image, (max_width, max(1, round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ClientError("OpenCV could not encode a frame as JPEG", EXIT_STREAM)
    return buffer.tobytes(), scale


def scale_faces(faces: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """Faces with their boxes mapped from the sent (downscaled) frame back to the source frame's pixels."""
    if scale == 1.0:
        return faces
    out = []
    for face in faces:
        box = {k: round(v / scale) for k, v in face["box"].items()}
        out.append({**face, "box": box})
    return out


# ---- the stream --------------------------------------------------------------------------------------------------


class Stream:
    """One WebSocket connection to ``/ws/stream`` with one frame in flight at a time; reconnects on a drop."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        options: dict[str, Any],
        max_frame_bytes: int,
        reply_timeout_s: float,
        retries: int,
    ) -> None:
        self.url = stream_url(url)
        self.api_key = api_key
        self.options = options
        self.max_frame_bytes = max_frame_bytes
        self.reply_timeout_s = reply_timeout_s
        self.retries = retries
        self.connection: ClientConnection | None = None
        self._exit = contextlib.ExitStack()
        self.dropped_total = 0  # frames the server reported dropped, over all connections
        self._dropped_closed = 0
        self.tracks = False  # the service numbers face tracks and takes each frame's time (frame_time)

    def open(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            # compression off: JPEG does not compress, deflate would only cost CPU on both sides
            # Entered as a context manager (newer websockets deprecate a bare connect()); closed in close().
            self._exit = contextlib.ExitStack()
            self.connection = self._exit.enter_context(
                connect(
                    self.url, additional_headers=headers, compression=None, max_size=None, open_timeout=10, proxy=None
                )
            )
        except InvalidStatus as error:
            status = error.response.status_code
            detail = _error_detail(error.response.body or b"")
            if status in (401, 403):
                raise ClientError(
                    f"the service refused the API key ({status}{detail}); pass --api-key or set {API_KEY_ENV}",
                    EXIT_AUTH,
                ) from None
            if status == 503:
                raise ClientError(f"the service is not accepting streams ({status}{detail})", EXIT_NOT_READY) from None
            raise ClientError(f"the service refused the stream at {self.url} ({status}{detail})", EXIT_STREAM) from None
        except (InvalidURI, InvalidHandshake) as error:
            raise ClientError(f"WebSocket handshake with {self.url} failed: {error}", EXIT_STREAM) from None
        except (OSError, TimeoutError) as error:
            raise ClientError(f"cannot reach the service at {self.url}: {error}", EXIT_UNREACHABLE) from None
        # The options message doubles as a handshake: the service answers it with {"type": "options"} once the
        # connection is accepted, or sends its refusal (an error with seq null: bad key, not ready, too many
        # connections) and closes.
        try:
            self.connection.send(json.dumps(self.options))
        except ConnectionClosed:
            pass  # refused at once: the reason is in the message the service sent before closing, read below
        try:
            reply = self._recv()
        except ConnectionClosed as closed:
            self.close()
            raise _closed_error(closed, "") from None
        if reply.get("type") == "error":
            self.close()
            code = reply.get("code")
            if code == "invalid_parameter":
                raise ClientError(
                    f"the service rejected the options {self.options}: {reply.get('message')}", EXIT_USAGE
                )
            raise _refusal_error(code, reply.get("message"))
        self.tracks = "smoothing" in reply  # services before face tracks list no such option

    def close(self) -> None:
        self.connection = None
        self._exit.close()

    def _recv(self) -> dict[str, Any]:
        assert self.connection is not None
        try:
            text = self.connection.recv(timeout=self.reply_timeout_s)
        except TimeoutError:
            raise ClientError(f"no reply from the service within {self.reply_timeout_s:g} s", EXIT_STREAM) from None
        if not isinstance(text, str):
            raise ClientError("the service sent a binary message; expected JSON text", EXIT_STREAM)
        reply: dict[str, Any] = json.loads(text)
        return reply

    def analyse(self, jpeg: bytes, frame_time: float | None = None) -> dict[str, Any]:
        """Send one frame (and its time in seconds, for the service's face tracks) and return its reply (``type``
        ``result`` or ``error``), reconnecting up to ``retries`` times with exponential backoff if the connection
        drops."""
        if len(jpeg) > self.max_frame_bytes:
            raise ClientError(
                f"an encoded frame is {len(jpeg)} bytes, over --max-frame-bytes "
                f"{self.max_frame_bytes}; lower --max-width or --jpeg-quality",
                EXIT_USAGE,
            )
        attempt = 0
        while True:
            try:
                if self.connection is None:
                    self.open()
                assert self.connection is not None
                if frame_time is not None and self.tracks:
                    self.connection.send(json.dumps({"frame_time": round(frame_time, 6)}))
                self.connection.send(jpeg)
                while True:
                    reply = self._recv()
                    if reply.get("type") == "error" and reply.get("seq") is None:
                        raise _refusal_error(reply.get("code"), reply.get("message"))
                    if reply.get("type") in ("result", "error"):
                        break  # "options" acknowledgements and unknown types are skipped
                if reply.get("type") == "result":
                    self.dropped_total = self._dropped_closed + int(reply.get("dropped_total", 0))
                return reply
            except ConnectionClosed as closed:
                self._dropped_closed = self.dropped_total
                self.close()
                code = closed.rcvd.code if closed.rcvd else 1006
                reason = closed.rcvd.reason if closed.rcvd else ""
                if code in (1008, 1009, 4401, 4403):
                    raise _closed_error(closed, f" ({len(jpeg)} bytes)") from None
                attempt += 1
                if attempt > self.retries:
                    raise ClientError(
                        f"the stream closed ({code} {reason}) and {self.retries} reconnects failed", EXIT_STREAM
                    ) from None
                delay = min(0.5 * 2 ** (attempt - 1), 8.0)
                print(
                    f"stream closed ({code} {reason}); reconnecting in {delay:g} s (attempt {attempt}/{self.retries})",
                    file=sys.stderr,
                )
                time.sleep(delay)
            except ClientError as error:
                if error.exit_code not in (EXIT_UNREACHABLE, EXIT_NOT_READY) or attempt >= self.retries:
                    raise
                attempt += 1
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))


def _refusal_error(code: str | None, message: str | None) -> ClientError:
    """The ``ClientError`` for a connection-level error message of the service (``seq`` null)."""
    if code == "unauthorized":
        return ClientError(
            f"the service refused the API key: {message}. Pass --api-key or set {API_KEY_ENV}", EXIT_AUTH
        )
    if code in ("not_ready", "shutting_down"):
        return ClientError(f"the service is not ready: {message}", EXIT_NOT_READY)
    return ClientError(f"the service refused the stream ({code}): {message}", EXIT_STREAM)


def _closed_error(closed: ConnectionClosed, frame_note: str) -> ClientError:
    """The ``ClientError`` for a stream the service closed and that must not be retried as is."""
    code = closed.rcvd.code if closed.rcvd else 1006
    reason = closed.rcvd.reason if closed.rcvd else ""
    if code == 1009:
        return ClientError(
            f"the service closed the stream: a frame was over its size limit{frame_note}; lower "
            "--max-width or --jpeg-quality",
            EXIT_STREAM,
        )
    if code in (1008, 4401, 4403):
        return ClientError(f"the service closed the stream ({code} {reason}): check --api-key", EXIT_AUTH)
    return ClientError(f"the service closed the stream ({code} {reason})", EXIT_STREAM)


# ---- output: lines, logs, annotated video ------------------------------------------------------------------------


def format_line(frame: Frame, reply: dict[str, Any], rtt_ms: float) -> str:
    """One human-readable line per analysed frame: index, time, face count, each face's top emotion."""
    head = f"{frame.index:6d}  t={frame.time_s:9.3f}s"
    if reply.get("type") == "error":
        text = f"{head}  error {reply.get('code')}: {reply.get('message')}"
    else:
        faces = reply.get("faces", [])
        summary = "  ".join(f"{face['emotion']} {face['confidence']:.2f}" for face in faces) or "-"
        text = f"{head}  faces={len(faces)}  {summary}  ({rtt_ms:.0f} ms)"
    return f"{text}  {frame.name}" if frame.name else text


class FrameLog:
    """Per-frame records in JSON lines (``.jsonl``/``.ndjson``: one object per frame) or CSV (``.csv``: one row
    per face, a frame without faces gets one row with empty face columns, one ``p_<label>`` column per label)."""

    def __init__(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix not in {".csv", ".jsonl", ".ndjson"}:
            raise ClientError(f"--log must end in .csv or .jsonl, not {path.name}", EXIT_USAGE)
        self.path = path
        self.format = "csv" if suffix == ".csv" else "jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("w", newline="" if self.format == "csv" else None, encoding="utf-8")
        self._csv: Any = None
        self._pending: list[dict[str, Any]] = []  # CSV rows held until the first face names the label columns
        self._labels: list[str] = []

    def write(self, record: dict[str, Any]) -> None:
        if self.format == "jsonl":
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._file.flush()
            return
        base = {k: record.get(k) for k in ("frame", "time_s", "source", "seq", "rtt_ms", "error")}
        faces = record.get("faces") or []
        if faces and not self._labels:
            self._labels = list(faces[0]["probabilities"])
        rows = (
            [base | {"face": None}]
            if not faces
            else [
                base
                | {
                    "face": i,
                    "x": f["box"]["x"],
                    "y": f["box"]["y"],
                    "width": f["box"]["width"],
                    "height": f["box"]["height"],
                    "score": f.get("score"),
                    "emotion": f["emotion"],
                    "confidence": f["confidence"],
                }
                | {f"p_{label}": p for label, p in f["probabilities"].items()}
                for i, f in enumerate(faces)
            ]
        )
        self._pending.extend(rows)
        if self._labels:
            self._flush_csv()

    def _flush_csv(self) -> None:
        if self._csv is None:
            columns = [
                "frame",
                "time_s",
                "source",
                "seq",
                "rtt_ms",
                "error",
                "face",
                "x",
                "y",
                "width",
                "height",
                "score",
                "emotion",
                "confidence",
            ] + [f"p_{label}" for label in self._labels]
            self._csv = csv.DictWriter(self._file, fieldnames=columns, extrasaction="ignore")
            self._csv.writeheader()
        self._csv.writerows(self._pending)
        self._pending.clear()
        self._file.flush()

    def close(self) -> None:
        if self.format == "csv" and (self._pending or self._csv is None):
            self._flush_csv()
        self._file.close()


def draw_faces(image: np.ndarray, faces: list[dict[str, Any]]) -> np.ndarray:
    """A copy of ``image`` with each face's box and ``emotion confidence`` label drawn on it."""
    out = image.copy()
    thickness = max(2, round(max(out.shape[:2]) / 320))
    font_scale = max(0.5, max(out.shape[:2]) / 1000)
    for face in faces:
        b = face["box"]
        colour = colour_for(face["emotion"])
        x0, y0, x1, y1 = b["x"], b["y"], b["x"] + b["width"], b["y"] + b["height"]
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
        label = f"{face['emotion']} {face['confidence']:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y0 - 4 if y0 - th - base - 4 >= 0 else y1 + th + 4  # above the box unless it touches the top
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw + 6, ty + base), colour, cv2.FILLED)
        cv2.putText(
            out, label, (x0 + 3, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thickness, cv2.LINE_AA
        )
    return out


class Annotator:
    """Writes annotated frames to a video (``.mp4``: mp4v, ``.avi``: MJPG); every frame is resized to the
    first frame's size so image folders of mixed sizes still make one video."""

    FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}

    def __init__(self, path: Path, fps: float) -> None:
        if path.suffix.lower() not in self.FOURCC:
            raise ClientError(f"--annotate must end in one of {', '.join(self.FOURCC)}, not {path.name}", EXIT_USAGE)
        self.path = path
        self.fps = fps
        self.size: tuple[int, int] | None = None
        self.writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, image: np.ndarray, faces: list[dict[str, Any]]) -> None:
        if self.writer is None:
            self.size = (image.shape[1], image.shape[0])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter.fourcc(*self.FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise ClientError(f"OpenCV cannot write the video {self.path}", EXIT_USAGE)
        annotated = draw_faces(image, faces)
        if (annotated.shape[1], annotated.shape[0]) != self.size:
            annotated = cv2.resize(annotated, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(annotated)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


# ---- the command -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_client",
        description="Stream a webcam, a video file or a folder of images to the facial-expression service over "
        "its WebSocket (/ws/stream) and print one line per analysed frame: frame index, time, number "
        "of faces, each face's top emotion and confidence, round trip.",
        epilog=f"Exit codes: {EXIT_OK} done, {EXIT_USAGE} bad arguments or source, {EXIT_UNREACHABLE} service "
        f"unreachable, {EXIT_NOT_READY} service not ready, {EXIT_AUTH} API key refused, {EXIT_STREAM} "
        "stream failed.",
    )
    parser.add_argument("url", help="service URL, e.g. http://127.0.0.1:8000 (or the ws://…/ws/stream URL)")
    parser.add_argument("source", help="webcam index (0), video file, or folder of images (analysed in name order)")
    parser.add_argument(
        "--fps",
        type=float,
        default=0.0,
        help="analyse at most this many frames per second: of the video's own time for a video "
        "file (frames in between are skipped), of wall-clock time for a webcam or an image "
        "folder (default: no cap, every frame)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"API key sent as 'Authorization: Bearer <key>' (default: ${API_KEY_ENV})",
    )
    parser.add_argument("--log", type=Path, help="write per-frame results to this .csv or .jsonl file")
    parser.add_argument(
        "--annotate",
        type=Path,
        help="write an annotated video (.mp4 or .avi) with boxes and labels; for a video file "
        "every frame is written, frames skipped by --fps carry the latest result",
    )
    parser.add_argument(
        "--no-detect",
        action="store_true",
        help="treat every frame as one face (pre-cropped faces; the service's detect=false)",
    )
    parser.add_argument("--max-faces", type=int, help="at most this many faces per frame (the service's option)")
    parser.add_argument("--max-frames", type=int, help="stop after analysing this many frames")
    parser.add_argument(
        "--max-width",
        type=int,
        default=1280,
        help="downscale frames wider than this before sending (default 1280; 0: never); boxes "
        "are reported in the source's pixels",
    )
    parser.add_argument(
        "--jpeg-quality",
        type=int,
        default=90,
        choices=range(1, 101),
        metavar="1-100",
        help="JPEG quality of the frames sent (default 90)",
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=int,
        default=2 * 1024 * 1024,
        help="refuse to send an encoded frame larger than this (default 2 MiB, the service's default limit)",
    )
    parser.add_argument(
        "--wait-ready", type=float, default=30.0, help="seconds to wait for /readyz to answer 200 (default 30)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each reply (default 30)")
    parser.add_argument(
        "--retries", type=int, default=3, help="reconnect this many times when the stream drops (default 3)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-frame lines (logs and video still written)")
    parser.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write an interview report into DIR: frames.jsonl, per face track a CSV and an emotion timeline "
        "chart (PNG), summary.csv/.json (share of time per smoothed emotion, moments of strongest change) and "
        "report.html; shows a progress bar (needs matplotlib and tqdm: the client extra)",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        help="half-life in seconds of the service's smoothing of each face track's emotions (default 0, raw; "
        "1 with --report)",
    )
    parser.add_argument(
        "--hysteresis",
        type=float,
        help="margin another emotion must lead the smoothed one by before the smoothed label changes "
        "(default 0; 0.05 with --report)",
    )
    return parser


@dataclass
class Summary:
    frames: int = 0
    errors: int = 0
    faces: int = 0
    rtts_ms: list[float] = field(default_factory=list)

    def text(self, dropped: int, elapsed_s: float) -> str:
        if not self.rtts_ms:
            return f"analysed {self.frames} frames"
        rtts = np.array(self.rtts_ms)
        return (
            f"analysed {self.frames} frames in {elapsed_s:.1f} s ({self.frames / max(elapsed_s, 1e-9):.1f} "
            f"frames/s), {self.faces} faces, {self.errors} frame errors, {dropped} dropped by the server; "
            f"round trip p50 {np.percentile(rtts, 50):.0f} ms, p95 {np.percentile(rtts, 95):.0f} ms"
        )


def run(args: argparse.Namespace) -> int:
    """Stream the source and write the outputs; returns the exit code."""
    source = open_source(args.source)
    annotate_fps = source.fps or args.fps or 10.0
    annotator = Annotator(args.annotate, annotate_fps) if args.annotate else None
    log = FrameLog(args.log) if args.log else None
    try:
        wait_until_ready(args.url, args.wait_ready, args.api_key, quiet=args.quiet)
    except ClientError:
        source.close()
        if log:
            log.close()
        raise
    options: dict[str, Any] = {"detect": not args.no_detect}
    if args.max_faces is not None:
        options["max_faces"] = args.max_faces
    options.update(_track_options(args))
    report = progress = None
    if args.report:
        from tqdm import tqdm

        from fer_client.report import Report  # matplotlib only when a report is written

        report = Report(args.report, Path(args.source).name if source.kind != "webcam" else source.description)
        report.options = {k: v for k, v in options.items() if k in ("smoothing", "hysteresis")}
        progress = tqdm(total=source.count or None, unit="frame", desc="analysing", file=sys.stderr, leave=True)
    stream = Stream(args.url, args.api_key, options, args.max_frame_bytes, args.timeout, args.retries)
    summary = Summary()
    print(f"streaming {source.description} to {stream.url}", file=sys.stderr)
    started = time.monotonic()
    next_media_time = 0.0  # --fps on a video file: sample by the video's own clock
    last_sent_wall = -math.inf
    held_faces: list[dict[str, Any]] = []
    try:
        stream.open()
        for frame in source.frames:
            if args.max_frames is not None and summary.frames >= args.max_frames:
                break
            if progress is not None:
                progress.update(1)
            if args.fps and source.kind == "video":
                if frame.time_s + 1e-6 < next_media_time:
                    if annotator:
                        annotator.write(frame.image, held_faces)
                    continue
                next_media_time = max(next_media_time + 1 / args.fps, frame.time_s)
            elif args.fps:
                wait = last_sent_wall + 1 / args.fps - time.monotonic()
                if wait > 0:
                    if source.kind == "webcam":
                        continue  # a live camera keeps going: skip frames instead of falling behind
                    time.sleep(wait)
                last_sent_wall = time.monotonic()
            jpeg, scale = encode_frame(frame.image, args.max_width, args.jpeg_quality)
            sent = time.perf_counter()
            reply = stream.analyse(jpeg, frame.time_s)
            rtt_ms = (time.perf_counter() - sent) * 1000
            summary.frames += 1
            faces = scale_faces(reply.get("faces", []), scale) if reply.get("type") == "result" else []
            if reply.get("type") == "error":
                summary.errors += 1
            else:
                summary.faces += len(faces)
                summary.rtts_ms.append(rtt_ms)
                held_faces = faces
            if not args.quiet:
                if progress is not None:
                    progress.write(format_line(frame, reply, rtt_ms), file=sys.stdout)
                else:
                    print(format_line(frame, reply, rtt_ms), flush=True)
            if log or report:
                record = _record(frame, reply, faces, rtt_ms)
                if log:
                    log.write(record)
                if report:
                    report.add(record)
            if annotator:
                annotator.write(frame.image, faces)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        stream.close()
        source.close()
        if log:
            log.close()
        if annotator:
            annotator.close()
        if progress is not None:
            progress.close()
        if report:
            report.close()
    print(summary.text(stream.dropped_total, time.monotonic() - started), file=sys.stderr)
    if report:
        interval = 1 / args.fps if args.fps else 1 / source.fps if source.fps else 0.1
        print(f"report: {report.write(interval)} ({len(report.tracks)} face tracks)", file=sys.stderr)
    if log:
        print(f"log: {log.path}", file=sys.stderr)
    if annotator:
        print(
            f"annotated video: {annotator.path} ({annotator.frames} frames at {annotator.fps:g} fps)", file=sys.stderr
        )
    return EXIT_OK


def _track_options(args: argparse.Namespace) -> dict[str, float]:
    """The stream's smoothing options from the flags (a report smooths unless told otherwise)."""
    smoothing = args.smoothing if args.smoothing is not None else (1.0 if args.report else None)
    hysteresis = args.hysteresis if args.hysteresis is not None else (0.05 if args.report else None)
    out = {}
    if smoothing is not None:
        out["smoothing"] = smoothing
    if hysteresis is not None:
        out["hysteresis"] = hysteresis
    return out


def _record(frame: Frame, reply: dict[str, Any], faces: list[dict[str, Any]], rtt_ms: float) -> dict[str, Any]:
    height, width = frame.image.shape[:2]
    record: dict[str, Any] = {
        "frame": frame.index,
        "time_s": round(frame.time_s, 4),
        "source": frame.name or None,
        "frame_size": {"width": width, "height": height},
        "seq": reply.get("seq"),
        "rtt_ms": round(rtt_ms, 2),
    }
    if reply.get("type") == "error":
        record["error"] = {"code": reply.get("code"), "message": reply.get("message")}
        return record
    # boxes are in the source frame's pixels (frame_size); "image" is the size the service analysed
    record.update(
        faces=faces,
        image=reply.get("image"),
        timings_ms=reply.get("timings_ms"),
        model=reply.get("model"),
        dropped=reply.get("dropped", 0),
    )
    return record


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fps < 0:
        print("error: --fps must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run(args)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
