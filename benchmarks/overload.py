"""Overload test (issue 7, item 3): offered load at 4x the saturation rate, loopback only, bounded in count and time.

    python -m benchmarks.overload                    # default model, writes the "overload" section of RELIABILITY.md
    python -m benchmarks.overload --compare-unbounded   # also the same load without the admission bound

Steps, all against one ``python -m service`` process with default settings:

1. baseline: one client, requests back to back (the latency of an idle service);
2. saturation: closed loop with ``--sat-clients`` clients; the answered rate is the saturation rate R;
3. overload: open loop — requests *arrive* at 4 R per second for ``--seconds`` whatever the service does (each on
   an idle keep-alive connection, or a new one), so at most ``4 R x seconds`` requests;
4. recovery: as soon as the last arrival is answered, one client again: how soon latency is back at the baseline.

What must hold: the service sheds the excess with 503 + Retry-After at once (not after queueing), the latency of
the admitted requests stays bounded (p99 reported), there is no other 5xx, and the queue is empty and latency
normal right after the load stops. ``--compare-unbounded`` repeats step 3 with ``--max-pending-images`` set so high
that only the batcher's crop queue bounds admission (the service before this bound existed), for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
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
    Reply,
    fetch_metrics,
    http_request,
    machine_description,
    metric_value,
    model_description,
    ms,
    percentiles,
    start_service,
    write_section,
)
from benchmarks.loadgen import closed_loop

RELIABILITY = ROOT / "benchmarks" / "RELIABILITY.md"


@dataclass
class Sample:
    sent_at: float  # seconds since the overload started
    status: int  # 0: transport error
    seconds: float
    retry_after: bool


@dataclass
class OverloadRun:
    label: str
    rate: float
    offered: int
    samples: list[Sample] = field(default_factory=list)
    skipped: int = 0  # arrivals the client could not send (connection cap): should be 0
    duration: float = 0.0
    drained_after: float = 0.0

    def of(self, status: int) -> list[Sample]:
        return [s for s in self.samples if s.status == status]


async def open_loop(
    host: str, port: int, request: bytes, rate: float, seconds: float, max_connections: int, label: str
) -> OverloadRun:
    """Requests arriving every ``1/rate`` s for ``seconds``, each on an idle connection or a new one."""
    run = OverloadRun(label, rate, int(rate * seconds))
    idle: list[Connection] = []
    open_count = 0
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()

    async def one(sent_at: float) -> None:
        nonlocal open_count
        connection = idle.pop() if idle else None
        if connection is None:
            open_count += 1
            connection = Connection(host, port)
        try:
            reply: Reply = await connection.send(request)
        except (OSError, asyncio.IncompleteReadError):
            run.samples.append(Sample(sent_at, 0, time.perf_counter() - started - sent_at, False))
            open_count -= 1
            return
        run.samples.append(Sample(sent_at, reply.status, reply.seconds, "retry-after" in reply.headers))
        if connection.writer is not None:
            idle.append(connection)
        else:
            open_count -= 1

    for i in range(run.offered):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if not idle and open_count >= max_connections:
            run.skipped += 1
            continue
        tasks.append(asyncio.create_task(one(due - started)))
    run.duration = time.perf_counter() - started
    await asyncio.gather(*tasks)
    run.drained_after = time.perf_counter() - started - run.duration
    for connection in idle:
        await connection.close()
    return run


async def sequential(host: str, port: int, request: bytes, seconds: float) -> list[tuple[float, int, float]]:
    """(time since start, status, latency) of back-to-back requests from one client."""
    out = []
    connection = Connection(host, port)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            at = time.perf_counter() - started
            reply = await connection.send(request)
            out.append((at, reply.status, reply.seconds))
    finally:
        await connection.close()
    return out


def summarise(run: OverloadRun) -> dict[str, float]:
    ok, shed = run.of(200), run.of(503)
    other = [s for s in run.samples if s.status not in (200, 503)]
    p50, p95, p99 = percentiles(s.seconds for s in ok)
    shed_p50, _, shed_p99 = percentiles(s.seconds for s in shed)
    return {
        "offered": run.offered,
        "answered": len(run.samples),
        "ok": len(ok),
        "shed": len(shed),
        "other": len(other),
        "server_errors": sum(1 for s in other if s.status >= 500),
        "transport_errors": sum(1 for s in other if s.status == 0),
        "skipped": run.skipped,
        "retry_after": sum(1 for s in shed if s.retry_after),
        "ok_rate": len(ok) / (run.duration + run.drained_after),  # from the first arrival to the last answer
        "p50": p50,
        "p95": p95,
        "p99": p99,
        "max": max((s.seconds for s in ok), default=float("nan")),
        "shed_p50": shed_p50,
        "shed_p99": shed_p99,
        "drained_after": run.drained_after,
    }


def timeline(run: OverloadRun) -> list[str]:
    rows = ["| second | arrived | 200 | 503 | p99 of the 200s (ms) |", "|---|---|---|---|---|"]
    seconds = int(max((s.sent_at for s in run.samples), default=0)) + 1
    for second in range(seconds):
        mine = [s for s in run.samples if second <= s.sent_at < second + 1]
        ok = [s.seconds for s in mine if s.status == 200]
        rows.append(
            f"| {second} | {len(mine)} | {len(ok)} | {sum(1 for s in mine if s.status == 503)} | "
            f"{ms(percentiles(ok)[2])} |"
        )
    return rows


def run_overload(
    model_dir: Path, args: argparse.Namespace, extra: list[str], label: str, rate: float | None = None
) -> dict:
    service = start_service(model_dir, ROOT / "test-artifacts" / "benchmarks" / f"overload-{label}.log", *extra)
    try:
        host, port = "127.0.0.1", service.port
        request = http_request("POST", "/predict", f"{host}:{port}", PHOTO.read_bytes(), "image/jpeg")
        asyncio.run(sequential(host, port, request, 2.0))  # warm-up
        baseline = asyncio.run(sequential(host, port, request, args.baseline_seconds))
        base_p50 = percentiles(lat for _, status, lat in baseline if status == 200)[0]
        if rate is None:
            tally, elapsed = asyncio.run(closed_loop(host, port, request, args.sat_clients, args.sat_seconds))
            saturation = tally.ok / elapsed
            rate = args.factor * saturation
        else:
            saturation = rate / args.factor
        print(
            f"[{label}] baseline p50 {ms(base_p50)} ms, saturation {saturation:.1f} req/s, offering "
            f"{rate:.1f} req/s for {args.seconds:g} s",
            flush=True,
        )
        run = asyncio.run(open_loop(host, port, request, rate, args.seconds, args.max_connections, label))
        queue_after = metric_value(fetch_metrics(service.url), "fer_queue_depth")
        recovery = asyncio.run(sequential(host, port, request, args.recovery_seconds))
        summary = summarise(run)
        print(f"[{label}] {summary}", flush=True)
        return {
            "label": label,
            "baseline_p50": base_p50,
            "saturation": saturation,
            "rate": rate,
            "summary": summary,
            "timeline": timeline(run),
            "recovery": recovery,
            "queue_after": queue_after,
            "rss_note": "",
        }
    finally:
        service.stop()


def render(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "## Overload at 4x the saturation rate (benchmarks/overload.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python -m benchmarks.overload "
        f"--seconds {args.seconds:g}{' --compare-unbounded' if args.compare_unbounded else ''}`.",
        "",
        f"- Machine: {machine_description()}.",
        f"- Model: {model_description(args.model_dir)}; the request is a 512x512 JPEG photo with one face "
        "(docs/examples/astronaut.jpg) through the whole pipeline; client and service share the machine.",
        "",
    ]
    for result in results:
        s = result["summary"]
        recovery = result["recovery"]
        rec_ok = [lat for _, status, lat in recovery if status == 200]
        first = recovery[0] if recovery else (0.0, 0, float("nan"))
        normal_at = next(
            (at for at, status, lat in recovery if status == 200 and lat <= 1.5 * result["baseline_p50"]), float("nan")
        )
        lines += [
            f"### {result['label']}",
            "",
            f"Saturation {result['saturation']:.1f} requests/s (closed loop, {args.sat_clients} clients); "
            f"offered {result['rate']:.1f} requests/s for {args.seconds:g} s = {s['offered']} requests.",
            "",
            "| | value |",
            "|---|---|",
            f"| answered 200 | {s['ok']} ({s['ok_rate']:.1f}/s from the first arrival to the last answer) |",
            f"| shed with 503 `overloaded` | {s['shed']} (with Retry-After: {s['retry_after']}) |",
            f"| other statuses / other 5xx / transport errors | {s['other']} / {s['server_errors']} / "
            f"{s['transport_errors']} |",
            f"| arrivals the client could not send | {s['skipped']} |",
            f"| latency of admitted requests p50 / p95 / p99 / max | {ms(s['p50'])} / {ms(s['p95'])} / "
            f"{ms(s['p99'])} / {ms(s['max'])} ms |",
            f"| latency of a 503 p50 / p99 | {ms(s['shed_p50'])} / {ms(s['shed_p99'])} ms |",
            f"| idle-service latency p50 (baseline) | {ms(result['baseline_p50'])} ms |",
            f"| last answer after the last arrival | {s['drained_after']:.2f} s |",
            f"| queue depth right after | {result['queue_after']:.0f} |",
            f"| recovery: first request after the load | status {first[1]}, {ms(first[2])} ms |",
            f"| recovery: first latency within 1.5x baseline | {normal_at:.2f} s after the load |",
            f"| recovery: p50 over the next {args.recovery_seconds:g} s | {ms(percentiles(rec_ok)[0])} ms "
            f"({len(rec_ok)} requests, all 200: {len(rec_ok) == len(recovery)}) |",
            "",
            "<details><summary>per second</summary>",
            "",
            *result["timeline"],
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the overload")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load / saturation rate")
    parser.add_argument("--sat-clients", type=int, default=16)
    parser.add_argument("--sat-seconds", type=float, default=8.0)
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--recovery-seconds", type=float, default=5.0)
    parser.add_argument("--max-connections", type=int, default=2000)
    parser.add_argument("--compare-unbounded", action="store_true")
    parser.add_argument("--results", type=Path, default=RELIABILITY)
    args = parser.parse_args(argv)
    results = [run_overload(args.model_dir, args, [], "default settings (max_pending_images 32)")]
    if args.compare_unbounded:
        results.append(
            run_overload(
                args.model_dir,
                args,
                ["--max-pending-images", "1000000"],
                "without the admission bound (max_pending_images 1000000)",
                rate=results[0]["rate"],
            )
        )
    write_section(args.results, "overload", render(results, args), "Reliability results")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
