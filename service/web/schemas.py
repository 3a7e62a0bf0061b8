"""Response models of the HTTP API (documented in OpenAPI with examples)."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from service.faces import Box
from service.pipeline import ExplainSummary, FaceResult, ImageResult

_LABELS_EXAMPLE: JsonDict = {
    "angry": 0.02,
    "disgust": 0.0,
    "fear": 0.03,
    "happy": 0.87,
    "neutral": 0.05,
    "sad": 0.01,
    "surprise": 0.02,
}


class ModelRef(BaseModel):
    name: str = Field(examples=["fer-cnn-48"])
    version: str = Field(examples=["1"])


class ImageSize(BaseModel):
    width: int = Field(description="Width of the image after EXIF orientation, in pixels.", examples=[512])
    height: int = Field(description="Height of the image after EXIF orientation, in pixels.", examples=[512])


class BoxModel(BaseModel):
    x: int = Field(description="Left edge, pixels from the image's left side.")
    y: int = Field(description="Top edge, pixels from the image's top.")
    width: int
    height: int

    @classmethod
    def of(cls, box: Box) -> BoxModel:
        return cls(x=box.x, y=box.y, width=box.width, height=box.height)


class Explanation(BaseModel):
    """A Grad-CAM map of one face (only with `explain=true`)."""

    label: str = Field(description="The label the map explains: `explain_class`, or else the face's `emotion`.")
    box: BoxModel = Field(
        description="The part of the image the map covers, in image pixels: the square crop the model saw (the "
        "face box plus the server's margin, kept inside the image). Stretch the map over it."
    )
    width: int = Field(description="Width of the map in pixels (the model's input width).", examples=[48])
    height: int = Field(description="Height of the map in pixels (the model's input height).", examples=[48])
    png: str = Field(
        description="The map as a base64 8-bit grayscale PNG of `width` x `height`: 255 where the evidence for "
        "`label` is strongest, 0 where there is none (Grad-CAM, normalised to 0..1 per face)."
    )


class ExplanationCount(BaseModel):
    """How many of the image's faces carry an `explanation` (only with `explain=true`)."""

    explained: int = Field(description="Faces of this image with an `explanation`.")
    skipped: int = Field(description="Faces of this image without one: the request's limit was reached.")
    limit: int = Field(description="Most faces explained per request (the server's `explain_max_faces`).")

    @classmethod
    def of(cls, summary: ExplainSummary) -> ExplanationCount:
        return cls(explained=summary.explained, skipped=summary.skipped, limit=summary.limit)


class Face(BaseModel):
    box: BoxModel
    score: float = Field(description="The detector's confidence that this is a face (1.0 when detect=false).")
    emotion: str = Field(description="The most probable label.")
    confidence: float = Field(description="The probability of `emotion`.")
    probabilities: dict[str, float] = Field(description="Every label of the model and its probability; they sum to 1.")
    explanation: Explanation | None = Field(
        None,
        description="With `explain=true`: where the network looked (absent without it, and for faces beyond the "
        "request's `explain_max_faces`).",
    )

    @classmethod
    def of(cls, face: FaceResult) -> Face:
        explained = face.explanation
        return cls(
            box=BoxModel.of(face.box),
            score=face.score,
            emotion=face.emotion,
            confidence=face.confidence,
            probabilities=face.probabilities,
            explanation=None
            if explained is None
            else Explanation(
                label=explained.label,
                box=BoxModel.of(explained.window),
                width=explained.width,
                height=explained.height,
                png=base64.b64encode(explained.png).decode("ascii"),
            ),
        )


class Timings(BaseModel):
    decode: float = Field(description="Decoding the upload, ms.")
    detect: float = Field(description="Finding and cropping faces, ms.")
    infer: float = Field(description="Waiting for and running the model (shared batch), ms.")
    total: float = Field(description="Everything from receiving the bytes to building the result, ms.")


_PREDICTION_EXAMPLE: JsonDict = {
    "model": {"name": "fer-cnn-48", "version": "1"},
    "image": {"width": 512, "height": 512},
    "faces": [
        {
            "box": {"x": 173, "y": 82, "width": 104, "height": 104},
            "score": 0.98,
            "emotion": "happy",
            "confidence": 0.87,
            "probabilities": _LABELS_EXAMPLE,
        }
    ],
    "timings_ms": {"decode": 3.1, "detect": 21.4, "infer": 9.8, "total": 35.2},
}


class Prediction(BaseModel):
    """The result for one image. No face found is a normal result with an empty `faces` list."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PREDICTION_EXAMPLE]})

    model: ModelRef
    image: ImageSize
    faces: list[Face] = Field(description="Faces ordered left to right.")
    timings_ms: Timings
    explanations: ExplanationCount | None = Field(
        None, description="With `explain=true`: how many faces were explained and how many were not (absent without)."
    )

    @classmethod
    def from_result(cls, model: ModelRef, result: ImageResult) -> Prediction:
        return cls(
            model=model,
            image=ImageSize(width=result.width, height=result.height),
            faces=[Face.of(f) for f in result.faces],
            timings_ms=Timings(**result.timings_ms),
            explanations=None if result.explain is None else ExplanationCount.of(result.explain),
        )


class BatchPrediction(BaseModel):
    """One result per uploaded image, in upload order."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"results": [_PREDICTION_EXAMPLE]}]})

    results: list[Prediction]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["the upload is not a readable image"])


class ErrorBody(BaseModel):
    """Every error response has this body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": {"code": "invalid_image", "message": "the upload is not a readable image"}}]
        }
    )

    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model: ModelRef


class InputInfo(BaseModel):
    height: int = Field(examples=[48])
    width: int = Field(examples=[48])
    channels: int = Field(examples=[1])
    color_mode: str = Field(examples=["grayscale"])


class VersionInfo(BaseModel):
    """One model version the service knows: loaded and ready, loading, unloading (draining) or failed."""

    version: str = Field(description="The version folder's name (what responses name, and `?version=` selects).")
    state: Literal["loading", "ready", "unloading", "failed"]
    default: bool = Field(description="Whether requests that name no version get this one (the highest ready).")
    reason: str | None = Field(default=None, description="Why the version failed to load (state `failed` only).")
    labels: list[str] | None = None
    input: InputInfo | None = None
    evaluation: dict[str, Any] | None = Field(
        default=None, description="The `evaluation` section of the version's metadata.json (accuracy, macro F1, ...)."
    )
    runtime: str | None = Field(default=None, examples=["openvino"])
    precision: str | None = Field(
        default=None,
        examples=["bf16"],
        description="What the runtime computes in: `--precision auto` resolved on this CPU (bf16 where it is native).",
    )
    precision_setting: str | None = Field(default=None, examples=["auto"], description="The `--precision` setting.")
    explanations: bool | None = Field(default=None, description="Whether the export has the explain signature.")
    explanations_runtime: str | None = Field(
        default=None,
        examples=["openvino"],
        description="What computes the explanations: openvino (the compiled explain IR) or tensorflow.",
    )
    metadata_version: str | None = Field(default=None, description="The `version` field of its metadata.json.")
    load_seconds: float | None = Field(default=None, description="Time to load, validate and warm it up.")
    in_flight: int = Field(description="Requests using it now.")


class ModelList(BaseModel):
    """What `GET /v1/models` answers."""

    name: str = Field(examples=["fer-cnn-48"])
    version_policy: str = Field(examples=["latest"])
    default_version: str | None = Field(examples=["3"])
    versions: list[VersionInfo] = Field(description="Highest version first.")
