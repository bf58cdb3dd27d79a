"""A typed Python client for the hhvaem HTTP API (v1): `Client` (sync) and `AsyncClient` (asyncio), over httpx.

    from hhvaem.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as api:
        print(api.impute("diabetes", [{"age": 59, "bmi": None}]).rows[0].values)

Answers are the service's own response models (`hhvaem.app.api.schemas`, pydantic), so they are typed and always
in step with the server. Every error answer (RFC 9457 problem+json) is raised as `ProblemError`, carrying its
status, type, title, detail, request id and the per-field `errors`; transport failures are httpx's exceptions.
A questionnaire is a `Session` (`start_session`), a batch job is submitted, awaited with progress and fetched as
a pandas DataFrame.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from pydantic import TypeAdapter

from hhvaem.app.api.schemas import (
    BatchJobOut,
    ImputeResponse,
    ModelDetail,
    ModelInfo,
    NextFeaturesResponse,
    PredictResponse,
    RegisteredModel,
    SessionOut,
    SessionPrediction,
)

__all__ = ["AsyncClient", "AsyncSession", "BatchJobFailed", "Client", "ProblemError", "Session"]

Row = Mapping[str, Any]
Table = str | Path | pd.DataFrame | bytes
FINAL = ("succeeded", "failed", "cancelled")


class ProblemError(Exception):
    """An error answer of the service (problem+json): `status`, `type`, `title`, `detail`, `errors`
    ([{"field", "reason"}]), `request_id`, and the whole `body`."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status = status
        self.body = body
        self.type: str = body.get("type", "about:blank")
        self.title: str = body.get("title", "")
        self.detail: str | None = body.get("detail")
        self.errors: list[dict[str, Any]] = list(body.get("errors") or [])
        self.request_id: str | None = body.get("request_id")
        super().__init__(f"{status} {self.title}: {self.detail or ''}".strip())

    @property
    def fields(self) -> dict[str, str]:
        """{field: reason} of every offending field."""
        return {e.get("field", ""): e.get("reason", "") for e in self.errors}

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        body.setdefault("title", response.reason_phrase)
        body.setdefault("detail", response.text[:500] or None)
        return cls(response.status_code, body)


class BatchJobFailed(Exception):
    """A batch job ended without a result (failed or cancelled); `job` says why (`job.message`)."""

    def __init__(self, job: BatchJobOut):
        self.job = job
        super().__init__(f"batch job {job.id} {job.status}: {job.message or ''}".strip())


