"""Model versions side by side, like TF Serving: a version policy, per-version state, hot reload and draining.

``ModelRegistry`` watches a model *name* folder (``models/<name>/<version>/``). ``poll()`` scans it, picks the
versions the ``VersionPolicy`` wants, loads and warms up the new ones beside the serving ones (``load``: blocking,
run in a thread), makes each one servable (``build``), switches the default version atomically to the highest
ready one, and unloads versions that are gone or no longer wanted once their in-flight requests finished
(``lease`` counts them), then hands their memory back (``reclaim``: the app passes ``reclaim_memory``). A version
that fails to load is kept as ``failed`` with the reason, never takes traffic, and is retried when its folder
changes (its fingerprint: names, sizes and mtimes of its files).

A folder counts as a version when its name is numeric and it holds ``metadata.json`` (after start-up); a
half-written one fails to load and is retried on a later poll once its files changed. Copy a new version under a
temporary name and rename it into place to avoid even that (docs/deployment.md).

When the configured folder is itself a version folder, the registry serves that one version and never reloads
(its version is the metadata's ``version``, as before versions were supported).

No web imports here (docs/architecture.md): the app builds ``Serving`` objects and maps the errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from service.errors import ModelLoadError, NotReadyError, VersionNotFoundError, VersionNotReadyError
from service.model import METADATA_FILE, LoadedModel, read_metadata, resolve_model_dir
from service.pipeline import Predictor

log = logging.getLogger(__name__)


class VersionState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True)
class VersionPolicy:
    """Which numeric versions to serve: ``latest`` (the highest), ``latest:N`` (the N highest) or
    ``specific:V1,V2`` (exactly those that exist)."""

    count: int = 1
    specific: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, arg = text.strip().partition(":")
        if kind == "latest":
            if not arg:
                return cls(count=1)
            if arg.isdigit() and int(arg) >= 1:
                return cls(count=int(arg))
            raise ValueError(f"'latest:N' needs a whole number N >= 1, not {arg!r}")
        if kind == "specific":
            parts = [part.strip() for part in arg.split(",") if part.strip()]
            if parts and all(part.isdigit() for part in parts):
                return cls(count=0, specific=tuple(sorted({int(part) for part in parts})))
            raise ValueError(f"'specific:V1,V2' needs numeric versions, not {arg!r}")
        raise ValueError(f"unknown version policy {text!r}: use latest, latest:N or specific:V1,V2")

    def select(self, available: Iterable[int]) -> set[int]:
        versions = set(available)
        if self.specific:
            return versions & set(self.specific)
        return set(sorted(versions, reverse=True)[: self.count])

    def __str__(self) -> str:
        if self.specific:
            return "specific:" + ",".join(str(v) for v in self.specific)
        return "latest" if self.count == 1 else f"latest:{self.count}"


class Serving(Protocol):
    """What the app builds around a loaded version: its predictor (own batchers), and how to stop it."""

    @property
    def predictor(self) -> Predictor: ...

    async def close(self) -> None: ...


class RegistryObserver(Protocol):
    """Receives the registry's events (``service.metrics.Metrics`` implements it)."""

    def version_loaded(self, name: str, version: str, seconds: float) -> None: ...

    def version_load_failed(self, version: str) -> None: ...

    def version_unloaded(self, version: str) -> None: ...

    def default_version(self, name: str, version: str) -> None: ...


_frozen = False


def freeze_long_lived_objects(*modules: str) -> None:
    """Import ``modules`` (the runtime's libraries; one that is missing is skipped: loading reports it), then move
    every object alive now into the cycle collector's permanent generation (``gc.freeze``), once per process. Call
    it before the first version loads: TensorFlow alone is ~380,000 objects that live as long as the process, and a
    full collection (``reclaim_memory``, after each unload) would walk them all, holding the GIL for seconds on a
    busy machine (4 s measured; 0.7 s with them frozen). The versions loaded afterwards stay collectable."""
    global _frozen
    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if not _frozen:
        gc.collect()  # garbage is never frozen
        gc.freeze()
        _frozen = True


