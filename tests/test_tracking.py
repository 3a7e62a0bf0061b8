"""Face tracks: service.tracking on its own with explicit frame times (ids, gaps, crossings, smoothing, hysteresis),
then through the real app and a real /ws/stream socket (two real people crossing in a generated video, options)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.sync.client import connect

from sample_photos import two_people_crossing
from service.tracking import Observation, Tracker, ema_weight, hysteresis_label
from tests import photos
from tests.servers import RunningService, running_service

LABELS = ["angry", "happy", "neutral", "sad"]


def probs(**values: float) -> dict[str, float]:
    out = {label: values.get(label, 0.0) for label in LABELS}
    rest = (1.0 - sum(out.values())) / max(1, sum(1 for v in out.values() if v == 0))
    return {label: p if p else rest for label, p in out.items()}


NEUTRAL = probs(neutral=0.7)


def face(x: int, y: int = 100, w: int = 80, p: dict[str, float] | None = None) -> Observation:
    return Observation((x, y, w, w), p or NEUTRAL)


def test_two_faces_crossing_keep_their_ids_and_ids_are_never_reused() -> None:
    tracker = Tracker()
    ids_left_mover, ids_right_mover = set(), set()
    for i in range(60):  # 30 fps: one face moves right, the other left, they pass each other half a face apart
        t = i / 30
        a, b = face(20 + 10 * i, 100), face(620 - 10 * i, 140)
        ordered = sorted([a, b], key=lambda f: f.box[0])  # replies list faces left to right
        tracked = tracker.update(t, ordered)
        for observation, result in zip(ordered, tracked, strict=True):
            (ids_left_mover if observation is a else ids_right_mover).add(result.track_id)
    assert ids_left_mover == {1} and ids_right_mover == {2}

    # a face gone for longer than the limits ends its track; one that comes back later gets a new id
    for i in range(60, 100):
        tracker.update(i / 30, [])
    assert tracker.tracks == []
    assert [f.track_id for f in tracker.update(100 / 30, [face(300)])] == [3]


def test_a_face_missing_for_a_few_frames_keeps_its_id_and_the_limits_apply() -> None:
    tracker = Tracker(max_missed_frames=3, max_missed_s=0.5)
    assert tracker.update(0.0, [face(100)])[0].track_id == 1
    for i in range(1, 6):  # 5 frames (0.17 s) without the face: fewer seconds than the limit
        tracker.update(i / 30, [])
    assert tracker.update(6 / 30, [face(104)])[0].track_id == 1
    # slow frames: 4 frames missed over 2 s is past both limits -> a new track
    for t in (1.0, 1.5, 2.0, 2.5):
        tracker.update(t, [])
    assert tracker.update(3.0, [face(104)])[0].track_id == 2
    # but at one frame every 2 s, a single missed frame keeps the track (frames limit not reached)
    slow = Tracker(max_missed_frames=3, max_missed_s=0.5)
    slow.update(0.0, [face(100)])
    slow.update(2.0, [])
    assert slow.update(4.0, [face(100)])[0].track_id == 1


def test_a_far_or_much_larger_face_is_a_new_track() -> None:
    tracker = Tracker()
    tracker.update(0.0, [face(100)])
    assert tracker.update(0.033, [face(400)])[0].track_id == 2  # far away
    assert tracker.update(0.066, [face(400, w=200)])[0].track_id == 3  # same place, 2.5x the size


def noisy_sequence(frames: int, seed: int = 0) -> list[dict[str, float]]:
    """A person who is mostly neutral with some happiness: two classes close together plus frame noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        raw = np.array([0.05, 0.38, 0.45, 0.12]) + rng.normal(0, 0.08, 4)
        raw = np.clip(raw, 0.001, None)
        out.append(dict(zip(LABELS, (raw / raw.sum()).tolist(), strict=True)))
    return out


def label_changes(labels: list[str]) -> int:
    return sum(a != b for a, b in zip(labels, labels[1:], strict=False))


def run(sequence: list[dict[str, float]], times: list[float], smoothing: float, hysteresis: float) -> list[str]:
    tracker = Tracker(smoothing_s=smoothing, hysteresis=hysteresis)
    return [tracker.update(t, [face(100, p=p)])[0].emotion for t, p in zip(times, sequence, strict=True)]