@dataclass(frozen=True)
class _Call:
    """One HTTP call and how to read its answer (`model`: a pydantic type, None for the raw response)."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    model: Any = None
    expect: tuple[int, ...] = field(default=(200, 201, 202, 204))


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _read(call: _Call, response: httpx.Response) -> Any:
    if response.status_code >= 400 or response.status_code not in call.expect:
        raise ProblemError.from_response(response)
    if call.model is None:
        return response
    return TypeAdapter(call.model).validate_python(response.json())


def _costs(costs: Mapping[str, float] | None) -> str | None:
    return None if not costs else ",".join(f"{k}:{v}" for k, v in costs.items())


def _table(table: Table, filename: str | None) -> tuple[str, bytes]:
    if isinstance(table, pd.DataFrame):
        return filename or "table.csv", table.to_csv(index=False).encode()
    if isinstance(table, bytes):
        if not filename:
            raise ValueError("filename: give the name (.csv, .csv.gz or .parquet) of a table passed as bytes")
        return filename, table
    path = Path(table)
    return filename or path.name, path.read_bytes()


class _Calls:
    """The API's calls, shared by the sync and the async client."""

    @staticmethod
    def models() -> _Call:
        return _Call("GET", "/v1/models", model=list[ModelInfo])

    @staticmethod
    def model(name: str, version: int | None) -> _Call:
        return _Call("GET", f"/v1/models/{name}", params=_drop_none({"version": version}), model=ModelDetail)

    @staticmethod
    def register_model(path: str, name: str | None, activate: bool, force: bool) -> _Call:
        body = _drop_none({"path": str(path), "name": name, "activate": activate, "force": force or None})
        return _Call("POST", "/v1/models", json=body, model=RegisteredModel)

    @staticmethod
    def activate(name: str, version: int) -> _Call:
        return _Call("POST", f"/v1/models/{name}/versions/{version}/activate", model=ModelInfo)

    @staticmethod
    def retire(name: str, version: int, reason: str | None) -> _Call:
        body = _drop_none({"reason": reason})
        return _Call("POST", f"/v1/models/{name}/versions/{version}/retire", json=body, model=ModelInfo)

    @staticmethod
    def rows(kind: str, model: str, rows, samples, quantiles, seed, return_samples, version) -> _Call:
        body = _drop_none({"rows": [dict(r) for r in rows], "samples": samples, "seed": seed})
        if quantiles is not None:
            body["quantiles"] = list(quantiles)
        if return_samples:
            body["return_samples"] = True
        response = ImputeResponse if kind == "impute" else PredictResponse
        params = _drop_none({"version": version})
        return _Call("POST", f"/v1/models/{model}/{kind}", json=body, params=params, model=response)

    @staticmethod
    def next_features(model: str, row: Row, version: int | None, **options: Any) -> _Call:
        body = {"row": dict(row), **_drop_none(options)}
        params = _drop_none({"version": version})
        return _Call("POST", f"/v1/models/{model}/next-features", json=body, params=params, model=NextFeaturesResponse)

    @staticmethod
    def start_session(model: str, observations: Row | None, version: int | None) -> _Call:
        body = _drop_none({"model": model, "version": version, "observations": dict(observations or {})})
        return _Call("POST", "/v1/sessions", json=body, model=SessionOut)

    @staticmethod
    def session(session_id: str) -> _Call:
        return _Call("GET", f"/v1/sessions/{session_id}", model=SessionOut)

    @staticmethod
    def observe(session_id: str, observations: Row) -> _Call:
        body = {"observations": dict(observations)}
        return _Call("POST", f"/v1/sessions/{session_id}/observations", json=body, model=SessionOut)

    @staticmethod
    def session_next_features(session_id: str, costs, exclude, **options: Any) -> _Call:
        params = _drop_none({**options, "costs": _costs(costs), "exclude": ",".join(exclude) if exclude else None})
        return _Call("GET", f"/v1/sessions/{session_id}/next-features", params=params, model=NextFeaturesResponse)

    @staticmethod
    def session_prediction(session_id: str, samples: int | None, seed: int | None) -> _Call:
        params = _drop_none({"samples": samples, "seed": seed})
        return _Call("GET", f"/v1/sessions/{session_id}/prediction", params=params, model=SessionPrediction)

    @staticmethod
    def delete_session(session_id: str) -> _Call:
        return _Call("DELETE", f"/v1/sessions/{session_id}")

    @staticmethod
    def submit_batch_job(model, table, operation, samples, imputations, version, filename) -> _Call:
        name, content = _table(table, filename)
        form = _drop_none(
            {"model": model, "operation": operation, "samples": samples, "imputations": imputations, "version": version}
        )
        files = {"file": (name, content, "application/octet-stream")}
        return _Call(
            "POST", "/v1/batch-jobs", files=files, data={k: str(v) for k, v in form.items()}, model=BatchJobOut
        )

    @staticmethod
    def batch_job(job_id: str) -> _Call:
        return _Call("GET", f"/v1/batch-jobs/{job_id}", model=BatchJobOut)

    @staticmethod
    def batch_job_result(job_id: str) -> _Call:
        return _Call("GET", f"/v1/batch-jobs/{job_id}/result")

    @staticmethod
    def cancel_batch_job(job_id: str) -> _Call:
        return _Call("POST", f"/v1/batch-jobs/{job_id}/cancel", model=BatchJobOut)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _result_frame(response: httpx.Response) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(response.content))


