"""The Open Inference Protocol v2 (KServe / Triton / Seldon "V2" REST), next to the v1 API.

Health, server and model metadata, and inference. Inference runs the v1 request path (`answer` with the engine's
query objects: the same validation, limits, dynamic batching and audit); the tensors are `app/api/tensors.py`'s,
the wire format (JSON and Triton's binary tensor extension) `app/api/oip.py`'s. Every error is the protocol's
`{"error": "..."}` (400 for a bad request, 401/403/404/410/413/503 as in v1: 410 for a retired version).
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version as package_version
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from hhvaem.app.api.answer import answer, recommended, row_count
from hhvaem.app.api.deps import Inferrer, State, check_samples, resolve_model
from hhvaem.app.api.oip import (
    CLIENT_PARAMETERS,
    DTYPES,
    HEADER_LENGTH,
    InferenceRequest,
    ProtocolError,
    encode_response,
    error_body,
    parse_request,
)
from hhvaem.app.api.problems import Problem, validation_errors
from hhvaem.app.api.routes.health import readiness
from hhvaem.app.api.schemas import MAX_VERSION, SEED_DESCRIPTION
from hhvaem.app.api.tensors import OPERATIONS, ModelTensors
from hhvaem.app.engine import ImputeQuery, InputError, NextFeaturesQuery, PredictQuery
from hhvaem.app.engine.queries import DEFAULT_QUANTILES

# Request parameters of each operation, besides samples and seed.
PARAMETERS = {
    "impute": {"quantiles", "calibrated", "plausibility", "plausibility_threshold"},
    "predict": {"quantiles", "calibrated", "plausibility", "plausibility_threshold"},
    "next_features": {
        "quantiles",
        "calibrated",
        "top_k",
        "target",
        "method",
        "costs",
        "candidates",
        "exclude",
        "min_gain",
    }
    | {"max_uncertainty"},
}
EVENTS = {"impute": "imputation.served", "predict": "prediction.served", "next_features": "recommendation.served"}


class ProtocolRoute(APIRoute):
    """Renders every error of a v2 route, its dependencies' included, as {"error": "..."}."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except ProtocolError as e:
                return JSONResponse(error_body(e.message), status_code=e.status)
            except Problem as p:  # auth, unknown model, limits, body size, an engine's input error
                status = 400 if p.status == 422 else p.status
                return JSONResponse(error_body(p.detail or p.title), status_code=status, headers=p.headers)
            except RequestValidationError as e:
                text = "; ".join(f"{err['field']}: {err['reason']}" for err in validation_errors(e))
                return JSONResponse(error_body(text), status_code=400)

        return route


router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], route_class=ProtocolRoute)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "hhvaem", "version": package_version("hhvaem"), "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server live (200: live)")
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="Server ready (200: what /readyz calls ready; else 400)")
async def ready(state: State) -> Response:
    _, _, failing = await readiness(state)  # one answer for both protocols
    return Response(status_code=400 if failing else 200)


def _version(version: str | None) -> int | None:
    if version is None:
        return None
    if not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
        raise ProtocolError(f"model version {version!r}: must be a positive integer")
    return int(version)


@router.get("/models/{name}/ready", summary="Model ready (200: ready, 404: unknown, 400: cannot load)")
@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready")
async def model_ready(name: str, state: State, caller: Inferrer, version: str | None = None) -> Response:
    try:
        await run_in_threadpool(resolve_model, state.registry, name, _version(version))
    except Problem as p:
        return Response(status_code=404 if p.status == 404 else 400)
    return Response(status_code=200)


@router.get("/models/{name}", summary="Model metadata: inputs, outputs, datatypes, shapes")
@router.get("/models/{name}/versions/{version}", summary="Model version metadata")
async def model_metadata(name: str, state: State, caller: Inferrer, version: str | None = None) -> dict[str, Any]:
    m = await run_in_threadpool(resolve_model, state.registry, name, _version(version))
    records = await run_in_threadpool(state.registry.records)
    versions = sorted(r.version for r in records if r.name == m.name and not r.retired)  # those it may be asked for
    inputs, outputs, parameters = ModelTensors(m.engine.schema).metadata()
    return {
        "name": m.name,
        "versions": [str(v) for v in versions],
        "platform": "hhvaem_" + m.engine.backend_name.split(":")[0],
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {**parameters, "version": str(m.version), **card_parameters(m.engine.manifest)},
    }


def card_parameters(manifest: dict[str, Any]) -> dict[str, Any]:
    """The model card's headline figures as protocol parameters (scalars only), and the whole card as JSON text
    (`model_card`: manifest `metrics.quality`, what GET /v1/models/{name} serves under `metrics`)."""
    q = manifest.get("metrics", {}).get("quality")
    if not q:
        return {}
    out: dict[str, Any] = {"model_card": json.dumps(q, separators=(",", ":"))}
    for key in ("rows", "held_out", "rmse_xu", "acc_xu", "target_rmse", "target_accuracy"):
        if key in q:
            out[f"quality_{key}"] = q[key]
    for method, figures in q.get("baselines", {}).items():
        for key in ("rmse_xu", "acc_xu", "target_rmse", "target_accuracy"):
            if isinstance(figures, dict) and key in figures:
                out[f"{method}_{key}"] = figures[key]
    served = "calibrated" if q.get("calibration_applied", True) else "raw"
    for role, figures in q.get("interval_coverage", {}).items():
        out[f"coverage90_{role}"] = figures[f"{served}_cover90"]
    return out


