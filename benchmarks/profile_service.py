"""Where the service process spends its CPU on pre-cropped faces at saturation (issue 14, "The service's own cost"):
py-spy attached to a running service while loadgen's ``crop`` workload drives it; the profile is committed as an
artifact of the benchmark, with a text summary (top functions by self time) beside it.

    .venv/bin/python benchmarks/profile_service.py          # about 1 minute; writes benchmarks/profiles/
    .venv/bin/python benchmarks/profile_service.py --seconds 3 --out-dir /tmp/profiles      # a smoke run

What it does:

1. starts ``python -m service`` on ``--model-dir`` (default models/fer-cnn-48) with loadgen's settings
   (``--max-batch-size 32 --max-pending-images 1100 --max-queue 1100``), so the profile is of the service that
   loadgen's ``crop`` row measures;
2. drives it with loadgen's ``crop`` request (the astronaut's face, pre-cropped, ``POST /predict?detect=false``) from
   ``--clients`` closed-loop keep-alive clients (default 8: the level where loadgen's crop row saturates);
3. a warm-up, then ``--baseline-seconds`` without the profiler (faces/s and CPU ms per face of the service process
   and of its detection workers, as loadgen counts them), then ``--seconds`` with ``py-spy record`` attached to the
   service process (``--rate`` samples/s; ``--native`` frames where py-spy supports them). py-spy pauses the
   process for each sample: the faces/s while it is attached are printed beside the baseline's;
4. writes ``<out-dir>/<name>.speedscope.json`` (open it at https://www.speedscope.app or with ``speedscope``) and
   ``<out-dir>/<name>.txt``: the figures, then the functions with the most self time (the samples in which the
   function was the innermost frame), the most total time (on the stack), and self time by source file, over the
   computing samples of all of the service process's threads. py-spy leaves out most samples of idle threads but
   not all: samples blocked in a lock, queue, poll or sleep (`classify`, reliable with native frames) and those
   waiting for the GIL are counted apart.

``--subprocesses`` also samples the detection workers (on the crop path they decode the JPEG); by default only the
service process is profiled, as the issue's target (CPU per face in the service process) is about it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (
    DEFAULT_MODEL,
    ROOT,
    cpu_seconds,
    cpu_used,
    machine_description,
    start_service,
)
from benchmarks.loadgen import build_workloads, check_answer, closed_loop
from benchmarks.vs_fer import served_model

SERVICE_ARGS = "--max-batch-size 32 --max-pending-images 1100 --max-queue 1100"  # loadgen's


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install -c requirements.lock py-spy")
    return found


def native_supported(pyspy: str) -> bool:
    """Whether this py-spy build offers ``--native`` (Linux x86_64 / Windows builds do)."""
    helped = subprocess.run([pyspy, "record", "--help"], capture_output=True, text=True, check=False)
    return "--native" in helped.stdout


class Profiler:
    """``py-spy record`` attached to ``pid``; `started` waits until it samples (with ``--native`` it first reads the
    symbols of every loaded library, TensorFlow's and OpenVINO's included: seconds), `stop` makes it write."""

    def __init__(self, pyspy: str, pid: int, output: Path, rate: int, native: bool, subprocesses: bool) -> None:
        command = [pyspy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "speedscope"]
        command += ["--output", str(output), "--threads", "--full-filenames"]
        command += ["--native"] * native + ["--subprocesses"] * subprocesses
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.sampling = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            if "Sampling process" in line:
                self.sampling.set()

    def started(self, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if self.sampling.wait(0.2):
                return True
        return False

    def stop(self) -> str:
        """SIGINT: py-spy stops sampling and writes its output; its messages are returned."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=10)
        return "\n".join(self.lines)


def drive(host: str, port: int, request: bytes, clients: int, seconds: float, pid: int) -> dict[str, float]:
    """``clients`` closed-loop clients for ``seconds``: faces/s and CPU ms per face (service, detection workers)."""
    before = cpu_seconds(pid)
    tally, elapsed = asyncio.run(closed_loop(host, port, request, clients, seconds))
    own, workers = cpu_used(before, cpu_seconds(pid), pid)
    faces = max(tally.ok, 1)
    return {
        "faces_per_s": tally.ok / elapsed,
        "service_cpu_ms": 1000 * own / faces,
        "workers_cpu_ms": 1000 * workers / faces,
        "non_200": float(sum(c for s, c in tally.statuses.items() if s != 200) + tally.transport_errors),
    }