class Client:
    """The sync client. `base_url` of the service, `api_key` when it requires one; other keyword arguments go to
    `httpx.Client` (e.g. `transport=httpx.ASGITransport(app)` or `timeout`)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, **httpx_options: Any):
        httpx_options.setdefault("timeout", 60.0)
        headers = {**_headers(api_key), **httpx_options.pop("headers", {})}
        self.http = httpx.Client(base_url=base_url, headers=headers, **httpx_options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, call: _Call) -> Any:
        response = self.http.request(
            call.method, call.path, json=call.json, params=call.params, files=call.files, data=call.data
        )
        return _read(call, response)

    # ---- models -------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return self._send(_Calls.models())

    def model(self, name: str, version: int | None = None) -> ModelDetail:
        return self._send(_Calls.model(name, version))

    def register_model(
        self, path: str | Path, name: str | None = None, activate: bool = True, force: bool = False
    ) -> RegisteredModel:
        """Registers an artifact directory on the server (admin); `force` accepts a schema that breaks the clients
        of the name's active version (listed in `schema_changes`)."""
        return self._send(_Calls.register_model(str(path), name, activate, force))

    def activate(self, name: str, version: int) -> ModelInfo:
        return self._send(_Calls.activate(name, version))

    def retire(self, name: str, version: int, reason: str | None = None) -> ModelInfo:
        """Retires a version for good (admin): requests for it get 410 from then on."""
        return self._send(_Calls.retire(name, version, reason))

    # ---- the three questions ------------------------------------------------------------
    def impute(
        self,
        model: str,
        rows: Sequence[Row],
        *,
        samples: int | None = None,
        quantiles: Sequence[float] | None = None,
        seed: int | None = None,
        return_samples: bool = False,
        version: int | None = None,
    ) -> ImputeResponse:
        return self._send(_Calls.rows("impute", model, rows, samples, quantiles, seed, return_samples, version))

    def predict(
        self,
        model: str,
        rows: Sequence[Row],
        *,
        samples: int | None = None,
        quantiles: Sequence[float] | None = None,
        seed: int | None = None,
        return_samples: bool = False,
        version: int | None = None,
    ) -> PredictResponse:
        return self._send(_Calls.rows("predict", model, rows, samples, quantiles, seed, return_samples, version))

    def next_features(
        self, model: str, row: Row, *, version: int | None = None, **options: Any
    ) -> NextFeaturesResponse:
        """Options: candidates, costs ({feature: cost}), top_k, target, method, min_gain, max_uncertainty, samples,
        seed (as `POST /v1/models/{name}/next-features`)."""
        return self._send(_Calls.next_features(model, row, version, **options))

    # ---- questionnaire sessions ---------------------------------------------------------
    def start_session(self, model: str, observations: Row | None = None, version: int | None = None) -> Session:
        return Session(self, self._send(_Calls.start_session(model, observations, version)))

    def session(self, session_id: str) -> Session:
        return Session(self, self._send(_Calls.session(session_id)))

    # ---- batch jobs ---------------------------------------------------------------------
    def submit_batch_job(
        self,
        model: str,
        table: Table,
        *,
        operation: str = "both",
        samples: int | None = None,
        imputations: int | None = None,
        version: int | None = None,
        filename: str | None = None,
    ) -> BatchJobOut:
        """Uploads `table` (a file path, a DataFrame, or bytes with `filename`) for scoring in the background."""
        return self._send(_Calls.submit_batch_job(model, table, operation, samples, imputations, version, filename))

    def batch_job(self, job_id: str) -> BatchJobOut:
        return self._send(_Calls.batch_job(job_id))

    def wait_for_batch_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.25,
        progress: Callable[[BatchJobOut], None] | None = None,
    ) -> BatchJobOut:
        """Polls until the job has succeeded (returns it), failed or was cancelled (BatchJobFailed), or `timeout`
        seconds passed (TimeoutError); `progress(job)` sees every state polled."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.batch_job(job_id)
            if progress:
                progress(job)
            if job.status in FINAL:
                return _finished(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch job {job_id} is still {job.status} after {timeout:g} s")
            time.sleep(poll)

    def batch_job_result(self, job_id: str) -> pd.DataFrame:
        return _result_frame(self._send(_Calls.batch_job_result(job_id)))

    def cancel_batch_job(self, job_id: str) -> BatchJobOut:
        return self._send(_Calls.cancel_batch_job(job_id))


class AsyncClient:
    """The asyncio client: the same methods as `Client`, awaited. Keyword arguments go to `httpx.AsyncClient`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, **httpx_options: Any):
        httpx_options.setdefault("timeout", 60.0)
        headers = {**_headers(api_key), **httpx_options.pop("headers", {})}
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers, **httpx_options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _send(self, call: _Call) -> Any:
        response = await self.http.request(
            call.method, call.path, json=call.json, params=call.params, files=call.files, data=call.data
        )
        return _read(call, response)

    async def models(self) -> list[ModelInfo]:
        return await self._send(_Calls.models())

    async def model(self, name: str, version: int | None = None) -> ModelDetail:
        return await self._send(_Calls.model(name, version))

    async def register_model(
        self, path: str | Path, name: str | None = None, activate: bool = True, force: bool = False
    ) -> RegisteredModel:
        return await self._send(_Calls.register_model(str(path), name, activate, force))

    async def activate(self, name: str, version: int) -> ModelInfo:
        return await self._send(_Calls.activate(name, version))

    async def retire(self, name: str, version: int, reason: str | None = None) -> ModelInfo:
        return await self._send(_Calls.retire(name, version, reason))

    async def impute(
        self,
        model: str,
        rows: Sequence[Row],
        *,
        samples: int | None = None,
        quantiles: Sequence[float] | None = None,
        seed: int | None = None,
        return_samples: bool = False,
        version: int | None = None,
    ) -> ImputeResponse:
        return await self._send(_Calls.rows("impute", model, rows, samples, quantiles, seed, return_samples, version))

    async def predict(
        self,
        model: str,
        rows: Sequence[Row],
        *,
        samples: int | None = None,
        quantiles: Sequence[float] | None = None,
        seed: int | None = None,
        return_samples: bool = False,
        version: int | None = None,
    ) -> PredictResponse:
        return await self._send(_Calls.rows("predict", model, rows, samples, quantiles, seed, return_samples, version))

    async def next_features(
        self, model: str, row: Row, *, version: int | None = None, **options: Any
    ) -> NextFeaturesResponse:
        return await self._send(_Calls.next_features(model, row, version, **options))

    async def start_session(
        self, model: str, observations: Row | None = None, version: int | None = None
    ) -> AsyncSession:
        return AsyncSession(self, await self._send(_Calls.start_session(model, observations, version)))

    async def session(self, session_id: str) -> AsyncSession:
        return AsyncSession(self, await self._send(_Calls.session(session_id)))

    async def submit_batch_job(
        self,
        model: str,
        table: Table,
        *,
        operation: str = "both",
        samples: int | None = None,
        imputations: int | None = None,
        version: int | None = None,
        filename: str | None = None,
    ) -> BatchJobOut:
        return await self._send(
            _Calls.submit_batch_job(model, table, operation, samples, imputations, version, filename)
        )

    async def batch_job(self, job_id: str) -> BatchJobOut:
        return await self._send(_Calls.batch_job(job_id))

    async def wait_for_batch_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.25,
        progress: Callable[[BatchJobOut], None] | None = None,
    ) -> BatchJobOut:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.batch_job(job_id)
            if progress:
                progress(job)
            if job.status in FINAL:
                return _finished(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch job {job_id} is still {job.status} after {timeout:g} s")
            await asyncio.sleep(poll)

    async def batch_job_result(self, job_id: str) -> pd.DataFrame:
        return _result_frame(await self._send(_Calls.batch_job_result(job_id)))

    async def cancel_batch_job(self, job_id: str) -> BatchJobOut:
        return await self._send(_Calls.cancel_batch_job(job_id))


def _finished(job: BatchJobOut) -> BatchJobOut:
    if job.status != "succeeded":
        raise BatchJobFailed(job)
    return job


class Session:
    """A questionnaire session: `state` is its last known state (answers so far)."""

    def __init__(self, client: Client, state: SessionOut):
        self.client, self.state = client, state

    @property
    def id(self) -> str:
        return self.state.session_id

    def observe(self, observations: Row) -> SessionOut:
        """Records answers (answering again corrects; None retracts)."""
        self.state = self.client._send(_Calls.observe(self.id, observations))
        return self.state

    def next_features(
        self,
        *,
        top_k: int | None = None,
        costs: Mapping[str, float] | None = None,
        exclude: Sequence[str] | None = None,
        **options: Any,
    ) -> NextFeaturesResponse:
        """What to ask next; options: method, min_gain, max_uncertainty, samples, seed."""
        return self.client._send(_Calls.session_next_features(self.id, costs, exclude, top_k=top_k, **options))

    def prediction(self, samples: int | None = None, seed: int | None = None) -> SessionPrediction:
        return self.client._send(_Calls.session_prediction(self.id, samples, seed))

    def refresh(self) -> SessionOut:
        self.state = self.client._send(_Calls.session(self.id))
        return self.state

    def delete(self) -> None:
        self.client._send(_Calls.delete_session(self.id))


class AsyncSession:
    """`Session` for the asyncio client."""

    def __init__(self, client: AsyncClient, state: SessionOut):
        self.client, self.state = client, state

    @property
    def id(self) -> str:
        return self.state.session_id

    async def observe(self, observations: Row) -> SessionOut:
        self.state = await self.client._send(_Calls.observe(self.id, observations))
        return self.state

    async def next_features(
        self,
        *,
        top_k: int | None = None,
        costs: Mapping[str, float] | None = None,
        exclude: Sequence[str] | None = None,
        **options: Any,
    ) -> NextFeaturesResponse:
        return await self.client._send(_Calls.session_next_features(self.id, costs, exclude, top_k=top_k, **options))

    async def prediction(self, samples: int | None = None, seed: int | None = None) -> SessionPrediction:
        return await self.client._send(_Calls.session_prediction(self.id, samples, seed))

    async def refresh(self) -> SessionOut:
        self.state = await self.client._send(_Calls.session(self.id))
        return self.state

    async def delete(self) -> None:
        await self.client._send(_Calls.delete_session(self.id))
