"""Soak test (issue 7, item 4): many requests mixed with WebSocket sessions against one service process; resident
memory, threads and file descriptors must not grow, and there must be no 5xx.

    python -m benchmarks.soak                          # 20,000 HTTP requests, writes the "soak" section
    python -m benchmarks.soak --requests 5000 --max-seconds 300

The mix (weights) sent by ``--clients`` concurrent HTTP clients over keep-alive connections:

- 20 % a 512x512 photo with one face (raw JPEG body, whole pipeline), 5 % the same as multipart;
- 35 % a pre-cropped face with ``detect=false``; 10 % ``/predict/batch`` with 4 pre-cropped faces;
- 15 % bad input (random bytes, a truncated JPEG, an empty body, a decompression bomb header, wrong type): 4xx;
- 15 % ``/healthz``, ``/readyz`` and ``/metrics``;

and, alongside, ``--ws-clients`` WebSocket clients opening sessions one after another on /ws/stream, each sending
a handful of frames (some faster than they are processed, so frames are dropped) and closing (a few vanish
without a close handshake).

Resident memory (VmRSS), threads and open file descriptors of the service process and its face detection
worker processes (summed) are sampled after a warm-up of
``--warmup`` requests and then every few seconds; the section reports the level after warm-up, the end (after the
load and after 10 idle seconds) and the maximum. The run stops at ``--requests`` HTTP requests or ``--max-seconds``,
whichever comes first, and says which.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    DEFAULT_MODEL,
    PHOTO,
    ROOT,
    Connection,
    ProcStats,
    fetch_metrics,
    http_request,
    machine_description,
    metric_value,
    model_description,
    multipart,
    percentiles,
    proc_stats,
    start_service,
    write_section,
)

RELIABILITY = ROOT / "benchmarks" / "RELIABILITY.md"


def build_mix(host: str) -> list[tuple[str, float, bytes, tuple[int, ...]]]:
    """(name, weight, request bytes, acceptable statuses)."""
    import cv2
    import numpy as np

    photo = PHOTO.read_bytes()
    image = cv2.imdecode(np.frombuffer(photo, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "cannot decode the photo"
    crop = cv2.imencode(".jpg", image[50:180, 160:290])[1].tobytes()
    rng = np.random.default_rng(0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + b"IHDR"
        + struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
        + b"\x00" * 4
    )
    photo_mp, photo_ct = multipart([("file", "a.jpg", photo)])
    batch, batch_ct = multipart([("files", f"{i}.jpg", crop) for i in range(4)])
    return [
        ("photo", 20, http_request("POST", "/predict", host, photo, "image/jpeg"), (200,)),
        ("photo-multipart", 5, http_request("POST", "/predict", host, photo_mp, photo_ct), (200,)),
        ("crop", 35, http_request("POST", "/predict?detect=false", host, crop, "image/jpeg"), (200,)),
        ("batch4", 10, http_request("POST", "/predict/batch?detect=false", host, batch, batch_ct), (200,)),
        ("random-bytes", 3, http_request("POST", "/predict", host, rng.bytes(5000), "image/jpeg"), (400,)),
        ("truncated", 3, http_request("POST", "/predict", host, photo[:20000], "image/jpeg"), (400,)),
        ("empty", 3, http_request("POST", "/predict", host, b"", "image/jpeg"), (400,)),
        ("bomb", 3, http_request("POST", "/predict", host, bomb, "image/png"), (400, 413)),
        ("wrong-type", 3, http_request("POST", "/predict", host, photo, "text/plain"), (415,)),
        ("healthz", 5, http_request("GET", "/healthz", host), (200,)),
        ("readyz", 5, http_request("GET", "/readyz", host), (200,)),
        ("metrics", 5, http_request("GET", "/metrics", host), (200,)),
    ]


@dataclass
class SoakState:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    transport_errors: int = 0
    latencies: list[float] = field(default_factory=list)
    ws_sessions: int = 0
    ws_frames: int = 0
    ws_results: int = 0
    ws_errors: dict[str, int] = field(default_factory=dict)
    ws_failures: int = 0
    samples: list[tuple[float, ProcStats]] = field(default_factory=list)
    stop: bool = False


async def http_client(state: SoakState, host: str, port: int, mix: list, limit: int, rng: random.Random) -> None:
    names = [m[0] for m in mix]
    weights = [m[1] for m in mix]
    table = {m[0]: m for m in mix}
    connection = Connection(host, port)
    try:
        while not state.stop and state.requests < limit:
            state.requests += 1
            name = rng.choices(names, weights)[0]
            _, _, request, expected = table[name]
            try:
                reply = await connection.send(request)
            except (OSError, asyncio.IncompleteReadError):
                state.transport_errors += 1
                continue
            state.by_status[reply.status] = state.by_status.get(reply.status, 0) + 1
            if reply.status not in expected:
                key = f"{name}:{reply.status}"
                state.unexpected[key] = state.unexpected.get(key, 0) + 1
            if reply.status == 200 and name in ("photo", "crop"):
                state.latencies.append(reply.seconds)
    finally:
        await connection.close()


async def ws_client(state: SoakState, url: str, frames: list[bytes], rng: random.Random) -> None:
    import json

    from websockets.asyncio.client import connect

    while not state.stop:
        try:
            async with connect(url, max_size=None, open_timeout=30, close_timeout=10) as ws:
                state.ws_sessions += 1
                count = rng.randint(3, 12)
                burst = rng.random() < 0.5  # send all at once (frames get dropped) or one by one
                last_seq = 0
                for _ in range(count):
                    await ws.send(rng.choice(frames))
                    state.ws_frames += 1
                    if not burst:
                        reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                        last_seq = reply["seq"]
                        _ws_count(state, reply)
                while burst and last_seq < count:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    last_seq = reply["seq"] or last_seq
                    _ws_count(state, reply)
                if rng.random() < 0.1:  # vanish without a close handshake
                    transport = ws.transport
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    transport.abort()
        except Exception as exc:  # noqa: BLE001 - counted; a refused or broken session must not stop the soak
            if not state.stop and "1006" not in str(exc):
                state.ws_failures += 1
        await asyncio.sleep(rng.random() * 0.2)


def _ws_count(state: SoakState, reply: dict) -> None:
    if reply["type"] == "result":
        state.ws_results += 1
    else:
        state.ws_errors[reply.get("code", "?")] = state.ws_errors.get(reply.get("code", "?"), 0) + 1


async def sampler(state: SoakState, pid: int, started: float, every: float) -> None:
    while not state.stop:
        await asyncio.sleep(every)
        try:
            state.samples.append((time.perf_counter() - started, proc_stats(pid)))
        except Exception as exc:  # a failed sample must not end the series silently
            print(f"sample failed: {exc!r}", flush=True)


async def soak(
    host: str,
    port: int,
    pid: int,
    args: argparse.Namespace,
    state: SoakState,
    limit: int,
    max_seconds: float,
    sample_every: float | None,
) -> float:
    mix = build_mix(f"{host}:{port}")
    photo = PHOTO.read_bytes()
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(photo, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "cannot decode the photo"
    small = cv2.imencode(".jpg", cv2.resize(image, (320, 320)))[1].tobytes()
    frames = [photo, small, small, b"not an image"]
    rng = random.Random(1)
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(http_client(state, host, port, mix, limit, random.Random(rng.random())))
        for _ in range(args.clients)
    ]
    ws_tasks = [
        asyncio.create_task(ws_client(state, f"ws://{host}:{port}/ws/stream", frames, random.Random(rng.random())))
        for _ in range(args.ws_clients)
    ]
    extra = [asyncio.create_task(sampler(state, pid, started, sample_every))] if sample_every else []
    done, _ = await asyncio.wait(tasks, timeout=max_seconds)
    state.stop = True
    await asyncio.gather(*tasks, *ws_tasks, *extra, return_exceptions=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=20_000, help="HTTP requests after the warm-up")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=540.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ws-clients", type=int, default=2)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--results", type=Path, default=RELIABILITY)
    args = parser.parse_args(argv)

    service = start_service(args.model_dir, ROOT / "test-artifacts" / "benchmarks" / "soak-service.log")
    host, port = "127.0.0.1", service.port
    try:
        warm = SoakState()
        asyncio.run(soak(host, port, service.pid, args, warm, args.warmup, args.max_seconds, None))
        time.sleep(2)
        after_warmup = proc_stats(service.pid)
        print(f"after warm-up ({warm.requests} requests): {after_warmup}", flush=True)
        state = SoakState()
        elapsed = asyncio.run(
            soak(host, port, service.pid, args, state, args.requests, args.max_seconds, args.sample_every)
        )
        at_end = proc_stats(service.pid)
        time.sleep(10)
        idle_end = proc_stats(service.pid)
        metrics = fetch_metrics(service.url)
        print(f"end: {at_end}; after 10 s idle: {idle_end}", flush=True)
    finally:
        code = service.stop()
    report = render(args, warm, state, elapsed, after_warmup, at_end, idle_end, metrics, code)
    write_section(args.results, "soak", report, "Reliability results")
    print(f"wrote {args.results}")
    return 0


def render(
    args: argparse.Namespace,
    warm: SoakState,
    state: SoakState,
    elapsed: float,
    after_warmup: ProcStats,
    at_end: ProcStats,
    idle_end: ProcStats,
    metrics: str,
    exit_code: int,
) -> str:
    peak = max([after_warmup, at_end, *[s for _, s in state.samples]], key=lambda s: s.rss_mib)
    growth = 100 * (idle_end.rss_mib - after_warmup.rss_mib) / after_warmup.rss_mib
    server_errors = sum(c for s, c in state.by_status.items() if s >= 500)
    stopped = "all requested" if state.requests >= args.requests else f"stopped by --max-seconds {args.max_seconds:g}"
    p50, p95, p99 = percentiles(state.latencies)
    http_5xx_metric = sum(
        metric_value(metrics, "fer_http_requests_total", {"route": route, "status": str(s)})
        for s in (500, 501, 502, 503, 504)
        for route in ("/predict", "/predict/batch")
    )
    lines = [
        "## Soak (benchmarks/soak.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python -m benchmarks.soak "
        f"--requests {args.requests} --max-seconds {args.max_seconds:g}`.",
        "",
        f"- Machine: {machine_description()}.",
        f"- Model: {model_description(args.model_dir)}; default settings; {args.clients} HTTP clients and "
        f"{args.ws_clients} WebSocket clients at once, loopback.",
        "",
        "| | value |",
        "|---|---|",
        f"| HTTP requests after a {warm.requests}-request warm-up | {state.requests} in {elapsed:.0f} s ({stopped}) |",
        f"| by status | {', '.join(f'{s}: {c}' for s, c in sorted(state.by_status.items()))} |",
        f"| 5xx (client view / service's own counter incl. warm-up) | {server_errors} / {http_5xx_metric:.0f} |",
        f"| answers other than the expected status | {state.unexpected or 'none'} |",
        f"| transport errors | {state.transport_errors} |",
        f"| WebSocket sessions / frames sent / results / error replies | {state.ws_sessions} / "
        f"{state.ws_frames} / {state.ws_results} / {state.ws_errors or 'none'} |",
        f"| WebSocket sessions that failed | {state.ws_failures} |",
        f"| photo + crop latency p50 / p95 / p99 | {p50 * 1000:.0f} / {p95 * 1000:.0f} / {p99 * 1000:.0f} ms |",
        f"| resident memory after warm-up / at the end / after 10 s idle / peak | {after_warmup.rss_mib:.0f} / "
        f"{at_end.rss_mib:.0f} / {idle_end.rss_mib:.0f} / {peak.rss_mib:.0f} MiB "
        f"(end vs warm-up: {growth:+.1f} %) |",
        f"| threads after warm-up / end / idle | {after_warmup.threads} / {at_end.threads} / {idle_end.threads} |",
        f"| open file descriptors after warm-up / end / idle | {after_warmup.fds} / {at_end.fds} / {idle_end.fds} |",
        f"| processes (service + face detection workers) after warm-up / end / idle | "
        f"{after_warmup.processes} / {at_end.processes} / {idle_end.processes} |",
        f"| detection worker pools replaced (recycled / crashed) | "
        f"{metric_value(metrics, 'fer_prepare_pool_restarts_total', {'reason': 'recycled'}):.0f} / "
        f"{metric_value(metrics, 'fer_prepare_pool_restarts_total', {'reason': 'crashed'}):.0f} |",
        f"| exit status on SIGTERM | {exit_code} |",
        "",
        "<details><summary>resident memory, threads, descriptors over time</summary>",
        "",
        "| s | RSS MiB | threads | fds | processes |",
        "|---|---|---|---|---|",
        *[f"| {t:.0f} | {s.rss_mib:.0f} | {s.threads} | {s.fds} | {s.processes} |" for t, s in state.samples],
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
