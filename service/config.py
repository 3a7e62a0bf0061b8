"""Service settings: one ``Settings`` object, read from ``FER_*`` environment variables and command-line flags.

Precedence (highest first): command-line flag, environment variable ``FER_<NAME>``, default. The app factory
receives a ``Settings`` instance; tests build ``Settings(model_dir=...)`` directly.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.errors import describe_validation_errors
from service.faces import DEFAULT_DETECTOR, DEFAULT_THRESHOLD, DETECTORS
from service.images import MAX_DECODED_BYTES_PER_PIXEL

ENV_PREFIX = "FER_"


MiB = 1024 * 1024
#: Room for the multipart framing (boundaries, part headers) on top of the file bytes a body may carry.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _split_list(value: Any) -> Any:
    """Accept ``a,b,c`` (or a JSON list) for list settings given as one string, e.g. from an env var."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Conflict(NamedTuple):
    """Settings that cannot all hold: ``names`` of the settings involved, ``message`` says why (with the values)."""

    names: tuple[str, ...]
    message: str


class ImpossibleSettingsError(ValueError):
    """Settings under which some valid request could never succeed (raised inside ``Settings`` validation, so
    callers see a pydantic ``ValidationError`` whose error context holds this; ``conflicts`` names the settings)."""

    def __init__(self, conflicts: Sequence[Conflict]) -> None:
        self.conflicts = tuple(conflicts)
        super().__init__("settings that can never work: " + "; ".join(c.message for c in self.conflicts))


