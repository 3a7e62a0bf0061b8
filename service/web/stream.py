"""One ``/ws/stream`` connection: binary frames in, JSON results out, the newest pending frame wins.

Two tasks per connection: the receiver reads every message as it arrives and keeps only the newest unprocessed
frame (an older pending frame is dropped and counted); the processor takes that frame, runs the pipeline and
replies. So however fast a client sends, the server works on at most one frame per connection and its replies
never fall behind the camera. The protocol is documented in docs/api.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from service.errors import InvalidParameterError, ServiceError, UnauthorizedError, describe_validation_errors
from service.pipeline import Options
from service.tracking import Observation, Tracker
from service.web.guards import check_api_key, ready_predictor, serving
from service.web.schemas import Prediction
from service.web.state import ServiceState, version_ref

log = logging.getLogger(__name__)

#: Close codes (RFC 6455 and the IANA registry).
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class StreamOptions(BaseModel):
    """A text message that changes the connection's options; omitted fields keep their value."""

    model_config = ConfigDict(extra="forbid", strict=True)

    detect: bool | None = None
    max_faces: int | None = Field(None, ge=1)
    explain: bool | None = None
    explain_class: str | None = Field(None, max_length=200)  # given as null: back to each face's top class
    smoothing: float | None = Field(None, ge=0, le=600, allow_inf_nan=False)  # half-life in seconds, 0 = raw
    hysteresis: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    frame_time: float | None = Field(None, ge=0, allow_inf_nan=False)  # seconds: the next binary frame's time


