"""Request and response bodies of the HTTP API (pydantic v2), with examples for the OpenAPI page.

Cell values are JSON scalars checked against the model's schema by the engine, which names the
feature and the reason for every bad cell; the models here only check the request's shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, FiniteFloat

from hhvaem.model.io.artifact import NAME_PATTERN


def _representable(value: Any) -> Any:
    """JSON integers have no size limit; one that no float can hold (a 400-digit number) is not a cell value."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"a {len(str(abs(value)))}-digit integer is too large to be a number here") from None
    return value


Value = Annotated[float | int | str | bool | None, AfterValidator(_representable)]
# Versions are stored as 32-bit integers; a larger one cannot exist (and must not reach the database).
MAX_VERSION = 2**31 - 1
# A model name (path and form parameters, registrations): what a manifest's name may be.
MODEL_NAME = NAME_PATTERN.pattern
# A batch job id: what `new_job_id` makes (32 lowercase hex characters).
JOB_ID = r"^[0-9a-f]{32}$"
ROW_EXAMPLE = {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101, "ldl": None}
SEED_DESCRIPTION = (
    "Seed of the sampler's random draws (docs/how-to/reproducible-answers.md). Default: one per row, derived from the "
    "model version's artifact checksum, `samples` and the row's values as the model encodes them, so the same "
    "request to the same model version returns the same numbers, alone or batched with others. Another seed gives "
    "an independent set of draws."
)

CALIBRATED_DESCRIPTION = (
    "Quantiles with the model's conformal correction, measured at training on rows it was not fitted on "
    "(docs/calibration.md); false: the model's raw quantiles. A model trained without calibration serves raw "
    "quantiles either way (each summary's `calibrated` says which)."
)

