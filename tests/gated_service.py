"""``python -m tests.gated_service [flags]``: ``python -m service`` (the same ``main``: flags, ``FER_*`` variables,
uvicorn, signals, logs) with a gate in front of the model, for tests that need a real service process whose model
provably has not finished loading, or whose requests are provably still in flight.

Every model call — the warm-up during loading included — waits while the gate is closed; the gate starts closed.
The test drives it through the process's stdin, one command a line, ``open`` or ``close``, each acknowledged on
stdout (``opened`` / ``closed``) once it applies. Every model call is reported on stdout when it reaches the gate
(``entered <crops>``) and when it passes it (``passed <crops>``). ``GateControl`` is the test's side.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from typing import IO

import numpy as np

#: Bounds a hang only.
TIMEOUT_S = 180.0


def _install_gate() -> None:
    from service import model

    gate = threading.Event()
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "open":
                gate.set()
                say("opened")
            elif command == "close":
                gate.clear()
                say("closed")

    threading.Thread(target=commands, daemon=True, name="gate-commands").start()
    predict = model.LoadedModel.predict  # what the warm-up and the batcher call, whatever the runtime

    def gated_predict(self: model.LoadedModel, crops: np.ndarray) -> np.ndarray:
        say(f"entered {len(crops)}")
        if not gate.wait(TIMEOUT_S):
            raise RuntimeError("the test never opened the model gate")
        say(f"passed {len(crops)}")
        return predict(self, crops)

    model.LoadedModel.predict = gated_predict  # type: ignore[method-assign]


class GateControl:
    """The test's side of a ``tests.gated_service`` process started with ``stdin=PIPE, stdout=PIPE, text=True``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._stdin: IO[str] = proc.stdin
        self._acks: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self.calls: list[int] = []  #: crops of every model call that reached the gate, in order
        self._held = 0
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True, name="gate-reports").start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            word, _, number = line.strip().partition(" ")
            with self._lock:
                if word == "entered":
                    self.calls.append(int(number))
                    self._held += int(number)
                elif word == "passed":
                    self._held -= int(number)
            if word in ("opened", "closed"):
                self._acks.put(word)

    @property
    def held(self) -> int:
        """Crops in model calls waiting at the gate (as reported so far)."""
        with self._lock:
            return self._held

    def call_count(self) -> int:
        with self._lock:
            return len(self.calls)

    def _command(self, command: str, ack: str) -> None:
        self._stdin.write(command + "\n")
        self._stdin.flush()
        assert self._acks.get(timeout=TIMEOUT_S) == ack

    def open(self) -> None:
        self._command("open", "opened")

    def close(self) -> None:
        self._command("close", "closed")

    def wait_held(self, crops: int) -> None:
        """Until model calls holding ``crops`` crops wait at the gate (only a hang times out)."""
        deadline = time.monotonic() + TIMEOUT_S
        while self.held < crops:
            assert time.monotonic() < deadline, f"{self.held} crops at the gate, expected {crops}"
            time.sleep(0.02)


def command(*flags: str) -> list[str]:
    """The command line that starts a gated service."""
    return [sys.executable, "-m", "tests.gated_service", *flags]


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _install_gate()
    from service.__main__ import main

    sys.exit(main())
