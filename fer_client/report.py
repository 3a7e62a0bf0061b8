"""The interview report (``python -m fer_client URL video.mp4 --report DIR``): per-person emotion timelines.

The service gives every face of the stream a ``track_id`` and its track's smoothed emotion (``smoothing`` and
``hysteresis`` options, timed by each frame's media time). From the analysed frames this writes, into ``DIR``:

- ``frames.jsonl``: one JSON object per analysed frame (time, faces with ``track_id``, raw and smoothed emotions);
- ``track_<id>.csv``: one row per frame the track was seen in (box, raw and smoothed label and probabilities);
- ``track_<id>.png``: the track's smoothed probabilities stacked over time (matplotlib);
- ``summary.json`` and ``summary.csv``: per track the time in view, the share of that time in each smoothed
  emotion, and the moments of strongest change (largest change of the smoothed probabilities within
  ``CHANGE_WINDOW_S``);
- ``report.html``: all of it on one page (the charts embedded by file name, so keep the folder together).

Needs matplotlib (the ``client`` extra); it is imported only when a report is written.
"""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_client.colours import colour_for

#: "Strongest change": how far apart (seconds) the two smoothed distributions compared at each moment are.
CHANGE_WINDOW_S = 1.0
#: How many moments of strongest change are listed per track, at least MOMENT_GAP_S apart.
MOMENTS = 3
MOMENT_GAP_S = 2.0


@dataclass
class TrackPoint:
    frame: int
    time_s: float
    box: dict[str, int]
    emotion: str
    confidence: float
    probabilities: dict[str, float]
    smoothed_emotion: str
    smoothed_confidence: float
    smoothed: dict[str, float]


@dataclass
class TrackSummary:
    track_id: int
    first_s: float
    last_s: float
    frames: int
    seconds: float
    share: dict[str, float]  # label -> share of the track's time with that smoothed emotion (0..1)
    moments: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "first_s": round(self.first_s, 3),
            "last_s": round(self.last_s, 3),
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "share": {label: round(value, 4) for label, value in self.share.items()},
            "moments": self.moments,
        }


class Report:
    """Collects the analysed frames of one video and writes the report folder at the end."""

    def __init__(self, folder: Path, source: str) -> None:
        self.folder = folder
        self.source = source
        folder.mkdir(parents=True, exist_ok=True)
        self._log = (folder / "frames.jsonl").open("w", encoding="utf-8")
        self.tracks: dict[int, list[TrackPoint]] = {}
        self.labels: list[str] = []
        self.frames = 0
        self.model: dict[str, Any] | None = None
        self.options: dict[str, Any] = {}

    def add(self, record: dict[str, Any]) -> None:
        """One analysed frame: the client's per-frame record (``frame``, ``time_s``, ``faces`` with track ids)."""
        self.frames += 1
        self._log.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.model = record.get("model") or self.model
        for face in record.get("faces") or []:
            if "track_id" not in face:
                continue  # a service without face tracks: nothing to put on a timeline
            smoothed = face.get("smoothed") or face
            if not self.labels:
                self.labels = list(face["probabilities"])
            self.tracks.setdefault(int(face["track_id"]), []).append(
                TrackPoint(
                    frame=int(record["frame"]),
                    time_s=float(record["time_s"]),
                    box=dict(face["box"]),
                    emotion=face["emotion"],
                    confidence=float(face["confidence"]),
                    probabilities={k: float(v) for k, v in face["probabilities"].items()},
                    smoothed_emotion=smoothed["emotion"],
                    smoothed_confidence=float(smoothed["confidence"]),
                    smoothed={k: float(v) for k, v in smoothed["probabilities"].items()},
                )
            )

    def close(self) -> None:
        self._log.close()

    def write(self, frame_interval_s: float) -> Path:
        """Write the per-track files, the summary and the HTML page; returns the page's path."""
        self.close()
        summaries = []
        for track_id, points in sorted(self.tracks.items()):
            self._write_track_csv(track_id, points)
            plot_track(self.folder / f"track_{track_id}.png", track_id, points, self.labels)
            summaries.append(summarise(track_id, points, self.labels, frame_interval_s))
        summary = {
            "source": self.source,
            "model": self.model,
            "options": self.options,
            "frames": self.frames,
            "labels": self.labels,
            "tracks": [s.as_dict() for s in summaries],
        }
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        with (self.folder / "summary.csv").open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(
                ["track_id", "first_s", "last_s", "frames", "seconds"] + [f"share_{x}" for x in self.labels]
            )
            for s in summaries:
                shares = [round(s.share.get(label, 0.0), 4) for label in self.labels]
                writer.writerow(
                    [s.track_id, round(s.first_s, 3), round(s.last_s, 3), s.frames, round(s.seconds, 3)] + shares
                )
        page = self.folder / "report.html"
        page.write_text(render_html(summary, summaries, self.labels), encoding="utf-8")
        return page

    def _write_track_csv(self, track_id: int, points: list[TrackPoint]) -> None:
        with (self.folder / f"track_{track_id}.csv").open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(
                ["frame", "time_s", "x", "y", "width", "height", "emotion", "confidence"]
                + [f"p_{label}" for label in self.labels]
                + ["smoothed_emotion", "smoothed_confidence"]
                + [f"s_{label}" for label in self.labels]
            )
            for p in points:
                writer.writerow(
                    [p.frame, round(p.time_s, 4), p.box["x"], p.box["y"], p.box["width"], p.box["height"]]
                    + [p.emotion, round(p.confidence, 5)]
                    + [round(p.probabilities.get(label, 0.0), 5) for label in self.labels]
                    + [p.smoothed_emotion, round(p.smoothed_confidence, 5)]
                    + [round(p.smoothed.get(label, 0.0), 5) for label in self.labels]
                )