PLAUSIBILITY_DESCRIPTION = (
    "Also check each observed feature against the row's other observed features (docs/plausibility.md): the "
    "probability of a value at least as extreme (for a category: of one no more probable) under the model given "
    "the others, and whether it is below `plausibility_threshold`. Costs a sampler run per observed feature."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RowsRequest(_Strict):
    rows: list[dict[str, Value]] = Field(
        min_length=1, description="Rows: feature -> value; null or absent means missing.", examples=[[ROW_EXAMPLE]]
    )
    samples: int | None = Field(
        None, ge=2, description="Posterior samples per row (default: `HHVAEM_DEFAULT_SAMPLES`)."
    )
    quantiles: list[FiniteFloat] = Field(
        [0.05, 0.5, 0.95], min_length=1, max_length=99, description="Quantiles in (0, 1) to report."
    )
    seed: int | None = Field(None, ge=0, description=SEED_DESCRIPTION)
    return_samples: bool = Field(False, description="Also return the raw predictive draws.")
    calibrated: bool = Field(True, description=CALIBRATED_DESCRIPTION)
    plausibility: bool = Field(False, description=PLAUSIBILITY_DESCRIPTION)
    plausibility_threshold: FiniteFloat = Field(
        0.01, gt=0, lt=1, description="A value whose plausibility `p` is below this is called unusual."
    )


class NextFeaturesRequest(_Strict):
    row: dict[str, Value] = Field(description="What is known so far.", examples=[{"age": 59, "sex": 2}])
    candidates: list[str] | None = Field(None, description="Features to rank (default: every unobserved one).")
    costs: dict[str, FiniteFloat] | None = Field(
        None, description="Cost per feature (default 1); ranks by gain per cost."
    )
    top_k: int | None = Field(None, ge=1, description="How many to return (default: all).")
    target: str | None = Field(None, description="Target to inform (default: the model's first).")
    method: Literal["mixture", "histogram"] = Field(
        "mixture", description="Information estimator: ours (mixture) or the paper's (histogram)."
    )
    min_gain: FiniteFloat = Field(0.01, ge=0, description="Stopping hint: best remaining gain below this (nats).")
    max_uncertainty: FiniteFloat | None = Field(
        None, ge=0, description="Stopping hint: prediction std/entropy below this."
    )
    samples: int | None = Field(
        None, ge=2, description="Posterior samples per row (default: the service's `HHVAEM_DEFAULT_SAMPLES`)."
    )
    seed: int | None = Field(None, ge=0, description=SEED_DESCRIPTION)
    calibrated: bool = Field(True, description=CALIBRATED_DESCRIPTION)


class ColumnSummary(BaseModel):
    point: Value = Field(None, description="Numbers: the point imputation (the predictive mean on the model's scale).")
    mean: float | None = Field(None, description="Numbers: the predictive mean in the column's units.")
    std: float | None = None
    quantiles: dict[str, float] | None = None
    mean_se: float | None = Field(None, description="Monte Carlo standard error of `mean` (from the samples).")
    quantiles_se: dict[str, float] | None = Field(None, description="Monte Carlo standard errors of the quantiles.")
    calibrated: bool | None = Field(
        None, description="Numbers: whether `quantiles` carry the model's conformal correction (docs/calibration.md)."
    )
    probability_zero: float | None = Field(
        None, description="zero_positive columns: the predictive probability of an exact zero."
    )
    mode: Value = None
    probabilities: dict[str, float] | None = None
    probabilities_se: dict[str, float] | None = Field(None, description="Monte Carlo standard errors.")
    samples: list[Value] | None = None


class Plausibility(BaseModel):
    p: float = Field(description="Probability of a value at least this extreme given the row's other values.")
    unusual: bool = Field(description="`p` is below the request's `plausibility_threshold`.")


class ImputedRow(BaseModel):
    values: dict[str, Value] = Field(description="The row completed: observed values as given, holes filled.")
    imputed: dict[str, ColumnSummary] = Field(description="For each filled hole: its predictive distribution.")
    acceptance_rate: float = Field(description="Mean HMC acceptance rate of this row's chains.")
    plausibility: dict[str, Plausibility] | None = Field(None, description="Per observed feature, when asked.")
    unusual: list[str] | None = Field(None, description="The observed features called unusual, when asked.")


class ImputeResponse(BaseModel):
    model: str
    version: int
    rows: list[ImputedRow]


class PredictedRow(BaseModel):
    targets: dict[str, ColumnSummary]
    acceptance_rate: float
    plausibility: dict[str, Plausibility] | None = Field(None, description="Per observed feature, when asked.")
    unusual: list[str] | None = Field(None, description="The observed features called unusual, when asked.")


class PredictResponse(BaseModel):
    model: str
    version: int
    rows: list[PredictedRow]


class RankedFeature(BaseModel):
    feature: str
    gain: float = Field(description="Expected information gain about the target, nats.")
    gain_se: float | None = Field(None, description="Monte Carlo standard error of `gain` (null: not estimated).")
    cost: float | None = None
    gain_per_cost: float | None = None


class Tie(BaseModel):
    tied: bool = Field(description="The first two are within two standard errors of their difference.")
    features: list[str]
    difference: float | None = None
    difference_se: float | None = Field(None, description="Paired over the common posterior samples.")


class StopHint(BaseModel):
    stop: bool
    reason: str


class NextFeaturesResponse(BaseModel):
    model: str
    version: int
    target: str
    method: str
    ranking: list[RankedFeature]
    tie: Tie = Field(description="Whether the best two questions are within Monte Carlo noise of each other.")
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
    retired_at: str | None = Field(None, description="When an admin retired the version (never served again).")
    retired_reason: str | None = None


class RegisteredModel(ModelInfo):
    schema_changes: list[str] = Field(
        [], description="With `force`: what in its schema breaks the clients of the name's active version."
    )


class ModelDetail(ModelInfo):
    schema_: dict[str, Any] = Field(alias="schema", serialization_alias="schema")
    sampler: dict[str, Any]
    backend: str
    versions: list[int]

    model_config = ConfigDict(populate_by_name=True)


class RegisterModelRequest(_Strict):
    path: str = Field(description="Artifact directory on the server (manifest.json + the ONNX graphs).")
    name: str | None = Field(
        None,
        pattern="^" + MODEL_NAME + "$",
        description="Name to register it under (default: the manifest's): letters, digits, '_', '.', '-'.",
    )
    activate: bool = True
    force: bool = Field(
        False,
        description="Register even when its schema breaks the clients of the name's active version (a feature or "
        "target gone, a type, unit or role changed, a category removed); the response lists the differences.",
    )


def _one_line(text: str | None) -> str | None:
    """Text the service will echo (problem bodies, /readyz, its log) and store: no control character (a newline
    would forge a log line), no lone surrogate (PostgreSQL cannot store one)."""
    if text is not None and not text.isprintable():
        raise ValueError("must be one line of printable text")
    return text


class RetireModelRequest(_Strict):
    reason: Annotated[str | None, AfterValidator(_one_line)] = Field(
        None,
        max_length=500,
        description="Why (shown to the clients that still ask for the version).",
        examples=["superseded by version 3"],
    )


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
    plausibility: dict[str, Plausibility] | None = Field(None, description="Per answer, when asked.")
    unusual: list[str] | None = Field(None, description="The answers called unusual, when asked.")


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


def _links(parameter: str, pointer: str, *operations: tuple[str, str]) -> dict[str, Any]:
    """OpenAPI links from a response to the operations that take `parameter` from it (`pointer` into its body):
    what lets a client, or a stateful fuzzer, follow a created resource to its other routes."""
    out = {}
    for method, path in operations:
        ref = "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method
        name = method.capitalize() + "".join(part.capitalize() for part in path.split("/")[2:] if "{" not in part)
        out[name] = {"operationRef": ref, "parameters": {parameter: f"$response.body#{pointer}"}}
    return out


SESSION_LINKS = _links(
    "session_id",
    "/session_id",
    ("get", "/v1/sessions/{session_id}"),
    ("post", "/v1/sessions/{session_id}/observations"),
    ("get", "/v1/sessions/{session_id}/next-features"),
    ("get", "/v1/sessions/{session_id}/prediction"),
    ("delete", "/v1/sessions/{session_id}"),
)
JOB_LINKS = _links(
    "job_id",
    "/id",
    ("get", "/v1/batch-jobs/{job_id}"),
    ("get", "/v1/batch-jobs/{job_id}/result"),
    ("post", "/v1/batch-jobs/{job_id}/cancel"),
)
