"""Response models of the HTTP API (documented in OpenAPI with examples)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from service.pipeline import ImageResult

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


class Face(BaseModel):
    box: BoxModel
    score: float = Field(description="The detector's confidence that this is a face (1.0 when detect=false).")
    emotion: str = Field(description="The most probable label.")
    confidence: float = Field(description="The probability of `emotion`.")
    probabilities: dict[str, float] = Field(description="Every label of the model and its probability; they sum to 1.")


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

    @classmethod
    def from_result(cls, model: ModelRef, result: ImageResult) -> Prediction:
        return cls(
            model=model,
            image=ImageSize(width=result.width, height=result.height),
            faces=[
                Face(
                    box=BoxModel(x=f.box.x, y=f.box.y, width=f.box.width, height=f.box.height),
                    score=f.score,
                    emotion=f.emotion,
                    confidence=f.confidence,
                    probabilities=f.probabilities,
                )
                for f in result.faces
            ],
            timings_ms=Timings(**result.timings_ms),
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