def _query(tensors: ModelTensors, req: InferenceRequest, operation: str, options: dict[str, Any], max_rows: int):
    """The engine's query for the request's tensors (decoded against the model's schema)."""
    rows = tensors.rows(req.inputs)
    if len(rows) > max_rows:
        raise ProtocolError(f"input 'features': at most {max_rows} rows per request, got {len(rows)}")
    o = options
    if operation == "next_features":
        if len(rows) != 1:
            raise ProtocolError(f"input 'features': next_features takes one row, got {len(rows)}")
        return NextFeaturesQuery(rows[0], **o)
    kind = ImputeQuery if operation == "impute" else PredictQuery
    return kind(
        rows,
        o["samples"],
        o["quantiles"],
        o["seed"],
        calibrated=o["calibrated"],
        plausibility=o["plausibility"],
        plausibility_threshold=o["plausibility_threshold"],
    )


# The inference request as the protocol defines it (the body is read raw: JSON, or JSON plus binary tensors), with
# this service's parameters spelled out: the OpenAPI page documents them and the fuzz test generates from them.
_PARAMETER = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "examples": ["features"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "examples": [[1, 10]]},
        "datatype": {"type": "string", "enum": list(DTYPES), "examples": ["FP32"]},
        "parameters": {"type": "object", "additionalProperties": _PARAMETER},
        "data": {"type": "array", "description": "Row-major, flat or nested; null (or NaN) for a hole."},
    },
}
_PARAMETERS = {
    "type": "object",
    "properties": {
        "operation": {"type": "string", "enum": list(OPERATIONS)},
        "samples": {"type": "integer"},
        "seed": {"type": "integer", "description": SEED_DESCRIPTION},
        "quantiles": {"type": "string", "description": "Comma-separated, each in (0, 1).", "examples": ["0.05,0.5"]},
        "calibrated": {"type": "boolean", "description": "false: the model's raw quantiles (default true)."},
        "plausibility": {"type": "boolean", "description": "impute, predict: also the `plausibility` output."},
        "plausibility_threshold": {"type": "number"},
        "costs": {"type": "string", "description": "next_features: feature:cost,...", "examples": ["bmi:1,ldl:5"]},
        "top_k": {"type": "integer"},
        "target": {"type": "string"},
        "method": {"type": "string", "enum": ["mixture", "histogram"]},
        "candidates": {"type": "string", "description": "next_features: comma-separated feature names."},
        "exclude": {"type": "string"},
        "min_gain": {"type": "number"},
        "max_uncertainty": {"type": "number"},
        "binary_data_output": {"type": "boolean"},
    },
    "additionalProperties": _PARAMETER,
}
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": _PARAMETERS,
                        "inputs": {"type": "array", "items": _TENSOR},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object", "additionalProperties": _PARAMETER},
                                },
                            },
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/models/{name}/infer",
    summary="Inference: impute, predict or next_features (parameters.operation)",
    openapi_extra=INFER_BODY,
)
@router.post(
    "/models/{name}/versions/{version}/infer", summary="Inference with a model version", openapi_extra=INFER_BODY
)
async def infer(name: str, request: Request, state: State, caller: Inferrer, version: str | None = None) -> Response:
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported: send the body uncompressed")
    req = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
    operation, options = _options(state, req.parameters)

    def decode():  # the tensors need the model's schema: resolve it first (SQL, in the threadpool)
        m = resolve_model(state.registry, name, _version(version))
        tensors = ModelTensors(m.engine.schema)
        return m, tensors, _query(tensors, req, operation, options, state.settings.max_rows)

    m, tensors, query = await run_in_threadpool(decode)
    detail = recommended if operation == "next_features" else row_count
    # pinned to the version the tensors were decoded for
    m, out = await answer(
        state, caller, query, m.name, m.version, EVENTS[operation], detail=detail, problem=_input_problem
    )
    quantiles = options["quantiles"]
    parameters: dict[str, Any] = {"operation": operation}
    if operation == "impute":
        outputs = tensors.imputed(out, quantiles)
    elif operation == "predict":
        outputs = tensors.predicted(out, quantiles)
    else:
        outputs, extra = tensors.ranked(out)
        parameters |= extra
    if options.get("plausibility"):
        outputs.append(tensors.plausibility(out))
    outputs, binary = _selected(req, operation, tensors, outputs)
    body, head = encode_response(m.name, m.version, req.id, outputs, binary, parameters)
    if head is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head)})


