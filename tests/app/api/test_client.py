"""The Python client (`hhvaem.client`, sync and async) against the real service over HTTP: models, the three
questions, a questionnaire loop, batch jobs (upload, wait with progress, result, multiple imputation), and errors
raised with the problem's fields."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from hhvaem.app.api.schemas import ImputeResponse, NextFeaturesResponse
from hhvaem.client import AsyncClient, BatchJobFailed, Client, ProblemError
from tests.app.service import FEATURES, MODEL, ROW, SAMPLES, TARGET, Service


@pytest.fixture(scope="module")
def api(svc: Service):
    with Client(svc.url) as client:
        yield client


def test_models_and_the_three_questions(api: Client, svc: Service):
    assert MODEL in [m.name for m in api.models()]
    detail = api.model(MODEL)
    assert [f["name"] for f in detail.schema_["features"]] == list(FEATURES)
    out = api.impute(MODEL, [ROW, {"age": 40}], samples=SAMPLES, seed=1, quantiles=[0.1, 0.9])
    assert isinstance(out, ImputeResponse) and len(out.rows) == 2
    assert out.rows[0].values["age"] == 59 and set(out.rows[0].imputed["ldl"].quantiles) == {"0.1", "0.9"}
    # the same answer as a plain HTTP call
    raw = svc.client().post(
        f"/v1/models/{MODEL}/impute",
        json={"rows": [ROW, {"age": 40}], "samples": SAMPLES, "seed": 1, "quantiles": [0.1, 0.9]},
    )
    assert out.model_dump(mode="json", exclude_none=True) == ImputeResponse.model_validate(raw.json()).model_dump(
        mode="json", exclude_none=True
    )
    prediction = api.predict(MODEL, [ROW], samples=SAMPLES, seed=1).rows[0].targets[TARGET]
    assert prediction.std > 0
    ranked = api.next_features(MODEL, ROW, top_k=2, costs={"ldl": 5.0}, samples=SAMPLES, seed=1)
    assert isinstance(ranked, NextFeaturesResponse) and len(ranked.ranking) == 2
    assert all(r.feature not in ROW for r in ranked.ranking)


def test_errors_are_raised_with_the_problems_fields(api: Client):
    with pytest.raises(ProblemError) as e:
        api.impute(MODEL, [{"age": 59, "bmi": -3}], samples=SAMPLES)
    assert e.value.status == 422 and e.value.type == "/problems/validation-error"
    assert "rows.0.bmi" in e.value.fields and "negative" in e.value.fields["rows.0.bmi"]
    assert e.value.request_id
    with pytest.raises(ProblemError) as e:
        api.model("nope")
    assert e.value.status == 404 and "nope" in str(e.value)
    with pytest.raises(ProblemError) as e:
        api.session("0" * 32)
    assert e.value.status == 404


def test_a_questionnaire_in_five_lines(api: Client):
    """The README's loop: ask the best question until the model says stop (answers from a known patient)."""
    patient = {"bmi": 31.2, "blood_pressure": 95.0, "ldl": 110.0, "hdl": 45.0, "total_cholesterol": 190.0}
    patient |= {"cholesterol_ratio": 4.2, "triglycerides": 122.0, "blood_sugar": 92.0}
    asked = []
    s = api.start_session(MODEL, {"age": 54, "sex": 1})
    while not (step := s.next_features(top_k=1, samples=SAMPLES, seed=0, min_gain=0.05)).stop.stop:
        asked.append(step.ranking[0].feature)
        s.observe({asked[-1]: patient[asked[-1]]})
    assert s.prediction(samples=SAMPLES).targets[TARGET].std > 0
    assert [o.feature for o in s.refresh().observations] == ["age", "sex", *asked]
    assert len(set(asked)) == len(asked)  # never the same question twice
    s.delete()
    with pytest.raises(ProblemError) as e:
        s.refresh()
    assert e.value.status == 404


def _table(n: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"age": rng.integers(20, 80, n).astype(float), "bmi": rng.uniform(18, 40, n).round(1)})
    df.loc[::2, "bmi"] = np.nan
    return df


def test_batch_job_upload_wait_and_result(api: Client):
    df = _table()
    job = api.submit_batch_job(MODEL, df, operation="impute", samples=SAMPLES)
    seen = []
    done = api.wait_for_batch_job(job.id, timeout=120, progress=seen.append)
    assert done.status == "succeeded" and seen[-1].processed_rows == len(df)
    result = api.batch_job_result(job.id)
    assert len(result) == len(df) and not result["bmi"].isna().any()
    # multiple imputation: each row 3 times, imputation 1..3
    job = api.submit_batch_job(MODEL, df.to_csv(index=False).encode(), filename="t.csv", samples=SAMPLES, imputations=3)
    result = api.batch_job_result(api.wait_for_batch_job(job.id, timeout=120).id)
    assert len(result) == 3 * len(df) and result["imputation"].tolist() == [1, 2, 3] * len(df)
    holes = result["bmi"].to_numpy().reshape(len(df), 3)[::2]
    assert (holes.std(axis=1) > 0).all()  # three different draws per hole
    with pytest.raises(ProblemError) as e:
        api.submit_batch_job(MODEL, df, samples=SAMPLES, imputations=SAMPLES + 1)
    assert e.value.status == 422 and "imputations" in e.value.fields
    with pytest.raises(ProblemError) as e:
        api.submit_batch_job(MODEL, df, operation="predict", imputations=2)
    assert "impute or both" in e.value.fields["imputations"]


def test_batch_job_failure_is_raised(api: Client):
    with pytest.raises(ProblemError) as e:  # refused at upload: not a table of the model's columns
        api.submit_batch_job(MODEL, pd.DataFrame({"colour": ["red"] * 3}), samples=SAMPLES)
    assert e.value.status == 422 and "file" in e.value.fields
    assert issubclass(BatchJobFailed, Exception)


def test_async_client(svc: Service):
    async def run():
        async with AsyncClient(svc.url) as api:
            answers = await asyncio.gather(
                *(api.predict(MODEL, [{**ROW, "age": 40 + k}], samples=SAMPLES, seed=k) for k in range(4))
            )
            session = await api.start_session(MODEL, {"age": 60})
            step = await session.next_features(top_k=1, samples=SAMPLES, seed=0)
            await session.observe({step.ranking[0].feature: ROW.get(step.ranking[0].feature, 1)})
            prediction = await session.prediction(samples=SAMPLES)
            job = await api.submit_batch_job(MODEL, _table(4), operation="predict", samples=SAMPLES)
            result = await api.batch_job_result((await api.wait_for_batch_job(job.id, timeout=120)).id)
            with pytest.raises(ProblemError):
                await api.impute("nope", [ROW])
            await session.delete()
            return answers, prediction, result

    answers, prediction, result = asyncio.run(run())
    assert len({a.rows[0].targets[TARGET].mean for a in answers}) == 4
    assert prediction.targets[TARGET].std > 0
    assert f"{TARGET}__mean" in result.columns and len(result) == 4
