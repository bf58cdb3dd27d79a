"""Request and response bodies of the HTTP API (pydantic v2), with examples for the OpenAPI page.

Cell values are JSON scalars checked against the model's schema by the engine, which names the
feature and the reason for every bad cell; the models here only check the request's shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Value = float | int | str | bool | None
# Versions are stored as 32-bit integers; a larger one cannot exist (and must not reach the database).
MAX_VERSION = 2**31 - 1
ROW_EXAMPLE = {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101, "ldl": None}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowsRequest(_Strict):
    rows: list[dict[str, Value]] = Field(
        min_length=1, description="Rows: feature -> value; null or absent means missing.", examples=[[ROW_EXAMPLE]]
    )
    samples: int | None = Field(None, ge=2, description="Posterior samples per row (default: the model's).")
    quantiles: list[float] = Field([0.05, 0.5, 0.95], max_length=99, description="Quantiles in (0, 1) to report.")
    seed: int | None = Field(None, ge=0, description="Makes the answer reproducible.")
    return_samples: bool = Field(False, description="Also return the raw predictive draws.")


class NextFeaturesRequest(_Strict):
    row: dict[str, Value] = Field(description="What is known so far.", examples=[{"age": 59, "sex": 2}])
    candidates: list[str] | None = Field(None, description="Features to rank (default: every unobserved one).")
    costs: dict[str, float] | None = Field(None, description="Cost per feature (default 1); ranks by gain per cost.")
    top_k: int | None = Field(None, ge=1, description="How many to return (default: all).")
    target: str | None = Field(None, description="Target to inform (default: the model's first).")
    method: Literal["mixture", "histogram"] = Field(
        "mixture", description="Information estimator: ours (mixture) or the paper's (histogram)."
    )
    min_gain: float = Field(0.01, ge=0, description="Stopping hint: best remaining gain below this (nats).")
    max_uncertainty: float | None = Field(None, ge=0, description="Stopping hint: prediction std/entropy below this.")
    samples: int | None = Field(None, ge=2)
    seed: int | None = Field(None, ge=0)


class ColumnSummary(BaseModel):
    mean: float | None = None
    std: float | None = None
    quantiles: dict[str, float] | None = None
    mode: Value = None
    probabilities: dict[str, float] | None = None
    samples: list[Value] | None = None


class ImputedRow(BaseModel):
    values: dict[str, Value] = Field(description="The row completed: observed values as given, holes filled.")
    imputed: dict[str, ColumnSummary] = Field(description="For each filled hole: its predictive distribution.")
    acceptance_rate: float = Field(description="Mean HMC acceptance rate of this row's chains.")


class ImputeResponse(BaseModel):
    model: str
    version: int
    rows: list[ImputedRow]


class PredictedRow(BaseModel):
    targets: dict[str, ColumnSummary]
    acceptance_rate: float


class PredictResponse(BaseModel):
    model: str
    version: int
    rows: list[PredictedRow]


class RankedFeature(BaseModel):
    feature: str
    gain: float = Field(description="Expected information gain about the target, nats.")
    cost: float | None = None
    gain_per_cost: float | None = None


class StopHint(BaseModel):
    stop: bool
    reason: str


class NextFeaturesResponse(BaseModel):
    model: str
    version: int
    target: str
    method: str
    ranking: list[RankedFeature]
    prediction: ColumnSummary
    uncertainty: float = Field(description="Prediction std (numeric target) or entropy in nats (categorical).")
    stop: StopHint
    acceptance_rate: float


class ModelInfo(BaseModel):
    name: str
    version: int
    active: bool
    checksum: str
    created_at: str | None = None
    summary: dict[str, Any] = {}
    metrics: dict[str, Any] = {}


class ModelDetail(ModelInfo):
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    sampler: dict[str, Any]
    backend: str
    versions: list[int]

    model_config = ConfigDict(populate_by_name=True)


class RegisterModelRequest(_Strict):
    path: str = Field(description="Artifact directory on the server (manifest.json + the ONNX graphs).")
    name: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    activate: bool = True


class CreateSessionRequest(_Strict):
    model: str = Field(examples=["diabetes"])
    version: int | None = Field(
        None, ge=1, le=MAX_VERSION, description="Model version to pin (default: the active one)."
    )
    observations: dict[str, Value] = Field(default_factory=dict)


class ObservationsRequest(_Strict):
    observations: dict[str, Value] = Field(
        min_length=1, description="feature -> value; null retracts an earlier answer.", examples=[{"bmi": 27.5}]
    )


class ObservationOut(BaseModel):
    feature: str
    value: Value
    at: str
    seq: int


class SessionOut(BaseModel):
    session_id: str
    model: str
    version: int
    created_at: str
    updated_at: str
    expires_in: int = Field(description="Seconds of inactivity before the session expires.")
    observations: list[ObservationOut] = Field(description="Every answer in arrival order, corrections included.")
    current: dict[str, Value] = Field(description="The latest value of each answered feature.")


class SessionPrediction(BaseModel):
    session_id: str
    model: str
    version: int
    targets: dict[str, ColumnSummary]
    acceptance_rate: float


class BatchJobOut(BaseModel):
    id: str
    model: str
    version: int
    operation: str
    status: str
    total_rows: int | None = None
    processed_rows: int
    failed_rows: int
    errors: list[dict[str, Any]] = []
    message: str | None = None
    created_at: str
    finished_at: str | None = None
    result_url: str | None = None
