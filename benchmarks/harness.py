"""What the load, overload and soak benchmarks share: a service process, a lean HTTP client, statistics, the
machine description and writing a results section into a markdown file.

The client is a minimal HTTP/1.1 implementation over asyncio streams with keep-alive connections and pre-built
request bytes: the load generator runs on the same machine as the service (loopback only), so it must spend as
little CPU as possible per request; httpx costs several times more per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "fer-cnn-48"
PHOTO = ROOT / "docs" / "examples" / "astronaut.jpg"


# --- the machine ---------------------------------------------------------------------------------------------------


def machine_description() -> str:
    """One paragraph: CPU model and cores, memory, OS, Python and key library versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        info = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", info)
        cpu = match.group(1).strip() if match else cpu
        flags = re.search(r"flags\s*:\s*(.+)", info)
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flags and f in flags.group(1).split()]
    except OSError:
        isa = []
    try:
        mem_kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore
        memory = f"{mem_kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, AttributeError):
        memory = "unknown RAM"
    versions = []
    for module in ("tensorflow", "uvicorn", "fastapi", "cv2", "numpy"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except Exception:  # noqa: BLE001 - a missing module is just not listed
            pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs ({', '.join(isa) or 'no AVX-512'}), {memory}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"{', '.join(versions)}"
    )


def model_description(model_dir: Path) -> str:
    from service.model import resolve_model_dir

    version_dir = resolve_model_dir(model_dir)
    meta = json.loads((version_dir / "metadata.json").read_text())
    size = meta["input"]
    where = version_dir.relative_to(ROOT) if version_dir.is_relative_to(ROOT) else version_dir
    return (
        f"{meta['name']} version {meta['version']} ({where}; "
        f"input {size['height']}x{size['width']}x{size['channels']} {size['color_mode']}, "
        f"{len(meta['labels'])} labels)"
    )


# --- the service process -----------------------------------------------------------------------------------------


@dataclass
class Service:
    """A ``python -m service`` process on a loopback port."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(model_dir: Path, log_path: Path, *args: str, ready_timeout: float = 300) -> Service:
    """Start the service with ``args`` (extra flags) and wait until /readyz answers 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FER_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    service = Service(process, f"http://127.0.0.1:{port}", port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(service.url + "/readyz", timeout=5) as response:
                if response.status == 200:
                    return service
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    service.stop()
    raise RuntimeError("the service did not become ready")


@dataclass
class ProcStats:
    rss_mib: float
    threads: int
    fds: int
    processes: int = 1


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the service and its face detection workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name field may contain spaces: split after ")"
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def proc_stats(pid: int) -> ProcStats:
    """Resident memory, threads and open file descriptors of ``pid`` and its descendants together (Linux /proc):
    memory moved into worker processes still counts."""
    rss_kb = threads = fds = processes = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
            member_fds = len(os.listdir(f"/proc/{member}/fd"))
        except OSError:  # exited meanwhile (a retired worker)
            continue
        rss = re.search(r"VmRSS:\s*(\d+)", status)
        if rss is None:  # a zombie: a retired worker that has exited and is not reaped yet
            continue
        rss_kb += int(rss.group(1))
        threads += int(re.search(r"Threads:\s*(\d+)", status).group(1))  # type: ignore[union-attr]
        fds += member_fds
        processes += 1
    return ProcStats(rss_kb / 1024, threads, fds, processes)


def cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and each of its descendants (Linux /proc), by process id."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        seconds[member] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return seconds


def cpu_used(before: dict[int, float], after: dict[int, float], pid: int) -> tuple[float, float]:
    """CPU seconds spent between two `cpu_seconds` readings by ``pid`` itself and by its descendants (a process
    started meanwhile counts from zero; one that exited meanwhile is missing from ``after`` and is not counted)."""
    own = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(value - before.get(member, 0.0) for member, value in after.items() if member != pid)
    return own, others


def fetch_metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        return response.read().decode()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


# --- requests ----------------------------------------------------------------------------------------------------


def http_request(method: str, path: str, host: str, body: bytes = b"", content_type: str | None = None) -> bytes:
    """A complete HTTP/1.1 request, ready to write to a keep-alive connection."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def multipart(parts: Sequence[tuple[str, str, bytes]], boundary: str = "bench-boundary") -> tuple[bytes, str]:
    """``(body, content type)`` of a multipart/form-data body from ``(field, filename, payload)`` parts."""
    chunks = []
    for name, filename, payload in parts:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + payload
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


class Connection:
    """One keep-alive HTTP/1.1 connection; ``send`` writes a pre-built request and reads its response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def send(self, request: bytes) -> Reply:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        started = time.perf_counter()
        try:
            self.writer.write(request)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError):
            await self.close()
            raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Reply(status, headers, body, time.perf_counter() - started)


# --- statistics and reports ----------------------------------------------------------------------------------------


def percentiles(values: Iterable[float], qs: Sequence[float] = (50, 95, 99)) -> list[float]:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        return [float("nan")] * len(qs)
    return [float(np.percentile(data, q)) for q in qs]


def ms(seconds: float) -> str:
    return "–" if seconds != seconds else f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def write_section(path: Path, key: str, markdown: str, title: str) -> None:
    """Replace (or append) the block between ``<!-- key:start -->`` and ``<!-- key:end -->`` in ``path``, so that
    each script owns its own section and reruns do not duplicate it."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else f"# {title}\n\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def write_results(markdown_path: Path, lines: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Write a whole-file results table (``lines``) to ``markdown_path`` and its rows, with
    :func:`machine_description`, to the ``.json`` file beside it (what a later comparison reads)."""
    markdown_path = Path(markdown_path)
    markdown_path.write_text("\n".join(lines) + "\n")
    record = {"machine": machine_description(), "rows": rows}
    markdown_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")


@dataclass
class Tally:
    """Outcomes of a set of requests."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0

    def add(self, reply: Reply) -> None:
        self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        if reply.status == 200:
            self.latencies.append(reply.seconds)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500 and status != 503)
