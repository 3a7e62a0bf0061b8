"""Face tracks over the frames of one stream: a stable id per face, and its emotions smoothed over time.

One `Tracker` per ``/ws/stream`` connection. Each frame's faces are matched to the tracks of the frames before by
where the faces are: every track predicts its box at the new frame's time from its last position and velocity, and
a face goes to the track whose prediction it overlaps most and whose centre is nearest (greedy assignment on a
cost of centre distance, box overlap and size change, gated so a far or much larger face never matches). A face
that matches no track starts a new one with the next id; ids are never reused on a tracker. A track that misses
frames (the face turned away, was hidden, the detector lost it) keeps its id until it has been missing for more
than ``max_missed_frames`` frames *and* more than ``max_missed_s`` seconds, so a short gap at any frame rate does
not end it.

Smoothing is an exponential moving average of each track's probabilities over *time*: with half-life ``h`` seconds,
a frame ``dt`` seconds after the track's previous one moves the average by ``1 - 2**(-dt / h)`` of the way to the new
probabilities, so frames dropped in between (a slow server, ``--fps`` on a video) weigh as the time they covered.
``h = 0`` is no smoothing (the average is the frame's probabilities). Hysteresis: the smoothed label only changes
when another class's smoothed probability leads the current label's by more than ``hysteresis``.

Times are the frames' own (a video's media time, or arrival times); they should not decrease, a smaller one counts
as no time passed. Pure Python, no web imports (docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: A face box in pixels: x, y (top-left corner), width, height.
BoxXYWH = tuple[int, int, int, int]

#: A face may move this many of its own widths from where its track predicts it (times 1 + frames missed, at most
#: ``MAX_GATE``) and still match; beyond that it is a new face.
GATE_WIDTHS = 1.0
MAX_GATE = 3.0
#: A face this many times larger or smaller than a track's last box never matches it.
MAX_SIZE_RATIO = 2.0
#: Velocity estimate: weight of the newest displacement (the rest is the previous estimate).
VELOCITY_WEIGHT = 0.5
#: Frames closer in time than this do not update a track's velocity.
MIN_VELOCITY_DT_S = 0.005
#: Predictions extrapolate at most this far past a track's last sighting.
MAX_PREDICT_S = 1.0


@dataclass(frozen=True)
class Observation:
    """One face of a frame: its box and the model's probabilities (label -> probability, the model's order)."""

    box: BoxXYWH
    probabilities: Mapping[str, float]


@dataclass(frozen=True)
class TrackedFace:
    """A face's track: its id, and the track's smoothed probabilities with the label hysteresis chose."""

    track_id: int
    emotion: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class Track:
    track_id: int
    box: BoxXYWH
    last_t: float
    probabilities: dict[str, float]
    label: str
    velocity: tuple[float, float] = (0.0, 0.0)  # centre, pixels per second
    missed: int = 0  # frames since the last sighting
    seen: int = 1

    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2

    def predicted(self, t: float) -> tuple[float, float, float, float]:
        """The box's centre and size where the face is expected at time ``t``."""
        dt = min(max(t - self.last_t, 0.0), MAX_PREDICT_S)
        cx, cy = self.centre()
        return cx + self.velocity[0] * dt, cy + self.velocity[1] * dt, float(self.box[2]), float(self.box[3])


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes given as centre x, centre y, width, height."""
    iw = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    ih = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def match_cost(track: Track, box: BoxXYWH, t: float) -> float | None:
    """The cost of giving the face at ``box`` to ``track`` at time ``t`` (lower is better), None when gated out."""
    px, py, pw, ph = track.predicted(t)
    x, y, w, h = box
    if w <= 0 or h <= 0 or pw <= 0:
        return None
    size = abs(math.log(w / pw))
    if size > math.log(MAX_SIZE_RATIO):
        return None
    detected = (x + w / 2, y + h / 2, float(w), float(h))
    overlap = iou((px, py, pw, ph), detected)
    distance = math.hypot(detected[0] - px, detected[1] - py) / ((pw + w) / 2)
    if overlap <= 0 and distance > min(GATE_WIDTHS * (1 + track.missed), MAX_GATE):
        return None
    return distance + (1.0 - overlap) + size


def ema_weight(dt: float, half_life_s: float) -> float:
    """How far a new value moves a time-based moving average after ``dt`` seconds (1 = all the way)."""
    if half_life_s <= 0:
        return 1.0
    return 1.0 - math.pow(0.5, max(dt, 0.0) / half_life_s)


def hysteresis_label(current: str, probabilities: Mapping[str, float], margin: float) -> str:
    """``current`` unless another label leads it by more than ``margin`` (then the top label); with no margin (or
    no current label) simply the top label."""
    top = max(probabilities, key=lambda label: probabilities[label])
    if margin <= 0 or current not in probabilities:
        return top
    return top if probabilities[top] - probabilities[current] > margin else current


@dataclass
class Tracker:
    """The tracks of one stream. ``smoothing_s`` (half-life, 0 = raw) and ``hysteresis`` (margin, 0 = none) may be
    changed between frames; they apply from the next frame on."""

    max_missed_frames: int = 5
    max_missed_s: float = 1.0
    smoothing_s: float = 0.0
    hysteresis: float = 0.0
    tracks: list[Track] = field(default_factory=list)
    next_id: int = 1
    last_t: float | None = None

    def update(self, t: float, faces: Sequence[Observation]) -> list[TrackedFace]:
        """Match the faces of the frame at time ``t`` (seconds) to tracks; one `TrackedFace` per face, same order."""
        if self.last_t is not None and t < self.last_t:
            t = self.last_t  # time never runs backwards for the tracks
        self.last_t = t
        self.tracks = [  # tracks missing for too long end before matching: their face is a new one now
            track
            for track in self.tracks
            if track.missed <= self.max_missed_frames or t - track.last_t <= self.max_missed_s
        ]
        candidates = []
        for ti, track in enumerate(self.tracks):
            for fi, face in enumerate(faces):
                cost = match_cost(track, face.box, t)
                if cost is not None:
                    candidates.append((cost, track.track_id, fi, ti))
        candidates.sort()
        assigned: dict[int, Track] = {}
        taken: set[int] = set()
        for _, _, fi, ti in candidates:
            if fi in assigned or ti in taken:
                continue
            assigned[fi] = self.tracks[ti]
            taken.add(ti)
        out = []
        for fi, face in enumerate(faces):
            found = assigned.get(fi)
            if found is None:
                track = self._start(t, face)
            else:
                track = found
                self._advance(track, t, face)
            out.append(
                TrackedFace(
                    track_id=track.track_id,
                    emotion=track.label,
                    confidence=track.probabilities[track.label],
                    probabilities=dict(track.probabilities),
                )
            )
        matched = {id(track) for track in assigned.values()}
        for track in self.tracks:
            if id(track) not in matched and track.last_t < t:
                track.missed += 1
        return out

    def _start(self, t: float, face: Observation) -> Track:
        probabilities = {label: float(p) for label, p in face.probabilities.items()}
        track = Track(
            track_id=self.next_id,
            box=face.box,
            last_t=t,
            probabilities=probabilities,
            label=hysteresis_label("", probabilities, 0.0),
        )
        self.next_id += 1
        self.tracks.append(track)
        return track

    def _advance(self, track: Track, t: float, face: Observation) -> None:
        dt = t - track.last_t
        (ox, oy), (x, y, w, h) = track.centre(), face.box
        if dt >= MIN_VELOCITY_DT_S:  # frames closer than that say more about noise than motion
            vx, vy = (x + w / 2 - ox) / dt, (y + h / 2 - oy) / dt
            keep = 1.0 - VELOCITY_WEIGHT if track.seen > 1 else 0.0
            track.velocity = (keep * track.velocity[0] + (1 - keep) * vx, keep * track.velocity[1] + (1 - keep) * vy)
        weight = ema_weight(dt, self.smoothing_s)
        track.probabilities = {
            label: track.probabilities.get(label, 0.0) + weight * (float(p) - track.probabilities.get(label, 0.0))
            for label, p in face.probabilities.items()
        }
        track.label = hysteresis_label(track.label, track.probabilities, self.hysteresis)
        track.box = face.box
        track.last_t = t
        track.missed = 0
        track.seen += 1