def summarise(track_id: int, points: list[TrackPoint], labels: list[str], frame_interval_s: float) -> TrackSummary:
    """Time in view, share of it per smoothed emotion, and the moments of strongest change of one track.

    Each frame stands for the time until the track's next frame, at most twice ``frame_interval_s`` (a gap where
    the face was not seen does not count); the last frame for one ``frame_interval_s``."""
    time_in: dict[str, float] = dict.fromkeys(labels, 0.0)
    for i, point in enumerate(points):
        span = points[i + 1].time_s - point.time_s if i + 1 < len(points) else frame_interval_s
        time_in[point.smoothed_emotion] = time_in.get(point.smoothed_emotion, 0.0) + min(span, 2 * frame_interval_s)
    total = sum(time_in.values())
    share = {label: (value / total if total > 0 else 0.0) for label, value in time_in.items()}
    return TrackSummary(
        track_id=track_id,
        first_s=points[0].time_s,
        last_s=points[-1].time_s,
        frames=len(points),
        seconds=total,
        share=share,
        moments=strongest_changes(points, labels),
    )


def strongest_changes(points: list[TrackPoint], labels: list[str]) -> list[dict[str, Any]]:
    """The ``MOMENTS`` times where the smoothed probabilities moved most within ``CHANGE_WINDOW_S`` (total variation
    distance to the frame about a window earlier, 0..1), at least ``MOMENT_GAP_S`` apart, strongest first."""
    changes = []
    start = 0
    for i, point in enumerate(points):
        while start < i and point.time_s - points[start + 1].time_s >= CHANGE_WINDOW_S:
            start += 1
        if start == i:
            continue
        before = points[start]
        distance = 0.5 * sum(abs(point.smoothed.get(x, 0.0) - before.smoothed.get(x, 0.0)) for x in labels)
        changes.append((distance, point, before))
    chosen: list[dict[str, Any]] = []
    for distance, point, before in sorted(changes, key=lambda c: (-c[0], c[1].time_s)):
        if len(chosen) == MOMENTS or distance <= 0:
            break
        if any(abs(point.time_s - m["time_s"]) < MOMENT_GAP_S for m in chosen):
            continue
        chosen.append(
            {
                "time_s": round(point.time_s, 3),
                "frame": point.frame,
                "change": round(distance, 4),
                "from": before.smoothed_emotion,
                "to": point.smoothed_emotion,
            }
        )
    return chosen