def test_smoothing_and_hysteresis_reduce_label_changes_on_a_noisy_sequence() -> None:
    sequence = noisy_sequence(300)
    times = [i / 15 for i in range(300)]  # 20 s at 15 fps
    raw = run(sequence, times, 0.0, 0.0)
    assert raw == [max(p, key=lambda k: p[k]) for p in sequence]  # smoothing 0 and no hysteresis: the raw label
    smoothed = run(sequence, times, 1.0, 0.0)
    both = run(sequence, times, 1.0, 0.05)
    assert label_changes(raw) > 40
    assert label_changes(smoothed) < label_changes(raw) / 4
    assert label_changes(both) <= label_changes(smoothed) and label_changes(both) <= 3
    assert both[-1] == "neutral"


def test_smoothing_is_time_based_so_dropped_frames_weigh_as_the_time_they_covered() -> None:
    assert ema_weight(0.5, 0.5) == 0.5 and ema_weight(1.0, 0.5) == 0.75 and ema_weight(3.0, 0.0) == 1.0
    happy, sad = probs(happy=0.9), probs(sad=0.9)
    every = Tracker(smoothing_s=1.0)  # 30 fps
    every.update(0.0, [face(100, p=happy)])
    for i in range(1, 31):
        result = every.update(i / 30, [face(100, p=sad)])[0]
    sparse = Tracker(smoothing_s=1.0)  # the same second with only 2 frames answered (the rest dropped)
    sparse.update(0.0, [face(100, p=happy)])
    sparse.update(0.5, [face(100, p=sad)])
    gapped = sparse.update(1.0, [face(100, p=sad)])[0]
    assert abs(result.probabilities["sad"] - gapped.probabilities["sad"]) < 1e-9
    assert abs(gapped.probabilities["happy"] - (0.9 * 0.5 + (1 - 0.9) / 3 * 0.5)) < 1e-9  # half-way after 1 half-life


def test_hysteresis_keeps_the_label_until_another_leads_by_the_margin() -> None:
    assert hysteresis_label("neutral", {"happy": 0.45, "neutral": 0.40}, 0.1) == "neutral"
    assert hysteresis_label("neutral", {"happy": 0.55, "neutral": 0.40}, 0.1) == "happy"
    assert hysteresis_label("neutral", {"happy": 0.45, "neutral": 0.40}, 0.0) == "happy"
    assert hysteresis_label("", {"happy": 0.45, "neutral": 0.40}, 0.2) == "happy"


# --- through the real app and a real socket -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(exported_model: Path) -> Iterator[RunningService]:
    with running_service(exported_model, track_max_missed_frames=3, track_max_missed_s=0.5) as running:
        yield running


def receive(ws: Any) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=120)))


def analyse(ws: Any, jpeg: bytes, frame_time: float) -> dict[str, Any]:
    """One frame with its time, one in flight: the reply is this frame's (nothing is dropped)."""
    ws.send(json.dumps({"frame_time": frame_time}))  # no reply of its own
    ws.send(jpeg)
    reply = receive(ws)
    assert reply["type"] == "result" and reply["frame_time"] == frame_time and reply["dropped"] == 0, reply
    return reply


def test_two_people_crossing_keep_their_track_ids_over_the_socket(service: RunningService) -> None:
    frames = 24
    ids: dict[str, set[int]] = {"astronaut": set(), "hopper": set()}
    swapped = False
    with connect(service.ws_url + "/ws/stream") as ws:
        ws.send(json.dumps({"smoothing": 0.5, "hysteresis": 0.05}))
        options = receive(ws)
        assert options["type"] == "options" and options["smoothing"] == 0.5 and options["hysteresis"] == 0.05
        for i in range(frames):
            image, (astronaut_box, hopper_box) = two_people_crossing(i, frames)
            reply = analyse(ws, photos.encode(image), i / 10)  # a 10 fps video
            assert len(reply["faces"]) == 2, f"frame {i}: {reply['faces']}"
            for face in reply["faces"]:
                box = (face["box"]["x"], face["box"]["y"], face["box"]["width"], face["box"]["height"])
                who = "astronaut" if photos.iou(box, astronaut_box) > photos.iou(box, hopper_box) else "hopper"
                ids[who].add(face["track_id"])
                smoothed = face["smoothed"]
                assert set(smoothed["probabilities"]) == set(face["probabilities"])
                assert smoothed["probabilities"][smoothed["emotion"]] == smoothed["confidence"]
            # faces are listed left to right, so the first face is the astronaut before the crossing, Hopper after
            swapped |= reply["faces"][0]["track_id"] != reply["faces"][1]["track_id"] and (
                photos.iou(tuple(reply["faces"][0]["box"].values()), hopper_box) > 0.3  # type: ignore[arg-type]
            )
    assert swapped, "the faces never changed places: not a crossing"
    assert ids == {"astronaut": {1}, "hopper": {2}}


