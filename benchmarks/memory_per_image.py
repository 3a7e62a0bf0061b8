"""Peak memory rise of the whole service (all its processes) per hostile image class (issue 13).

Starts ``python -m service`` (default settings, one face detection worker), and for each class of
``scripts/make_hostile_corpus.py``'s ``memory_cases``: resets the peak-RSS counter of every process of the service
tree (``echo 5 > /proc/<pid>/clear_refs``), sends the image, then reads each process's peak (``VmHWM``). The rise is
the sum over processes of peak minus the resident size before the request: an upper bound of the tree's peak rise
(the processes' peaks need not coincide). A normal photo is sent right after each, and must get a 200.

    .venv/bin/python benchmarks/memory_per_image.py [--write benchmarks/RELIABILITY.md --label after]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import DEFAULT_MODEL, PHOTO, process_tree, start_service  # noqa: E402
from tests.hostile_client import corpus_module  # noqa: E402

MiB = 1024 * 1024


def _kib(status: str, field: str) -> int:
    match = re.search(rf"{field}:\s*(\d+)", status)
    return int(match.group(1)) if match else 0


def snapshot(pid: int) -> dict[int, int]:
    """Resident KiB of every process of the tree, after resetting each one's peak counter."""
    sizes = {}
    for member in process_tree(pid):
        try:
            Path(f"/proc/{member}/clear_refs").write_text("5")
            sizes[member] = _kib(Path(f"/proc/{member}/status").read_text(), "VmRSS")
        except OSError:
            continue
    return sizes


def peak_rise_mib(pid: int, before: dict[int, int]) -> float:
    rise = 0
    for member in process_tree(pid):
        try:
            peak = _kib(Path(f"/proc/{member}/status").read_text(), "VmHWM")
        except OSError:
            continue
        rise += max(0, peak - before.get(member, 0))  # a process started meanwhile counts whole
    return rise / 1024


def measure(model_dir: Path, side: int) -> list[dict[str, object]]:
    cases = corpus_module().memory_cases(side)
    photo = PHOTO.read_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        service = start_service(model_dir, Path(tmp) / "service.log")
        try:
            with httpx.Client(timeout=300) as client:
                assert client.post(service.url + "/predict", content=photo, headers={"Content-Type": "image/jpeg"})
                for case in cases:
                    before = snapshot(service.pid)
                    started = time.perf_counter()
                    answer = client.post(
                        service.url + "/predict", content=case.data, headers={"Content-Type": case.content_type}
                    )
                    seconds = time.perf_counter() - started
                    rise = peak_rise_mib(service.pid, before)
                    good = client.post(service.url + "/predict", content=photo, headers={"Content-Type": "image/jpeg"})
                    code = answer.json().get("error", {}).get("code") if answer.status_code != 200 else None
                    rows.append(
                        {
                            "case": case.name,
                            "bytes": len(case.data),
                            "status": answer.status_code,
                            "code": code,
                            "seconds": round(seconds, 2),
                            "rise_mib": round(rise),
                            "rgb_mib": round(side * side * 3 / MiB),
                            "then_good": good.status_code,
                        }
                    )
                    print(rows[-1], flush=True)
        finally:
            service.stop()
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| class | file | status | time | peak rise of the service tree | its 8-bit RGB size | good request after |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        status = f"{row['status']}" + (f" `{row['code']}`" if row["code"] else "")
        lines.append(
            f"| {row['case']} | {int(row['bytes']) / 1024:.1f} KiB | {status} | {row['seconds']} s | "  # type: ignore[call-overload]
            f"{row['rise_mib']} MiB | {row['rgb_mib']} MiB | {row['then_good']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--side", type=int, default=6000)
    args = parser.parse_args()
    print(table(measure(args.model_dir, args.side)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