def reclaim_memory() -> dict[str, object]:
    """Hand an unloaded version's memory back: collect the reference cycles a loaded SavedModel is made of (its
    objects, functions and the function definitions TensorFlow's eager context keeps for them are freed only by the
    cycle collector, not when the last reference goes), then ask glibc to return freed heap pages to the system
    (``malloc_trim``; without it the process keeps them and RSS stays at the peak). What it did, for the log."""
    started = time.perf_counter()
    collected = gc.collect()
    trimmed = False
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): the collection alone
        trimmed = bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    return {"objects": collected, "malloc_trim": trimmed, "seconds": round(time.perf_counter() - started, 3)}


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(folder: Path) -> Fingerprint:
    """Names, sizes and mtimes (ns) of every file under ``folder``: changes while a copy is under way."""
    entries = []
    for path in sorted(folder.rglob("*")):
        with contextlib.suppress(OSError):
            if path.is_file():
                stat = path.stat()
                entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


@dataclass(eq=False)
class ModelVersion:
    """One version: where it lives, its state (and the reason when failed), its model and what serves it."""

    version: str
    path: Path
    name: str = ""  # the metadata's model name, once loaded
    state: VersionState = VersionState.LOADING
    reason: str | None = None
    model: LoadedModel | None = None
    serving: Serving | None = None
    fingerprint: Fingerprint = ()
    load_seconds: float | None = None
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def sort_key(self) -> tuple[int, str]:
        return (int(self.version), "") if self.version.isdigit() else (-1, self.version)

    @property
    def predictor(self) -> Predictor:
        assert self.serving is not None
        return self.serving.predictor


LoadFn = Callable[[Path], LoadedModel]
BuildFn = Callable[[str, LoadedModel], Serving]