def test_a_new_connection_starts_its_own_ids_and_a_gap_beyond_the_limits_is_a_new_track(
    service: RunningService,
) -> None:
    face = photos.one_face_jpeg()
    with connect(service.ws_url + "/ws/stream") as ws:
        assert [f["track_id"] for f in analyse(ws, face, 0.0)["faces"]] == [1]
        assert [f["track_id"] for f in analyse(ws, face, 0.1)["faces"]] == [1]
        assert analyse(ws, photos.no_face_jpeg(), 0.2)["faces"] == []
        assert [f["track_id"] for f in analyse(ws, face, 0.3)["faces"]] == [1]  # one frame missing: kept
        for t in (0.4, 0.5, 0.6, 0.7, 0.8):  # 5 frames and 0.5 s missing: past both limits of this server
            analyse(ws, photos.no_face_jpeg(), t)
        assert [f["track_id"] for f in analyse(ws, face, 0.85)["faces"]] == [2]  # never 1 again


@pytest.mark.parametrize(
    "bad",
    [
        {"smoothing": -1},
        {"smoothing": "fast"},
        {"smoothing": 1e9},
        {"hysteresis": 2},
        {"hysteresis": True},
        {"frame_time": -0.5},
        {"frame_time": "now"},
    ],
)
def test_bad_tracking_options_are_invalid_parameter_and_change_nothing(
    service: RunningService, bad: dict[str, Any]
) -> None:
    with connect(service.ws_url + "/ws/stream") as ws:
        ws.send(json.dumps(bad))
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == "invalid_parameter" and error["seq"] is None
        assert "bad options message" in error["message"] and next(iter(bad)) in error["message"]
        ws.send(json.dumps({"detect": True}))
        options = receive(ws)
        assert options["smoothing"] == 0 and options["hysteresis"] == 0
    # the text "infinity" is no JSON number; NaN/Infinity literals are refused the same way
    with connect(service.ws_url + "/ws/stream") as ws:
        ws.send('{"smoothing": NaN}')
        assert receive(ws)["code"] == "invalid_parameter"


def brightness_frame(level: int) -> bytes:
    """A 48x48 gray frame: the tiny test model tells classes apart by brightness (tests/conftest.py)."""
    return photos.encode(np.full((48, 48), level, np.uint8), "PNG")


def test_smoothing_reduces_label_changes_over_the_socket(service: RunningService) -> None:
    rng = np.random.default_rng(3)
    levels = [int(v) for v in rng.integers(30, 220, 45)]  # a noisy sequence: the raw top label jumps around
    changes = {}
    for smoothing, hysteresis in ((0.0, 0.0), (2.0, 0.05)):
        raw, smoothed = [], []
        with connect(service.ws_url + "/ws/stream") as ws:
            ws.send(json.dumps({"detect": False, "smoothing": smoothing, "hysteresis": hysteresis}))
            assert receive(ws)["type"] == "options"
            for i, level in enumerate(levels):
                (face,) = analyse(ws, brightness_frame(level), i / 15)["faces"]
                assert face["track_id"] == 1
                raw.append(face["emotion"])
                smoothed.append(face["smoothed"]["emotion"])
        changes[smoothing] = (label_changes(raw), label_changes(smoothed))
    (raw_changes, same), (raw_again, smoothed_changes) = changes[0.0], changes[2.0]
    assert same == raw_changes and raw_again == raw_changes  # smoothing 0: the smoothed label is the raw one
    assert raw_changes >= 8, f"the test sequence does not flicker ({raw_changes} changes)"
    assert smoothed_changes <= raw_changes / 3, changes