def _input_problem(e: InputError) -> Problem:
    """The engine's per-cell errors in the protocol's terms: the input tensor, row and column; or the parameter."""
    parts = []
    for err in e.errors:
        if err.row is not None:
            parts.append(f"input 'features' row {err.row}, column {err.field!r}: {err.reason}")
        else:
            parts.append(f"parameters.{err.field}: {err.reason}")
    return Problem(
        400, "Bad Request", "; ".join(parts[:5]) + (f" (and {len(parts) - 5} more)" if len(parts) > 5 else "")
    )


def _options(state, parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(operation, the query's options) from the request's parameters; every misfit named."""
    p = {k: v for k, v in parameters.items() if k not in CLIENT_PARAMETERS}
    operation = str(p.pop("operation", "impute")).replace("-", "_")
    if operation not in OPERATIONS:
        raise ProtocolError(f"parameters.operation: {operation!r} is not one of {', '.join(OPERATIONS)}")
    unknown = sorted(set(p) - PARAMETERS[operation] - {"samples", "seed"})
    if unknown:
        known = ", ".join(sorted(PARAMETERS[operation] | {"samples", "seed"}))
        raise ProtocolError(f"parameters.{unknown[0]}: not a parameter of {operation} (known: {known})")
    samples = _integer(p, "samples", 2)
    options: dict[str, Any] = {
        "samples": check_samples(state.settings, samples),
        "seed": _integer(p, "seed", 0),
        "quantiles": _quantiles(p.get("quantiles")),
        "calibrated": _flag(p, "calibrated", True),
    }
    if operation != "next_features":
        threshold = _number(p, "plausibility_threshold", 0.01)
        if not 0 < threshold < 1:
            raise ProtocolError(f"parameters.plausibility_threshold: must lie in (0, 1), got {threshold!r}")
        options |= {"plausibility": _flag(p, "plausibility", False), "plausibility_threshold": threshold}
    if operation == "next_features":
        options |= {
            "top_k": _integer(p, "top_k", 1),
            "target": _text(p, "target"),
            "method": _text(p, "method") or "mixture",
            "costs": _costs(p.get("costs")),
            "candidates": _names(p, "candidates"),
            "exclude": _names(p, "exclude") or (),
            "min_gain": _number(p, "min_gain", 0.01),
            "max_uncertainty": _number(p, "max_uncertainty", None),
        }
    return operation, options


def _integer(p: dict[str, Any], key: str, least: int) -> int | None:
    v = p.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise ProtocolError(f"parameters.{key}: must be an integer >= {least}, got {v!r}")
    return v


def _flag(p: dict[str, Any], key: str, default: bool) -> bool:
    v = p.get(key, default)
    if not isinstance(v, bool):
        raise ProtocolError(f"parameters.{key}: must be true or false, got {v!r}")
    return v


def _number(p: dict[str, Any], key: str, default: float | None) -> float | None:
    v = p.get(key, default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
        raise ProtocolError(f"parameters.{key}: must be a non-negative number, got {v!r}")
    return v


def _text(p: dict[str, Any], key: str) -> str | None:
    v = p.get(key)
    if v is not None and not isinstance(v, str):
        raise ProtocolError(f"parameters.{key}: must be a string, got {v!r}")
    return v


def _names(p: dict[str, Any], key: str) -> tuple[str, ...] | None:
    v = _text(p, key)
    return None if v is None else tuple(s.strip() for s in v.split(",") if s.strip())


def _quantiles(v: Any) -> tuple[float, ...]:
    if v is None:
        return DEFAULT_QUANTILES
    try:
        qs = tuple(float(s) for s in (str(v).split(",") if isinstance(v, str) else [v]))
    except ValueError:
        raise ProtocolError(f"parameters.quantiles: {v!r} is not a comma-separated list of numbers") from None
    if not qs or any(not 0 < q < 1 for q in qs):
        raise ProtocolError(f"parameters.quantiles: each quantile must lie in (0, 1), got {v!r}")
    return qs


def _costs(v: Any) -> dict[str, float] | None:
    if v is None:
        return None
    costs = {}
    for part in str(v).split(","):
        feature, sep, value = part.partition(":")
        try:
            cost = float(value)
        except ValueError:
            cost = None
        if not sep or cost is None:
            raise ProtocolError(f"parameters.costs: {part!r} is not feature:cost")
        costs[feature.strip()] = cost
    return costs


def _selected(req: InferenceRequest, operation: str, tensors: ModelTensors, outputs):
    """The outputs asked for (all by default) and which of them go as binary data."""
    produced = {o.name: o for o in outputs}
    if req.outputs is None:
        return outputs, ({o.name for o in outputs} if req.binary_output else set())
    chosen, binary = [], set()
    for name, params in req.outputs:
        if name not in produced:
            gives = ", ".join(tensors.output_names(operation))
            raise ProtocolError(f"output {name!r}: not an output of {operation} for this model (it gives: {gives})")
        chosen.append(produced[name])
        if params.get("binary_data", req.binary_output):
            binary.add(name)
    return chosen, binary
