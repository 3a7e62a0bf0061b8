"""Hot reload under load (issue 17): closed-loop clients through model version swaps, memory after each one.

Closed-loop clients send real photos to ``python -m service`` while new model versions are dropped into the name
folder and the old ones removed, ``--swaps`` times (version 1 -> 2 -> 3 ...).
Records every answer's status and version, the RSS of the service's process tree before the first swap, while two
versions are loaded and after each old one unloaded (the memory must return to one model's worth every time, not
ratchet up per swap), and what each unload's memory reclaim did (the service's log).

    .venv/bin/python -m benchmarks.hot_reload [--clients 8] [--swaps 3] [--model models/fer-cnn-48/5]

Every phase is gated on ``GET /v1/models`` (no sleeps decide anything). Prints a JSON summary; the figures go to
benchmarks/RELIABILITY.md by hand.
"""

from __future__ import annotations

import argparse
import contextlib
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
from service.model import resolve_model_dir
from tests.photos import one_face_jpeg

IGNORED = shutil.ignore_patterns("report", "openvino")


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
    shipped = resolve_model_dir(ROOT / "models" / "fer-cnn-48")
    parser.add_argument("--model", type=Path, default=shipped, help="default: the shipped version")
    parser.add_argument("--swaps", type=int, default=3, help="versions dropped in (and their predecessors removed)")
    parser.add_argument("--requests-per-phase", type=int, default=200)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hot-reload-"))
    root = work / "fer"
    shutil.copytree(args.model, root / "1", ignore=IGNORED)
    log_path = work / "service.log"
    # info: the "model version unloaded" lines carry what each unload's memory reclaim did
    service = start_service(root, log_path, "--model-poll-interval-s", "0.5", "--log-level", "info")
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
    swaps: list[dict[str, Any]] = []
    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    try:
        for thread in threads:
            thread.start()
        wait_answers(args.requests_per_phase)
        memory["before (version 1)"] = proc_stats(service.process.pid).rss_mib
        for new in range(2, args.swaps + 2):
            old, version = str(new - 1), str(new)
            staging = root / f".incoming-{version}"
            shutil.copytree(args.model, staging, ignore=IGNORED)
            dropped = time.monotonic()
            staging.rename(root / version)
            switched, _ = wait_for(url, lambda b, v=version: b["default_version"] == v)
            memory[f"during (versions {old} and {version} loaded)"] = proc_stats(service.process.pid).rss_mib
            wait_answers(args.requests_per_phase)
            shutil.rmtree(root / old)
            removed = time.monotonic()
            unloaded, _ = wait_for(
                url,
                lambda b, v=version: [e["version"] for e in b["versions"]] == [v],
            )
            wait_answers(args.requests_per_phase)
            memory[f"after (version {old} unloaded)"] = proc_stats(service.process.pid).rss_mib
            late = sum(1 for a in answers if a.started > switched and a.version not in (version, None))
            swaps.append(
                {
                    "version": version,
                    "switch_seconds": round(switched - dropped, 2),
                    "unload_seconds": round(unloaded - removed, 2),
                    "started_after_switch_answered_by_an_older_version": late,
                }
            )
        stop.set()
        for thread in threads:
            thread.join(120)
        metrics = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    finally:
        stop.set()
        service.stop()
    statuses = Counter(a.status for a in answers)
    reclaims = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "model version unloaded" in line:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                reclaims.append({"version": record.get("version"), **(record.get("reclaimed") or {})})
    summary = {
        "machine": machine_description(),
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "clients": args.clients,
        "requests": len(answers),
        "statuses": {str(k): v for k, v in statuses.items()},
        "non_200": sum(v for k, v in statuses.items() if k != 200),
        "versions": dict(Counter(a.version for a in answers)),
        "swaps": swaps,
        "rss_mib": {k: round(v, 1) for k, v in memory.items()},
        "reclaims": reclaims,
        "loads": [line for line in metrics.splitlines() if line.startswith("fer_model_loads_total")],
    }
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
