"""Hot reload under load (issue 17): closed-loop clients send real photos to ``python -m service`` while a new model
version is dropped into the name folder and the old one removed. Records every answer's status and version, and the
RSS of the service's process tree before, during (both versions loaded) and after the swap.

    .venv/bin/python -m benchmarks.hot_reload [--clients 8] [--model models/fer-cnn-48/4]

Every phase is gated on ``GET /v1/models`` (no sleeps decide anything). Prints a JSON summary; the figures go to
benchmarks/RELIABILITY.md by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, machine_description, proc_stats, start_service
from tests.photos import one_face_jpeg


@dataclass
class Answer:
    started: float
    status: int
    version: str | None


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for(url: str, condition: Any, timeout_s: float = 600) -> tuple[float, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = get_json(url + "/v1/models")
        if condition(body):
            return time.monotonic(), body
        time.sleep(0.1)
    raise RuntimeError("timed out waiting on /v1/models")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "fer-cnn-48" / "4")
    parser.add_argument("--requests-per-phase", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hot-reload-"))
    root = work / "fer"
    shutil.copytree(args.model, root / "1", ignore=shutil.ignore_patterns("report", "openvino"))
    service = start_service(root, work / "service.log", "--model-poll-interval-s", "0.5")
    url = service.url
    image = one_face_jpeg()
    answers: list[Answer] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            request = urllib.request.Request(
                url + "/predict", data=image, headers={"Content-Type": "image/jpeg"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    answers.append(Answer(started, response.status, json.loads(response.read())["model"]["version"]))
            except urllib.error.HTTPError as exc:
                answers.append(Answer(started, exc.code, None))
            except OSError:
                answers.append(Answer(started, 0, None))

    def wait_answers(count: int) -> None:
        target = len(answers) + count
        while len(answers) < target:
            time.sleep(0.05)

    memory: dict[str, float] = {}
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    try:
        for thread in threads:
            thread.start()
        wait_answers(args.requests_per_phase)
        memory["before (version 1)"] = proc_stats(service.process.pid).rss_mib
        staging = root / ".incoming-2"
        shutil.copytree(args.model, staging, ignore=shutil.ignore_patterns("report", "openvino"))
        dropped = time.monotonic()
        staging.rename(root / "2")
        switched, _ = wait_for(url, lambda b: b["default_version"] == "2")
        memory["during (versions 1 and 2 loaded)"] = proc_stats(service.process.pid).rss_mib
        wait_answers(args.requests_per_phase)
        shutil.rmtree(root / "1")
        removed = time.monotonic()
        unloaded, _ = wait_for(url, lambda b: [v["version"] for v in b["versions"]] == ["2"])
        wait_answers(args.requests_per_phase)
        memory["after (version 1 unloaded)"] = proc_stats(service.process.pid).rss_mib
        stop.set()
        for thread in threads:
            thread.join(120)
        metrics = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    finally:
        stop.set()
        service.stop()
    statuses = Counter(a.status for a in answers)
    late_v1 = sum(1 for a in answers if a.started > switched and a.version != "2")
    summary = {
        "machine": machine_description(),
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "clients": args.clients,
        "requests": len(answers),
        "statuses": {str(k): v for k, v in statuses.items()},
        "non_200": sum(v for k, v in statuses.items() if k != 200),
        "versions": dict(Counter(a.version for a in answers)),
        "started_after_switch_answered_by_v1": late_v1,
        "switch_seconds": round(switched - dropped, 2),
        "unload_seconds": round(unloaded - removed, 2),
        "rss_mib": {k: round(v, 1) for k, v in memory.items()},
        "loads": [line for line in metrics.splitlines() if line.startswith("fer_model_loads_total")],
    }
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