class Settings(BaseSettings):
    """Everything configurable about the service. Field descriptions double as ``--help`` text."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- server ---------------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")

    # --- model ------------------------------------------------------------------------------------------------
    model_dir: Path = Field(
        Path("models/fer-cnn-48"),
        description="Model name folder (the highest numeric version inside is served) "
        "or one version folder; see docs/model-contract.md.",
    )
    runtime: Literal["tensorflow", "openvino"] = Field(
        "openvino",
        description="What runs the model: openvino (the IR python -m training compile derived and checked, else the "
        "SavedModel converted at start-up; explanations from the checked explain IR, else TensorFlow) or tensorflow "
        "(the SavedModel); see docs/model-contract.md.",
    )
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="auto (openvino: int8 where the version's int8 IR passed its compile check on labelled val "
        "images, i.e. holds parity with fp32; else bf16 where the CPU computes it natively, AVX512_BF16/AMX; else "
        "fp32; tensorflow: fp32); fp32; bf16 (OpenVINO's bf16 hint or TensorFlow's oneDNN rewrite: fast only with "
        "native bf16, simulated and slower on other AVX-512 CPUs); int8 (openvino only: the NNCF-quantized IR from "
        "compile).",
    )
    openvino_threads: int = Field(
        0,
        ge=0,
        description="Threads OpenVINO runs a model call on; 0 = the CPUs the process may use (its affinity, capped by "
        "a cgroup CPU limit) minus one (at least 1), leaving a core to the event loop and face detection (on 2 "
        "cores: 1 thread, a quarter less service CPU per face than OpenVINO's one thread per core, same throughput).",
    )
    model_version_policy: str = Field(
        "latest",
        description="Versions of a model name folder to serve: latest (the highest), latest:N (the N highest) or "
        "specific:V1,V2; requests name one with ?version=, else the highest ready one answers.",
    )
    model_poll_interval_s: float = Field(
        0.0,
        ge=0.0,
        le=86400,
        description="Seconds between scans of the model name folder for new or removed versions, loaded or unloaded "
        "without a restart (0: off; SIGHUP also scans).",
    )

    # --- faces ------------------------------------------------------------------------------------------------
    detector: str = Field(DEFAULT_DETECTOR, description=f"Face detector: {', '.join(DETECTORS)}.")
    min_face_size: int = Field(40, ge=8, description="Smallest face to report, in pixels of the image.")
    detection_threshold: float = Field(
        DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="Minimum detector score (0..1) of a reported face."
    )
    detection_max_side: int = Field(
        640,
        ge=64,
        le=4096,
        description="Longest side of the downscaled copy faces are searched in (smaller "
        "is faster; never so small that min_face_size faces vanish).",
    )
    max_faces: int = Field(10, ge=1, le=1000, description="At most this many faces per image (largest scores).")
    explain_max_faces: int = Field(
        8,
        ge=0,
        le=1000,
        description="Most faces explained (Grad-CAM map) per request with explain=true; the others get none. "
        "0 turns explanations off.",
    )
    face_margin: float = Field(
        0.2,
        ge=0.0,
        le=2.0,
        description="Margin added around each face box before cropping, as a fraction of the box size.",
    )

    # --- batching ---------------------------------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=1024, description="Most face crops per model call.")
    max_batch_wait_ms: float = Field(
        5.0, ge=0.0, le=10_000, description="Longest wait after a batch's first crop before it runs."
    )
    max_queue: int = Field(256, ge=1, description="Most face crops waiting for the model; more is answered 503.")
    max_pending_images: int = Field(
        32,
        ge=1,
        description="Most images being decoded, searched for faces or classified at once; more is answered 503.",
    )
    prepare_processes: int = Field(
        1,
        ge=0,
        le=64,
        description="Worker processes that decode images and detect faces (0: one thread in the service process).",
    )
    prepare_recycle_after: int = Field(
        5000,
        ge=1,
        description="Detections after which the worker processes are "
        "replaced (bounds native memory leaks and heap "
        "growth).",
    )

    # --- limits -----------------------------------------------------------------------------------------------
    max_upload_bytes: int = Field(10 * MiB, ge=1024, description="Largest image upload, in bytes (413 above).")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest image, in pixels (413 above; checked from the header, before decoding)."
    )
    max_batch_images: int = Field(16, ge=1, le=1000, description="Most images in one /predict/batch request.")
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest time to receive a request body, in seconds (408 after; stops slow uploads).",
    )

    max_bodies_in_flight: int = Field(
        64,
        ge=1,
        description="Most request bodies being received or served at once, counted before they are read "
        "(503 overloaded above).",
    )
    max_body_bytes_in_flight: int = Field(
        256 * MiB,
        ge=1024,
        description="Most bytes the request bodies in flight may hold together (declared Content-Length, or the "
        "route's limit when undeclared), reserved before they are read (503 overloaded above).",
    )

    max_pixel_bytes_in_flight: int = Field(
        1024 * MiB,
        ge=1024,
        description="Most bytes of decoded pixels the images in progress may count together (each image: its declared "
        "width x height, at most max_image_pixels, x 3 or 4 bytes), reserved per request from the image headers "
        "before decoding (503 overloaded above; 413 for one request over it alone).",
    )

    # --- access -----------------------------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Comma-separated API keys; when set, /predict, /predict/batch and /ws/stream need "
        "'Authorization: Bearer <key>' (the WebSocket also accepts ?api_key=); /healthz, /readyz, /metrics and "
        "the web page stay open, and the API docs (/docs, /redoc, /openapi.json) are served only with "
        "--docs-with-api-keys.",
    )
    docs_with_api_keys: bool = Field(
        False,
        description="Serve the API docs (/docs, /redoc, /openapi.json) without a key although api_keys is set "
        "(without api_keys they are always served).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated CORS origins ('*' for any); CORS is off when empty."
    )

    # --- WebSocket --------------------------------------------------------------------------------------------
    ws_max_connections: int = Field(16, ge=1, description="Most concurrent /ws/stream connections.")
    ws_max_frame_bytes: int = Field(
        2 * MiB, ge=1024, description="Largest WebSocket message; bigger closes the socket with 1009."
    )
    track_max_missed_frames: int = Field(
        5,
        ge=0,
        le=10_000,
        description="A /ws/stream face track whose face is not seen keeps its id until it has been missing for more "
        "than this many frames and more than track_max_missed_s seconds.",
    )
    track_max_missed_s: float = Field(
        1.0, ge=0.0, le=3600.0, description="See track_max_missed_frames: the seconds a missing face keeps its track."
    )

    ws_first_frame_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Longest wait for a stream's first frame; then it is closed (1008)."
    )
    ws_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Longest time a stream may send nothing after its first frame; then it is closed (1008).",
    )

    # --- deadlines --------------------------------------------------------------------------------------------
    request_deadline_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest time an HTTP request may take from its headers to its answer "
        "(504 deadline_exceeded after; its work is cancelled).",
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("model_version_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        from service.registry import VersionPolicy  # (registry imports the model: keep config light to import)

        return str(VersionPolicy.parse(value))

    @field_validator("detector")
    @classmethod
    def _known_detector(cls, value: str) -> str:
        if value not in DETECTORS:
            raise ValueError(f"unknown detector {value!r}; choose one of {', '.join(DETECTORS)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        conflicts = self.conflicts()
        if conflicts:
            raise ImpossibleSettingsError(conflicts)
        if any(not key.get_secret_value() for key in self.api_keys):
            raise ValueError("api_keys must not contain empty keys")
        if self.precision == "int8" and self.runtime != "openvino":
            raise ValueError("precision int8 needs runtime openvino")
        return self

    def conflicts(self) -> list[Conflict]:
        """Combinations of settings under which some valid request could never succeed, however idle the service."""
        found = []
        if self.max_queue < self.max_batch_size:
            found.append(
                Conflict(
                    ("max_queue", "max_batch_size"),
                    f"max_queue ({self.max_queue}) must be at least max_batch_size ({self.max_batch_size})",
                )
            )
        if self.max_queue < self.max_batch_images * self.max_faces:
            # /predict/batch submits all of its crops at once: more than the queue holds is refused even when idle
            found.append(
                Conflict(
                    ("max_queue", "max_batch_images", "max_faces"),
                    f"max_queue ({self.max_queue}) must be at least max_batch_images x max_faces "
                    f"({self.max_batch_images} x {self.max_faces} = {self.max_batch_images * self.max_faces}): "
                    "a full /predict/batch would be refused even by an idle service",
                )
            )
        if self.max_pending_images < self.max_batch_images:
            found.append(
                Conflict(
                    ("max_pending_images", "max_batch_images"),
                    f"max_pending_images ({self.max_pending_images}) must be at least max_batch_images "
                    f"({self.max_batch_images})",
                )
            )
        if self.max_body_bytes_in_flight < self.max_batch_body_bytes:
            found.append(
                Conflict(
                    ("max_body_bytes_in_flight", "max_upload_bytes", "max_batch_images"),
                    f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) must be at least the largest "
                    f"/predict/batch body, max_upload_bytes x max_batch_images + 64 KiB ({self.max_batch_body_bytes})",
                )
            )
        if self.max_pixel_bytes_in_flight < self.max_image_pixels * MAX_DECODED_BYTES_PER_PIXEL:
            # one image of the largest size would be refused (413) even by an idle service
            found.append(
                Conflict(
                    ("max_pixel_bytes_in_flight", "max_image_pixels"),
                    f"max_pixel_bytes_in_flight ({self.max_pixel_bytes_in_flight}) must be at least max_image_pixels "
                    f"x {MAX_DECODED_BYTES_PER_PIXEL} bytes ({self.max_image_pixels * MAX_DECODED_BYTES_PER_PIXEL}): "
                    "one image of the largest size would be refused even by an idle service",
                )
            )
        return found

    @property
    def max_body_bytes(self) -> int:
        """The largest /predict body: one upload plus its multipart framing."""
        return self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES

    @property
    def max_batch_body_bytes(self) -> int:
        """The largest /predict/batch body: ``max_batch_images`` uploads plus their multipart framing."""
        return self.max_upload_bytes * self.max_batch_images + MULTIPART_OVERHEAD_BYTES

    @property
    def max_batch_wait_s(self) -> float:
        return self.max_batch_wait_ms / 1000.0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per setting; ``--help`` shows defaults and environment variable names."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Facial-expression recognition service. Every flag can also be set with the environment "
        f"variable shown ({ENV_PREFIX}<NAME>); flags win over environment variables.",
    )
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) if default else "(none)"
        env = ENV_PREFIX + name.upper()
        kwargs: dict[str, Any] = {
            "default": None,
            "dest": name,
            "metavar": name.upper(),
            "help": f"{field.description} [default: {default}; env: {env}]",
        }
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        if name == "detector":
            choices = DETECTORS
        if choices:
            kwargs["choices"] = choices
            kwargs.pop("metavar")
        parser.add_argument(_flag(name), **kwargs)
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    """Parse ``argv`` (default ``sys.argv[1:]``) into ``Settings``; flags override ``FER_*`` variables."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:  # one line naming the settings, never the values given (they may be keys)
        parser.error(f"invalid settings: {describe_validation_errors(exc.errors(include_input=False))}")
        raise  # unreachable: parser.error exits