class ModelRegistry:
    """The versions of one model (see the module docstring). All methods run on the event loop."""

    def __init__(
        self,
        root: Path,
        policy: VersionPolicy,
        *,
        load: LoadFn,
        build: BuildFn,
        observer: RegistryObserver | None = None,
        drain_timeout_s: float = 60.0,
        to_thread: Callable[[LoadFn, Path], Awaitable[LoadedModel]] | None = None,
        reclaim: Callable[[], object] | None = None,
    ) -> None:
        self.root = Path(root)
        self.policy = policy
        self._load = load
        self._build = build
        self._observer = observer
        self.drain_timeout_s = drain_timeout_s
        self._to_thread = to_thread or asyncio.to_thread
        self._reclaim = reclaim  # called once an unloaded version's objects are dropped
        self.versions: dict[str, ModelVersion] = {}
        self.default: ModelVersion | None = None
        self._lock = asyncio.Lock()
        self._drains: set[asyncio.Task[None]] = set()
        self._polls = 0
        self.fixed = False  # the root is one version folder: served as is, never reloaded

    # --- serving ------------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        for entry in self.ready_versions():
            assert entry.model is not None
            return entry.model.metadata.name
        return self.root.parent.name if self.fixed else self.root.name

    def ready_versions(self) -> list[ModelVersion]:
        return sorted(
            (v for v in self.versions.values() if v.state is VersionState.READY), key=lambda v: v.sort_key, reverse=True
        )

    def get(self, version: str | None = None) -> ModelVersion:
        """The ready version ``version`` (None: the default); raises ``VersionNotFoundError`` (not loaded),
        ``VersionNotReadyError`` (loading, unloading or failed) or ``NotReadyError`` (no default)."""
        if version is None:
            if self.default is None:
                raise NotReadyError("no model version is ready")
            return self.default
        entry = self.versions.get(version)
        if entry is None:
            loaded = ", ".join(v.version for v in self.ready_versions()) or "none"
            raise VersionNotFoundError(f"model version {version!r} is not loaded (ready: {loaded}); see /v1/models")
        if entry.state is not VersionState.READY:
            raise VersionNotReadyError(f"model version {version!r} is {entry.state.value}; see /v1/models")
        return entry

    @contextlib.contextmanager
    def lease(self, version: str | None = None) -> Iterator[ModelVersion]:
        """Hold a ready version for the ``with`` block: it does not unload before the block ends."""
        entry = self.get(version)
        entry.in_flight += 1
        entry.idle.clear()
        try:
            yield entry
        finally:
            entry.in_flight -= 1
            if entry.in_flight == 0:
                entry.idle.set()

    # --- loading and unloading ----------------------------------------------------------------------------------

    def _scan(self, require_metadata: bool) -> dict[str, Path]:
        """Numeric version folders (with ``metadata.json`` unless ``require_metadata`` is False)."""
        try:
            children = list(self.root.iterdir())
        except OSError:
            return {}
        return {
            child.name: child
            for child in children
            if child.name.isdigit() and child.is_dir() and (not require_metadata or (child / METADATA_FILE).is_file())
        }

    async def poll(self) -> None:
        """Bring the loaded versions in line with the folder and the policy (one poll at a time)."""
        async with self._lock:
            first = self._polls == 0
            self._polls += 1
            if first:
                version_dir = resolve_model_dir(self.root)  # raises ModelLoadError for a folder with no version
                if version_dir == self.root:
                    self.fixed = True
                    try:
                        key = read_metadata(version_dir).version
                    except ModelLoadError:
                        key = version_dir.name
                    await self._load_version(key, version_dir)
                    return
            if self.fixed:
                return
            await self._reconcile(self._scan(require_metadata=not first))

    async def _reconcile(self, found: dict[str, Path]) -> None:
        # forget failures whose folder is gone; a failure whose folder changed is retried
        for key, entry in list(self.versions.items()):
            if entry.state is VersionState.FAILED and (
                key not in found or fingerprint(found[key]) != entry.fingerprint
            ):
                del self.versions[key]
        while True:
            failed = {int(k) for k, v in self.versions.items() if v.state is VersionState.FAILED}
            wanted = self.policy.select(int(k) for k in found if int(k) not in failed)
            new = sorted((str(v) for v in wanted if str(v) not in self.versions), key=int, reverse=True)
            if not new:
                break
            for key in new:
                await self._load_version(key, found[key])
        for key, entry in list(self.versions.items()):
            if entry.state is VersionState.READY and (key not in found or int(key) not in wanted):
                self._unload(entry, "its folder was removed" if key not in found else "the version policy")

    async def _load_version(self, key: str, path: Path) -> None:
        entry = ModelVersion(version=key, path=path, fingerprint=fingerprint(path))
        self.versions[key] = entry
        started = time.perf_counter()
        log.info("loading model version", extra={"version": key, "path": str(path)})
        try:
            model = await self._to_thread(self._load, path)
            entry.serving = self._build(key, model)
        except Exception as exc:
            entry.state = VersionState.FAILED
            entry.reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            log.error("model version %s failed to load: %s", key, entry.reason, extra={"version": key})
            if self._observer is not None:
                self._observer.version_load_failed(key)
            return
        entry.model, entry.name = model, model.metadata.name
        entry.load_seconds = time.perf_counter() - started
        entry.idle.set()
        entry.state = VersionState.READY
        if self._observer is not None:
            self._observer.version_loaded(model.metadata.name, key, entry.load_seconds)
        log.info("model version ready", extra={"version": key, "load_seconds": round(entry.load_seconds, 3)})
        self._switch_default()

    def _switch_default(self) -> None:
        """The default is the highest ready version (one assignment: requests see the old or the new one)."""
        ready = self.ready_versions()
        previous, self.default = self.default, (ready[0] if ready else None)
        if self.default is not None and self.default is not previous:
            log.info(
                "default model version switched",
                extra={"version": self.default.version, "previous": previous.version if previous else None},
            )
            if self._observer is not None:
                assert self.default.model is not None
                self._observer.default_version(self.default.model.metadata.name, self.default.version)

    def _unload(self, entry: ModelVersion, why: str) -> None:
        entry.state = VersionState.UNLOADING
        self._switch_default()
        log.info("unloading model version (%s)", why, extra={"version": entry.version, "in_flight": entry.in_flight})
        task = asyncio.get_running_loop().create_task(self._drain(entry), name=f"drain-{entry.version}")
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _drain(self, entry: ModelVersion) -> None:
        """Wait for the version's in-flight requests (at most ``drain_timeout_s``), then stop and forget it."""
        try:
            await asyncio.wait_for(entry.idle.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning("model version %s still had %d requests after draining", entry.version, entry.in_flight)
        if entry.serving is not None:
            await entry.serving.close()
        entry.serving, entry.model = None, None
        # still listed as unloading while its memory is handed back: gone from /v1/models means released
        reclaimed = self._reclaim() if self._reclaim is not None else None  # on the loop: finalizers run here
        if self.versions.get(entry.version) is entry:
            del self.versions[entry.version]
        if self._observer is not None:
            self._observer.version_unloaded(entry.version)
        log.info("model version unloaded", extra={"version": entry.version, "reclaimed": reclaimed})

    async def close(self) -> None:
        """Stop every version (shutdown): the drains under way finish, the rest stop now."""
        for task in list(self._drains):
            task.cancel()
        for entry in list(self.versions.values()):
            if entry.serving is not None:
                await entry.serving.close()
                entry.serving = None
        self.default = None
