"""Load generator: N concurrent clients drive a running service with a real photo; faces/s and p50/p95/p99 latency
per concurrency level, next to the raw model throughput measured in the same run (issue 2, "Benchmark").

    python -m benchmarks.loadgen                       # starts the service on the shipped model, writes RESULTS.md
    python -m benchmarks.loadgen --url http://host:8000 --model-dir models/fer-cnn-48   # an already running one

Three request kinds, each at every concurrency level (closed loop: each client sends its next request as soon as
the previous one is answered, over one keep-alive connection):

- ``photo``: a 512x512 JPEG photograph with one face (docs/examples/astronaut.jpg) through the whole pipeline:
  decode, face detection, crop, shared model call;
- ``crop``: the same face, pre-cropped, with ``detect=false`` (decode + one model input per request);
- ``batch16``: ``/predict/batch`` with 16 pre-cropped faces and ``detect=false`` (HTTP cost amortised).

The raw model is the exported SavedModel called directly in this process (``service.model.load_model``, the same
call the service's batcher makes) on real face crops, with full batches (``max_batch_size``) and one crop at a time.
The results replace the ``loadgen`` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    DEFAULT_MODEL,
    PHOTO,
    ROOT,
    Connection,
    Tally,
    cpu_seconds,
    cpu_used,
    fetch_metrics,
    http_request,
    machine_description,
    metric_value,
    model_description,
    ms,
    multipart,
    percentiles,
    start_service,
    write_section,
)

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
LEVELS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Workload:
    name: str
    description: str
    request: bytes
    faces_per_request: int


def build_workloads(host: str) -> list[Workload]:
    import cv2
    import numpy as np

    photo = PHOTO.read_bytes()
    image = cv2.imdecode(np.frombuffer(photo, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot decode {photo!r:.40}"
    x, y, w, h = 178, 68, 93, 93  # the astronaut's face (tests/photos.py ASTRONAUT_FACE)
    margin = int(0.2 * w)
    crop = cv2.imencode(
        ".jpg", image[y - margin : y + h + margin, x - margin : x + w + margin], [cv2.IMWRITE_JPEG_QUALITY, 92]
    )[1].tobytes()
    body, content_type = multipart([("files", f"{i}.jpg", crop) for i in range(16)])
    return [
        Workload(
            "photo",
            f"512x512 photo, 1 face, full pipeline ({len(photo) // 1024} KiB JPEG)",
            http_request("POST", "/predict", host, photo, "image/jpeg"),
            1,
        ),
        Workload(
            "crop",
            f"pre-cropped face, detect=false ({len(crop) // 1024} KiB JPEG)",
            http_request("POST", "/predict?detect=false", host, crop, "image/jpeg"),
            1,
        ),
        Workload(
            "batch16",
            "/predict/batch, 16 pre-cropped faces, detect=false",
            http_request("POST", "/predict/batch?detect=false", host, body, content_type),
            16,
        ),
    ]


async def closed_loop(host: str, port: int, request: bytes, clients: int, seconds: float) -> tuple[Tally, float]:
    """``clients`` connections each sending ``request`` back to back for ``seconds``; (tally, elapsed seconds)."""
    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        connection = Connection(host, port)
        try:
            while time.perf_counter() < deadline:
                try:
                    tally.add(await connection.send(request))
                except (OSError, asyncio.IncompleteReadError):
                    tally.transport_errors += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return tally, time.perf_counter() - started


def client_cpu_seconds() -> float:
    """CPU seconds this process (the load generator) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_answer(host: str, port: int, workload: Workload) -> None:
    """One request first: it must be a 200 with the expected number of faces (else the numbers mean nothing)."""

    async def once() -> bytes:
        connection = Connection(host, port)
        try:
            reply = await connection.send(workload.request)
        finally:
            await connection.close()
        if reply.status != 200:
            raise SystemExit(f"{workload.name}: status {reply.status}: {reply.body[:300]!r}")
        return reply.body

    body = json.loads(asyncio.run(once()))
    results = body["results"] if "results" in body else [body]
    faces = sum(len(result["faces"]) for result in results)
    if faces != workload.faces_per_request:
        raise SystemExit(f"{workload.name}: {faces} faces found, expected {workload.faces_per_request}")