# ------------------------------------------------------------------------------------------------------------------
# The summary
# ------------------------------------------------------------------------------------------------------------------


def _where(path: str) -> str:
    """A short name for a source file: project-relative, ``pkg/...`` inside site-packages, ``stdlib/...``."""
    if not path:
        return "?"
    if "site-packages/" in path:
        return path.rsplit("site-packages/", 1)[1]
    if path.startswith(str(ROOT) + "/"):
        return path[len(str(ROOT)) + 1 :]
    match = re.search(r"/lib/python3\.\d+/(.+)$", path)
    return f"stdlib/{match.group(1)}" if match else path


#: Frames in which a sampled thread is blocked, not computing: py-spy's idle detection misses many of these (each
#: of the service's dozen mostly idle threads leaks about a tenth of its samples), so the summary sets them apart.
WAITS = {
    "PyThread_acquire_lock_timed", "pthread_cond_wait", "pthread_cond_timedwait", "sem_wait", "sem_timedwait",
    "epoll_wait", "epoll_pwait", "poll", "select", "ppoll", "pselect", "nanosleep", "clock_nanosleep",
    "Condition.wait", "Event.wait", "Queue.get", "SimpleQueue.get", "_PollLikeSelector.select",
    "EpollSelector.select", "sleep",
}  # fmt: skip
GIL_WAIT = {"take_gil", "drop_gil"}


def classify(stack: list[int], frames: list[dict[str, Any]]) -> str:
    """``"gil"`` (waiting for the GIL), ``"wait"`` (blocked in a lock, queue, poll or sleep) or ``"cpu"``: walk from
    the innermost frame outwards through native frames; the first Python frame ends the walk (a wait inside a
    native loop that calls back into Python, such as uvloop's, is then not mistaken for the callback's work)."""
    for index in reversed(stack):
        frame = frames[index]
        name = frame["name"]
        if name in GIL_WAIT:
            return "gil"
        if name in WAITS:
            return "wait"
        if str(frame.get("file", "")).endswith(".py"):
            return "cpu"
    return "cpu"