class StreamSession:
    """Serves one accepted-or-about-to-be-accepted WebSocket until it closes."""

    def __init__(self, websocket: WebSocket, state: ServiceState) -> None:
        self.ws = websocket
        self.state = state
        self.settings = state.settings
        self.metrics = state.metrics
        self.options = Options(detect=True, max_faces=self.settings.max_faces)
        self.seq = 0  # frames received on this connection; the first frame is 1
        self.version: str | None = None  # ?version= of the connection (None: the default version of each frame)
        self.pending: tuple[int, bytes] | None = None
        self.frame_ready = asyncio.Event()
        self.dropped = 0  # dropped since the last frame reply
        self.dropped_total = 0
        self.send_lock = asyncio.Lock()
        # face tracks (service/tracking.py): frame times are the client's frame_time, else arrival times
        self.tracker = Tracker(self.settings.track_max_missed_frames, self.settings.track_max_missed_s)
        self.started = time.monotonic()
        self.next_frame_time: float | None = None
        self.pending_time = 0.0

    async def _send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            if self.ws.application_state == WebSocketState.CONNECTED:
                await self.ws.send_text(json.dumps(message))

    async def _refuse(self, code: str, message: str, close_code: int) -> None:
        """Accept only to say why, then close (browsers cannot read an HTTP status of a refused handshake)."""
        self.metrics.rejected(code)
        await self.ws.accept()
        await self._send({"type": "error", "seq": None, "code": code, "message": message})
        await self.ws.close(close_code, reason=code)

    async def run(self) -> None:
        try:
            check_api_key(
                self.settings.api_keys, self.ws.headers.get("authorization"), self.ws.query_params.get("api_key")
            )
        except UnauthorizedError as exc:
            await self._refuse(exc.code, exc.message, CLOSE_POLICY_VIOLATION)
            return
        self.version = self.ws.query_params.get("version") or None  # None: the default version, frame by frame
        try:
            ready_predictor(self.state, self.version)
        except ServiceError as exc:
            await self._refuse(exc.code, exc.message, CLOSE_TRY_AGAIN_LATER)
            return
        if self.state.websocket_connections >= self.settings.ws_max_connections:
            await self._refuse(
                "too_many_connections",
                f"at most {self.settings.ws_max_connections} stream connections are served at once; retry later",
                CLOSE_TRY_AGAIN_LATER,
            )
            return
        self.state.websocket_connections += 1
        self.metrics.websocket_connections.inc()
        try:
            await self.ws.accept()
            processor = asyncio.create_task(self._process(), name="ws-process")
            try:
                await self._receive()
            finally:
                processor.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await processor
        finally:
            self.state.websocket_connections -= 1
            self.metrics.websocket_connections.dec()
            log.info(
                "stream closed", extra={"route": "/ws/stream", "frames": self.seq, "dropped_total": self.dropped_total}
            )

    async def _receive(self) -> None:
        limit = self.settings.ws_max_frame_bytes
        while True:
            # The first frame must come within ws_first_frame_timeout_s, and then some message every
            # ws_idle_timeout_s: an idle socket must not keep one of the ws_max_connections slots forever.
            first = self.seq == 0
            wait_s = self.settings.ws_first_frame_timeout_s if first else self.settings.ws_idle_timeout_s
            try:
                async with asyncio.timeout(wait_s):
                    message = await self.ws.receive()
            except TimeoutError:
                await self._time_out("first_frame_timeout" if first else "idle_timeout", wait_s)
                return
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            size = len(data) if data is not None else len(text.encode()) if text is not None else 0
            if size > limit:
                self.metrics.rejected("frame_too_large")
                async with self.send_lock:
                    await self.ws.close(CLOSE_TOO_BIG, reason=f"message over {limit} bytes")
                return
            if data is not None:
                self.seq += 1
                if self.pending is not None:  # latest wins: the older unprocessed frame is dropped
                    self.dropped += 1
                    self.dropped_total += 1
                    self.metrics.websocket_frames_dropped.inc()
                self.pending = (self.seq, data)
                self.pending_time, self.next_frame_time = self._frame_time(), None
                self.frame_ready.set()
            elif text is not None:
                await self._set_options(text)

    async def _time_out(self, code: str, seconds: float) -> None:
        """Say why, then close with 1008 and the code as the reason (``first_frame_timeout``, ``idle_timeout``)."""
        self.metrics.rejected(code)
        what = "no frame" if code == "first_frame_timeout" else "no message"
        message = f"{what} within {seconds:g} s; the connection is closed"
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._send({"type": "error", "seq": None, "code": code, "message": message})
            async with self.send_lock:
                await self.ws.close(CLOSE_POLICY_VIOLATION, reason=code)

    async def _set_options(self, text: str) -> None:
        try:
            update = StreamOptions.model_validate_json(text)
        except ValidationError as exc:
            problems = describe_validation_errors(exc.errors(), root="message")
            error = InvalidParameterError(
                f'bad options message ({problems}); send JSON like {{"detect": true, "max_faces": 5}}'
            )
            self.metrics.rejected(error.code)
            await self._send({"type": "error", "seq": None, "code": error.code, "message": error.message})
            return
        if update.frame_time is not None:
            self.next_frame_time = update.frame_time
            if update.model_fields_set == {"frame_time"}:
                return  # only the next frame's time: not an options change, no reply
        detect = self.options.detect if update.detect is None else update.detect
        max_faces = (
            self.options.max_faces if update.max_faces is None else min(update.max_faces, self.settings.max_faces)
        )
        explain = self.options.explain if update.explain is None else update.explain
        explain_class = (
            update.explain_class if "explain_class" in update.model_fields_set else self.options.explain_class
        )
        options = Options(detect=detect, max_faces=max_faces, explain=explain, explain_class=explain_class)
        try:  # explanations_unavailable, an unknown explain_class: the options stay as they were
            ready_predictor(self.state, self.version).check_options(options)
        except ServiceError as exc:
            self.metrics.rejected(exc.code)
            await self._send({"type": "error", "seq": None, "code": exc.code, "message": exc.message})
            return
        self.options = options
        if update.smoothing is not None:
            self.tracker.smoothing_s = update.smoothing
        if update.hysteresis is not None:
            self.tracker.hysteresis = update.hysteresis
        await self._send(
            {
                "type": "options",
                "detect": detect,
                "max_faces": max_faces,
                "explain": explain,
                "explain_class": explain_class,
                "smoothing": self.tracker.smoothing_s,
                "hysteresis": self.tracker.hysteresis,
            }
        )

    def _frame_time(self) -> float:
        """The time of the frame that just arrived: the client's ``frame_time``, else seconds since the connection
        opened (the tracker clamps a time that runs backwards)."""
        if self.next_frame_time is not None:
            return self.next_frame_time
        return time.monotonic() - self.started

    def _track(self, faces: list[dict[str, Any]], frame_time: float) -> None:
        """Give every face of a result its ``track_id`` and its track's ``smoothed`` emotion (in place)."""
        observations = [
            Observation((f["box"]["x"], f["box"]["y"], f["box"]["width"], f["box"]["height"]), f["probabilities"])
            for f in faces
        ]
        for face, tracked in zip(faces, self.tracker.update(frame_time, observations), strict=True):
            face["track_id"] = tracked.track_id
            face["smoothed"] = {
                "emotion": tracked.emotion,
                "confidence": tracked.confidence,
                "probabilities": tracked.probabilities,
            }

    async def _process(self) -> None:
        while True:
            await self.frame_ready.wait()
            self.frame_ready.clear()
            if self.pending is None:
                continue
            (seq, data), self.pending = self.pending, None
            frame_time = self.pending_time
            dropped, self.dropped = self.dropped, 0
            header = {"seq": seq, "dropped": dropped, "dropped_total": self.dropped_total}
            try:
                with serving(self.state, self.version) as entry:  # the version does not unload meanwhile
                    result = await entry.predictor.predict(data, self.options)
            except ServiceError as exc:
                self.metrics.rejected(exc.code)
                reply: dict[str, Any] = {"type": "error", **header, "code": exc.code, "message": exc.message}
            except Exception:  # never leak internals; keep the connection serving
                log.exception("stream frame %d failed", seq)
                reply = {"type": "error", **header, "code": "internal_error", "message": "internal server error"}
            else:
                prediction = Prediction.from_result(version_ref(entry), result)
                reply = {"type": "result", **header, **prediction.model_dump(exclude_none=True)}
                self._track(reply["faces"], frame_time)
                reply["frame_time"] = frame_time
            try:
                await self._send(reply)
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