def raw_model_throughput(
    model_dir: Path, batch_size: int, seconds: float, sizes: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """Crops/s of the model called directly, one crop at a time and in full batches of 8 and ``batch_size``
    (or in batches of each of ``sizes``).

    ``batched`` is the best of the batch sizes: the ratio of the service to it is then never flattered by a
    batch size that suits this CPU badly (ResNet50V2 runs faster per crop in batches of 8 than of 32 here).
    """
    import numpy as np

    from service import faces
    from service.images import decode_image
    from service.model import load_model

    model = load_model(model_dir)
    meta = model.metadata.input
    image = decode_image(PHOTO.read_bytes(), max_pixels=10**8)
    detector = faces.create_detector(faces.DEFAULT_DETECTOR, min_face_size=40, threshold=0.5)
    boxes = [d.box for d in detector.detect(image)] or [faces.whole_image(image).box]
    crop = faces.crop_faces(
        image, boxes[:1], height=meta.height, width=meta.width, color_mode=meta.color_mode, margin=0.2
    )
    by_size: dict[int, tuple[float, float]] = {}
    for size in sorted(set(sizes) if sizes else {1, min(8, batch_size), batch_size}):
        batch = np.repeat(crop, size, axis=0)
        for _ in range(3):
            model.predict(batch)  # warm-up (graph optimisation for this batch size)
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.predict(batch)
            calls += 1
        elapsed = time.perf_counter() - started
        by_size[size] = (calls * size / elapsed, elapsed / calls * 1000)
    best = max((size for size in by_size if size > 1), key=lambda size: by_size[size][0], default=1)
    return {
        "by_size": by_size,
        "batched": by_size[best][0],
        "batched_size": best,
        "one_at_a_time": by_size[1][0] if 1 in by_size else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--url", help="an already running service (default: start one on --model-dir)")
    parser.add_argument("--levels", type=lambda s: tuple(int(v) for v in s.split(",")), default=LEVELS)
    parser.add_argument("--seconds", type=float, default=6.0, help="duration of each level")
    parser.add_argument("--workloads", default="photo,crop,batch16")
    parser.add_argument("--max-batch-size", type=int, default=32, help="the service's setting (for raw batches)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--service-args",
        default="--max-pending-images 1100 --max-queue 1100",
        help="extra flags for the started service (default: admission bounds above the highest "
        "level's load, so that the levels measure capacity; benchmarks/overload.py measures "
        "shedding with the defaults)",
    )
    parser.add_argument(
        "--no-unbatched",
        dest="unbatched",
        action="store_false",
        help="skip the comparison with a service started with --max-batch-size 1",
    )
    parser.add_argument(
        "--raw-seconds",
        type=float,
        default=None,
        help="time for each raw-model measurement (default: half a level, at least 3 s; give a "
        "slow model enough for several calls)",
    )
    parser.add_argument(
        "--section",
        default="loadgen",
        help="section of the results file to rewrite (another name adds a section, e.g. for a second model)",
    )
    args = parser.parse_args(argv)

    print("raw model ...", flush=True)
    raw_seconds = args.raw_seconds if args.raw_seconds is not None else max(3.0, args.seconds / 2)
    raw = raw_model_throughput(args.model_dir, args.max_batch_size, seconds=raw_seconds)
    print(f"  batched {raw['batched']:.0f} crops/s, one at a time {raw['one_at_a_time']:.0f} crops/s", flush=True)

    service = None
    if args.url:
        url = args.url.rstrip("/")
    else:
        service = start_service(
            args.model_dir,
            ROOT / "test-artifacts" / "benchmarks" / "loadgen-service.log",
            "--max-batch-size",
            str(args.max_batch_size),
            *args.service_args.split(),
        )
        url = service.url
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    rows = []
    try:
        workloads = [w for w in build_workloads(f"{host}:{port}") if w.name in args.workloads.split(",")]
        for workload in workloads:
            check_answer(host, port, workload)
            for clients in args.levels:
                before = fetch_metrics(url)
                cpu_before = cpu_seconds(service.process.pid) if service else {}
                client_before = client_cpu_seconds()
                tally, elapsed = asyncio.run(closed_loop(host, port, workload.request, clients, args.seconds))
                client_cpu = client_cpu_seconds() - client_before
                service_cpu, workers_cpu = (
                    cpu_used(cpu_before, cpu_seconds(service.process.pid), service.process.pid)
                    if service
                    else (0.0, 0.0)
                )
                after = fetch_metrics(url)
                calls = metric_value(after, "fer_batch_size_count") - metric_value(before, "fer_batch_size_count")
                crops = metric_value(after, "fer_batch_size_sum") - metric_value(before, "fer_batch_size_sum")
                p50, p95, p99 = percentiles(tally.latencies)
                row = {
                    "workload": workload.name,
                    "clients": clients,
                    "requests_per_s": tally.ok / elapsed,
                    "faces_per_s": tally.ok * workload.faces_per_request / elapsed,
                    "p50": p50,
                    "p95": p95,
                    "p99": p99,
                    "mean_batch": crops / calls if calls else 0.0,
                    "non_200": sum(c for s, c in tally.statuses.items() if s != 200) + tally.transport_errors,
                }
                faces_done = tally.ok * workload.faces_per_request
                if service and faces_done:  # CPU per face: where the two cores' time went
                    row["cpu_ms"] = tuple(1000 * cpu / faces_done for cpu in (service_cpu, workers_cpu, client_cpu))
                rows.append(row)
                print(
                    f"  {workload.name:8s} c={clients:3d} {row['faces_per_s']:8.1f} faces/s  p50 {ms(p50)} "
                    f"p95 {ms(p95)} p99 {ms(p99)} ms  batch {row['mean_batch']:.1f}  non-200 {row['non_200']}"
                    + ("  CPU ms/face {:.1f} / {:.1f} / {:.1f}".format(*row["cpu_ms"]) if "cpu_ms" in row else ""),
                    flush=True,
                )
    finally:
        if service is not None:
            service.stop()

    # The raw model once more, now that the service is gone, at its best batch size: this VM's speed drifts by
    # 10-20 % within minutes, and the higher of the two readings is the reference (never the flattering one).
    print("raw model again ...", flush=True)
    again = raw_model_throughput(args.model_dir, args.max_batch_size, seconds=raw_seconds, sizes=(raw["batched_size"],))
    raw["batched_after"] = again["batched"]
    raw["reference"] = max(raw["batched"], again["batched"])
    print(f"  batched {again['batched']:.0f} crops/s", flush=True)

    unbatched = []
    if args.unbatched and not args.url:
        # The same service with batching off: at each workload's saturation level, how much batching buys.
        service = start_service(
            args.model_dir,
            ROOT / "test-artifacts" / "benchmarks" / "loadgen-unbatched.log",
            "--max-batch-size",
            "1",
            *args.service_args.split(),
        )
        try:
            for workload in build_workloads(f"127.0.0.1:{service.port}"):
                if workload.name not in args.workloads.split(","):
                    continue
                best = max((r for r in rows if r["workload"] == workload.name), key=lambda r: r["faces_per_s"])
                tally, elapsed = asyncio.run(
                    closed_loop("127.0.0.1", service.port, workload.request, best["clients"], args.seconds)
                )
                p50, p95, p99 = percentiles(tally.latencies)
                unbatched.append(
                    {
                        "workload": workload.name,
                        "clients": best["clients"],
                        "faces_per_s": tally.ok * workload.faces_per_request / elapsed,
                        "batched_faces_per_s": best["faces_per_s"],
                        "p50": p50,
                        "p99": p99,
                        "batched_p99": best["p99"],
                    }
                )
                print(
                    f"  unbatched {workload.name:8s} c={best['clients']:3d} "
                    f"{unbatched[-1]['faces_per_s']:8.1f} faces/s (batched {best['faces_per_s']:.1f})",
                    flush=True,
                )
        finally:
            service.stop()

    report = render(rows, raw, args, workloads, unbatched)
    write_section(args.results, args.section, report, "Benchmark results")
    print(f"wrote {args.results}")
    return 0


def render(
    rows: list[dict], raw: dict[str, Any], args: argparse.Namespace, workloads: list[Workload], unbatched: list[dict]
) -> str:
    command = " ".join(sys.argv[1:])
    lines = [
        f"## Throughput and latency: {Path(args.model_dir).name} (benchmarks/loadgen.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python -m benchmarks.loadgen {command}`.",
        "",
        f"- Machine: {machine_description()}.",
        f"- Model: {model_description(args.model_dir)}; service defaults except `--max-batch-size "
        f"{args.max_batch_size} {args.service_args}` (admission bounds above the highest level's load, so the "
        "levels measure capacity, not shedding); client and service share the machine (loopback).",
        "",
        "Raw model (the SavedModel's serving signature called directly, real face crops):",
        "",
        "| how | crops/s | ms per call |",
        "|---|---|---|",
        *[
            f"| {'one at a time' if size == 1 else f'full batches of {size}'} | {rate:.0f} | {per_call:.2f} |"
            for size, (rate, per_call) in raw["by_size"].items()
        ],
        "",
        f"Batching gives {raw['batched'] / raw['one_at_a_time']:.1f}x the throughput of one-at-a-time "
        f"inference on the raw model (best: batches of {raw['batched_size']}, {raw['batched']:.0f} crops/s). "
        f"Measured again after the service had stopped: {raw['batched_after']:.0f} crops/s; the higher of the "
        f"two, **{raw['reference']:.1f} crops/s, is the reference** for the percentages below.",
        "",
        "CPU ms per face: CPU time spent during the level, divided by the faces answered, in the service "
        "process (HTTP, batching and the model), in its face detection worker processes (decoding, detection, "
        "cropping) and in the load generator; on 2 cores at most 2000 ms of CPU are available per second.",
        "",
    ]
    for workload in workloads:
        mine = [r for r in rows if r["workload"] == workload.name]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["faces_per_s"])
        lines += [
            f"### `{workload.name}`: {workload.description}",
            "",
            "| clients | faces/s | requests/s | p50 ms | p95 ms | p99 ms | mean model batch | non-200 | "
            "CPU ms per face: service / detection workers / client |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['clients']} | {r['faces_per_s']:.1f} | {r['requests_per_s']:.1f} | {ms(r['p50'])} | "
            f"{ms(r['p95'])} | {ms(r['p99'])} | {r['mean_batch']:.1f} | {r['non_200']} | "
            f"{' / '.join(f'{v:.1f}' for v in r['cpu_ms']) if 'cpu_ms' in r else '–'} |"
            for r in mine
        ]
        lines += [
            "",
            f"Saturation: {best['faces_per_s']:.1f} faces/s at {best['clients']} clients = "
            f"{100 * best['faces_per_s'] / raw['reference']:.1f} % of the raw model's best batched "
            "throughput, "
            f"{best['faces_per_s'] / raw['one_at_a_time']:.2f}x its one-at-a-time throughput.",
            "",
        ]
    if unbatched:
        lines += [
            "### The service with batching off (`--max-batch-size 1`), at each workload's saturation level",
            "",
            "| workload | clients | faces/s batched | faces/s one at a time | gain | p99 ms batched | "
            "p99 ms one at a time |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {u['workload']} | {u['clients']} | {u['batched_faces_per_s']:.1f} | {u['faces_per_s']:.1f} | "
            f"{u['batched_faces_per_s'] / u['faces_per_s']:.2f}x | {ms(u['batched_p99'])} | {ms(u['p99'])} |"
            for u in unbatched
            if u["faces_per_s"]
        ]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
