"""Fault injection and observation inside the real detection worker processes (``service.prepare``).

``prepare_with_probe`` wraps the worker's real per-image function (``PreparePool.task``): an image may carry a
trailer, ``probe(image, ...)``, that tells the worker, before it decodes the image as usual, to

- ``log``: append a line ``<name> <pid> warm|cold`` to a file (``warm``: the worker's detector was already built,
  by the pool's warm-up, when its first image arrived),
- ``hold``: create ``<hold>.entered`` and wait until the file ``<hold>`` exists (a gate across processes),
- ``crash``: die with SIGKILL, as a native-code fault in the detector would.

The trailer is cut off before the real function sees the image. Module-level functions: pickled by name, so the
spawned workers import this module.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from service import prepare

MARK = b"\n#worker-probe "
#: Bounds a hang only: a gate nobody opens fails the image after this long.
HOLD_TIMEOUT_S = 120.0


def probe(
    image: bytes, *, name: str = "", log: Path | None = None, hold: Path | None = None, crash: bool = False
) -> bytes:
    """``image`` with a trailer of instructions for `prepare_with_probe`."""
    command = {"name": name, "log": str(log) if log else None, "hold": str(hold) if hold else None, "crash": crash}
    return image + MARK + json.dumps(command).encode()


def prepare_with_probe(data: bytes, detect: bool, max_faces: int) -> prepare.Prepared:
    image, mark, trailer = data.rpartition(MARK)
    if mark:
        command = json.loads(trailer)
        if command["log"]:
            warm = "warm" if prepare._worker is not None else "cold"
            with open(command["log"], "a") as out:
                out.write(f"{command['name']} {os.getpid()} {warm}\n")
        if command["hold"]:
            gate = Path(command["hold"])
            Path(str(gate) + ".entered").touch()
            deadline = time.monotonic() + HOLD_TIMEOUT_S
            while not gate.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the test never opened the worker gate")
                time.sleep(0.01)
        if command["crash"]:
            os.kill(os.getpid(), signal.SIGKILL)
        data = image
    return prepare._prepare_in_worker(data, detect, max_faces)


def logged(log: Path) -> list[tuple[str, int, str]]:
    """The lines `prepare_with_probe` appended to ``log``: (name, pid, warm|cold)."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        name, pid, warm = line.split()
        rows.append((name, int(pid), warm))
    return rows