def plot_track(path: Path, track_id: int, points: list[TrackPoint], labels: list[str]) -> None:
    """A stacked area chart of the track's smoothed probabilities over time."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    times = [p.time_s for p in points]
    series = [[p.smoothed.get(label, 0.0) for p in points] for label in labels]
    colours = []
    for label in labels:
        b, g, r = colour_for(label)
        colours.append((r / 255, g / 255, b / 255))
    figure, axes = plt.subplots(figsize=(8, 2.6), dpi=100)
    if len(points) == 1:  # one frame: a bar, since an area needs two points
        times = [times[0], times[0] + 1e-3]
        series = [[s[0], s[0]] for s in series]
    axes.stackplot(times, series, labels=labels, colors=colours, linewidth=0)
    axes.set_xlim(times[0], times[-1])
    axes.set_ylim(0, 1)
    axes.set_xlabel("time in the video (s)")
    axes.set_ylabel("probability (smoothed)")
    axes.set_title(f"Track {track_id}")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def render_html(summary: dict[str, Any], summaries: list[TrackSummary], labels: list[str]) -> str:
    """The report page: the summary table, then per track its moments, chart and CSV."""
    e = html.escape
    model = summary.get("model") or {}
    head_cells = "".join(f"<th>{e(label)}</th>" for label in labels)
    rows = []
    for s in summaries:
        top = max(s.share, key=lambda label: s.share[label]) if s.share else ""
        cells = "".join(
            f'<td class="{"top" if label == top else ""}">{100 * s.share.get(label, 0.0):.0f}%</td>' for label in labels
        )
        rows.append(
            f'<tr><td><a href="#track-{s.track_id}">#{s.track_id}</a></td><td>{s.first_s:.1f}–{s.last_s:.1f} s</td>'
            f"<td>{s.seconds:.1f} s</td>{cells}</tr>"
        )
    sections = []
    for s in summaries:
        moments = "".join(
            f"<li>{m['time_s']:.1f} s (frame {m['frame']}): {e(m['from'])} → {e(m['to'])}, "
            f"change {m['change']:.2f}</li>"
            for m in s.moments
        )
        sections.append(
            f'<section id="track-{s.track_id}"><h2>Track #{s.track_id}</h2>'
            f"<p>In view {s.first_s:.1f}–{s.last_s:.1f} s, {s.frames} frames analysed. "
            f'<a href="track_{s.track_id}.csv">track_{s.track_id}.csv</a></p>'
            f'<img src="track_{s.track_id}.png" alt="Emotion timeline of track {s.track_id}">'
            f"<h3>Moments of strongest change</h3><ol>{moments or '<li>none</li>'}</ol></section>"
        )
    options = ", ".join(f"{e(str(k))} {e(str(v))}" for k, v in summary.get("options", {}).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emotion report: {e(summary["source"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; }}
td {{ text-align: right; }} td:first-child {{ text-align: left; }} td.top {{ font-weight: 700; }}
img {{ max-width: 100%; }} .muted {{ color: #666; }}
</style></head><body>
<h1>Emotion report</h1>
<p class="muted">{e(summary["source"])} · {summary["frames"]} frames analysed · model {e(str(model.get("name", "?")))}
v{e(str(model.get("version", "?")))} · {options} · <a href="frames.jsonl">frames.jsonl</a> ·
<a href="summary.csv">summary.csv</a> · <a href="summary.json">summary.json</a></p>
<h2>Share of time in each smoothed emotion</h2>
<table id="summary"><thead><tr><th>track</th><th>in view</th><th>time</th>{head_cells}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{"".join(sections) or "<p>No face was tracked.</p>"}
</body></html>
"""
