"""``metadata.json`` as the service reads it: the fields of docs/model-contract.md it relies on, validated.

Below both the model loader (:mod:`service.model`) and the runtimes (:mod:`service.runtimes`), which read the
signature names from it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.faces import COLOR_MODES

METADATA_FILE = "metadata.json"
SUPPORTED_SCHEMA_VERSIONS = (1,)
#: Largest input side the service accepts from a model's metadata (sanity bound, not a model choice).
MAX_INPUT_SIDE = 1024


# --- metadata -------------------------------------------------------------------------------------------------


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    height: int = Field(ge=8, le=MAX_INPUT_SIDE)
    width: int = Field(ge=8, le=MAX_INPUT_SIDE)
    channels: Literal[1, 3]
    color_mode: Literal["grayscale", "rgb"]
    dtype: Literal["float32"] = "float32"


class SignatureSpec(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    key: str = Field(min_length=1)
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)


class ExplainSpec(BaseModel):
    """The metadata's optional ``explain`` section (docs/model-contract.md); only the names are interpreted."""

    model_config = ConfigDict(extra="allow", frozen=True)

    signature: str = Field(default="explain", min_length=1)
    class_input: str = Field(default="class_index", min_length=1)
    heatmap_output: str = Field(default="heatmap", min_length=1)


#: The signature an export without an ``explain`` section in its metadata is looked up under (the contract's key).
DEFAULT_EXPLAIN = ExplainSpec()


class ModelMetadata(BaseModel):
    """The fields of ``metadata.json`` the service relies on (others are kept but not interpreted)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    schema_version: int
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    labels: list[str] = Field(min_length=2)
    input: InputSpec
    signature: SignatureSpec
    explain: ExplainSpec | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(f"schema_version {value} is not supported (supported: {SUPPORTED_SCHEMA_VERSIONS})")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels) or any(not label for label in labels):
            raise ValueError("labels must be non-empty and unique")
        return labels

    def check_consistent(self) -> None:
        """Cross-field checks pydantic's per-field validation cannot express."""
        expected = COLOR_MODES[self.input.color_mode]
        if self.input.channels != expected:
            raise ValueError(
                f"input.channels is {self.input.channels} but color_mode '{self.input.color_mode}' needs {expected}"
            )
