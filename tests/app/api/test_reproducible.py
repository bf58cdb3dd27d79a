"""Reproducible answers over HTTP: the same request to the same model version gives the same JSON, on one service
or two separately started ones, alone or batched, through v1, sessions and OIP v2
(docs/how-to/reproducible-answers.md)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton

from tests.app.service import MODEL, ROW, SAMPLES, Service

V1 = f"/v1/models/{MODEL}"
BODIES = {
    "impute": {"rows": [ROW, {"age": 40}], "samples": SAMPLES},
    "predict": {"rows": [ROW], "samples": SAMPLES},
    "next-features": {"row": ROW},  # the model's default samples, as in the user's report
}


@pytest.mark.parametrize("operation", list(BODIES))
def test_the_same_request_gives_the_same_json_twice_and_on_another_service(svc: Service, lite: Service, operation):
    body = BODIES[operation]
    first = svc.client().post(f"{V1}/{operation}", json=body)
    assert first.status_code == 200, first.text
    assert svc.client().post(f"{V1}/{operation}", json=body).json() == first.json()
    other = lite.client().post(f"{V1}/{operation}", json=body)  # another instance: its own database and state
    assert other.status_code == 200 and other.json() == first.json()
    seeded = svc.client().post(f"{V1}/{operation}", json={**body, "seed": 1}).json()
    assert seeded != first.json() and svc.client().post(f"{V1}/{operation}", json={**body, "seed": 2}).json() != seeded


def test_concurrent_requests_answer_as_they_do_alone(svc: Service):
    rows = [ROW, {"age": 30}, {"bmi": 20.0}, {"age": 70, "sex": 1}, {"blood_pressure": 90.0}, {"sex": 2}]
    alone = [svc.client().post(f"{V1}/predict", json={"rows": [r], "samples": SAMPLES}).json() for r in rows]

    def post(r):
        return svc.client().post(f"{V1}/predict", json={"rows": [r], "samples": SAMPLES}).json()

    with ThreadPoolExecutor(len(rows)) as pool:
        for _ in range(3):
            assert list(pool.map(post, rows)) == alone


def test_two_sessions_with_the_same_answers_get_the_same_next_question(svc: Service):
    c = svc.client()
    direct = c.post("/v1/sessions", json={"model": MODEL, "observations": ROW}).json()["session_id"]
    stepwise = c.post("/v1/sessions", json={"model": MODEL, "observations": {"age": 30}}).json()["session_id"]
    for answer in ({"sex": 2, "bmi": 32.1}, {"age": 59, "blood_pressure": 101.0}):  # a correction on the way
        assert c.post(f"/v1/sessions/{stepwise}/observations", json={"observations": answer}).status_code == 200
    q = {"samples": SAMPLES, "top_k": 3}
    a = c.get(f"/v1/sessions/{direct}/next-features", params=q).json()
    assert "ranking" in a and c.get(f"/v1/sessions/{stepwise}/next-features", params=q).json() == a
    p = c.get(f"/v1/sessions/{direct}/prediction", params={"samples": SAMPLES}).json()
    assert c.get(f"/v1/sessions/{stepwise}/prediction", params={"samples": SAMPLES}).json()["targets"] == p["targets"]
    # the session's answer is the stateless one for the same row
    assert c.post(f"{V1}/next-features", json={"row": ROW, **q}).json()["ranking"] == a["ranking"]


def _infer(service: Service, **parameters):
    client = triton.InferenceServerClient(service.url.removeprefix("http://"), network_timeout=60)
    try:
        x = np.full((1, 10), np.nan, np.float32)
        x[0, :4] = [59, 1, 32.1, 101.0]  # age, sex (the code of 2), bmi, blood_pressure
        inp = triton.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(MODEL, [inp], parameters={"samples": SAMPLES, **parameters})
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}
    finally:
        client.close()


def test_oip_v2_gives_the_same_outputs_for_the_same_inputs(svc: Service, lite: Service):
    first = _infer(svc)
    for again in (_infer(svc), _infer(lite)):
        assert again.keys() == first.keys()
        for name, value in first.items():
            np.testing.assert_array_equal(again[name], value)
    seeded = _infer(svc, seed=3)
    assert any(not np.array_equal(seeded[n], first[n]) for n in first if first[n].dtype.kind == "f")