def summarise(speedscope: dict[str, Any], top: int) -> list[str]:
    """Text lines: the shares of computing and waiting samples, then over the computing ones: self and total time by
    function, self time by source file, and by thread."""
    frames = speedscope["shared"]["frames"]
    names = [
        f"{f['name']} ({_where(f.get('file', ''))}{':' + str(f['line']) if f.get('line') else ''})" for f in frames
    ]
    files = [_where(f.get("file", "")) for f in frames]
    own: Counter[int] = Counter()
    total: Counter[int] = Counter()
    by_file: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for profile in speedscope["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack:
                continue
            kind = classify(stack, frames)
            kinds[kind] += weight
            if kind != "cpu":
                continue
            threads[profile["name"]] += weight
            own[stack[-1]] += weight
            by_file[files[stack[-1]]] += weight
            for index in set(stack):
                total[index] += weight
    everything, samples = sum(kinds.values()), kinds["cpu"]
    if not samples:
        return ["no computing samples (did py-spy attach?)"]

    def share(value: float) -> str:
        return f"{100 * value / samples:5.1f} %"

    lines = [
        f"Samples of non-idle threads: {100 * kinds['cpu'] / everything:.1f} % computing, "
        f"{100 * kinds['wait'] / everything:.1f} % blocked in a lock, queue, poll or sleep that py-spy did not "
        f"count as idle, {100 * kinds['gil'] / everything:.1f} % waiting for the GIL. The tables are over the "
        "computing samples (100 %).",
        "",
        f"Top {top} functions by self time:",
    ]
    lines += [f"  {share(v)}  {names[i]}" for i, v in own.most_common(top)]
    lines += ["", f"Top {top} functions by total time (on the stack):"]
    lines += [f"  {share(v)}  {names[i]}" for i, v in total.most_common(top)]
    lines += ["", f"Self time by source file (top {top}):"]
    lines += [f"  {share(v)}  {name}" for name, v in by_file.most_common(top)]
    lines += ["", "Computing samples by thread:"]
    lines += [f"  {share(v)}  {name}" for name, v in threads.most_common()]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds profiled under load (default 20)")
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="seconds measured without py-spy")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (default 8)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--no-native", dest="native", action="store_false", help="Python frames only")
    parser.add_argument("--subprocesses", action="store_true", help="also sample the detection workers")
    parser.add_argument("--service-args", default=SERVICE_ARGS, help=f"flags for the service (default: {SERVICE_ARGS})")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "profiles")
    parser.add_argument("--name", default="service-crop", help="file name stem of the outputs")
    parser.add_argument("--top", type=int, default=25, help="functions listed in the summary")
    args = parser.parse_args(argv)

    pyspy = py_spy()
    native = args.native and native_supported(pyspy)
    load_before = os.getloadavg()
    if load_before[0] >= 0.5:
        print(f"warning: load average {load_before[0]:.2f}: the machine is busy", file=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    profile_path = args.out_dir / f"{args.name}.speedscope.json"
    service = start_service(
        args.model_dir, ROOT / "test-artifacts" / "benchmarks" / "profile-service.log", *args.service_args.split()
    )
    host, port = "127.0.0.1", service.port
    try:
        served = served_model(service.url, args.model_dir)
        crop = next(w for w in build_workloads(f"{host}:{port}") if w.name == "crop")
        check_answer(host, port, crop)
        print(f"warm-up ({args.clients} clients) ...", flush=True)
        drive(host, port, crop.request, args.clients, min(3.0, args.baseline_seconds), service.pid)
        print(f"baseline, {args.baseline_seconds:g} s without the profiler ...", flush=True)
        baseline = drive(host, port, crop.request, args.clients, args.baseline_seconds, service.pid)
        print(f"  {baseline['faces_per_s']:.1f} faces/s", flush=True)
        print(f"profiling {args.seconds:g} s (py-spy, {args.rate}/s{', native' if native else ''}) ...", flush=True)
        profiler = Profiler(pyspy, service.pid, profile_path, args.rate, native, args.subprocesses)
        if not profiler.started():
            raise SystemExit(f"py-spy did not start sampling: {profiler.stop()}")
        profiled = drive(host, port, crop.request, args.clients, args.seconds, service.pid)
        messages = profiler.stop()
        print(messages, flush=True)
        print(f"  {profiled['faces_per_s']:.1f} faces/s while profiled", flush=True)
    finally:
        service.stop()
    load_after = os.getloadavg()
    if not profile_path.exists():
        raise SystemExit(f"py-spy wrote no profile: {messages}")

    lines = summarise(json.loads(profile_path.read_text()), args.top)
    idle = load_before[0] < 0.5
    command = " ".join(sys.argv[1:])
    header = [
        "Profile of the service process: loadgen's `crop` workload at saturation (benchmarks/profile_service.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
        f"`.venv/bin/python benchmarks/profile_service.py{' ' + command if command else ''}`.",
        f"Machine: {machine_description()}.",
        f"Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}; after: "
        f"{' / '.join(f'{v:.2f}' for v in load_after)}"
        + (" (idle before the run)." if idle else " -- the machine was NOT idle: the figures are not comparable."),
        f"Model: {served['model']}, runtime {served['runtime']} {served['precision']}; service flags "
        f"`{args.service_args}`.",
        f"Load: {crop.description}, {args.clients} closed-loop clients over loopback (clients share the machine).",
        "",
        f"Without the profiler ({args.baseline_seconds:g} s): {baseline['faces_per_s']:.1f} faces/s; CPU ms per "
        f"face: service process {baseline['service_cpu_ms']:.2f}, detection workers {baseline['workers_cpu_ms']:.2f};"
        f" non-200: {baseline['non_200']:.0f}.",
        f"With py-spy attached ({args.seconds:g} s, {args.rate} samples/s, "
        f"{'native frames' if native else 'Python frames only'}"
        f"{', detection workers too' if args.subprocesses else ', service process only'}): "
        f"{profiled['faces_per_s']:.1f} faces/s; CPU ms per face: service process {profiled['service_cpu_ms']:.2f} "
        f"(py-spy's pauses included), detection workers {profiled['workers_cpu_ms']:.2f}.",
        f"Profile: {profile_path.name} (speedscope JSON, unfiltered: https://www.speedscope.app).",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    summary_path = args.out_dir / f"{args.name}.txt"
    summary_path.write_text(text)
    print(text)
    print(f"wrote {profile_path} ({profile_path.stat().st_size // 1024} KiB) and {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
