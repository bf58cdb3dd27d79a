"""Questionnaire sessions over real HTTP: real Redis (the main configuration), the in-process store (smoke subset),
and a throwaway redis-server that the tests stop and restart under a running service (outage and recovery), with
a one-second idle TTL (expiry)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.app.service import (
    FEATURES,
    MODEL,
    SAMPLES,
    TARGET,
    Service,
    ThrowawayRedis,
    activate,
    problem,
    reason,
    running_service,
    second_version,
)

Q = {"samples": SAMPLES, "seed": 0}


@pytest.fixture(scope="module")
def throwaway(tmp_path_factory: pytest.TempPathFactory):
    redis = ThrowawayRedis(tmp_path_factory.mktemp("throwaway-redis"))
    yield redis
    if redis.running:
        redis.stop()


@pytest.fixture(scope="module")
def short(request: pytest.FixtureRequest, tmp_path_factory, throwaway: ThrowawayRedis):
    """PostgreSQL + the throwaway Redis (not started yet), sessions idle-expire after 1 s and hold 6 answers."""
    from tests.app.service import artifact_dir

    folder = tmp_path_factory.mktemp("service-short")
    with running_service(
        artifact_dir(request),
        folder,
        redis_url=throwaway.url,
        session_ttl_seconds=1,
        session_max_observations=6,
        default_samples=SAMPLES,
    ) as service:
        yield service


def new_session(c: httpx.Client, observations: dict | None = None, **extra) -> dict:
    r = c.post("/v1/sessions", json={"model": MODEL, "observations": observations or {}, **extra})
    assert r.status_code == 201, r.text
    return r.json()


# ------------------------------------------------------------------------------------------------------ lifecycle


def test_session_lifecycle(any_svc: Service) -> None:
    c = any_svc.client()
    r = c.post("/v1/sessions", json={"model": MODEL, "observations": {"age": 59}})
    assert r.status_code == 201, r.text
    s = r.json()
    sid = s["session_id"]
    assert r.headers["location"] == f"/v1/sessions/{sid}"
    assert s["model"] == MODEL and s["version"] >= 1 and s["expires_in"] == any_svc.settings.session_ttl_seconds
    assert [(o["feature"], o["value"], o["seq"]) for o in s["observations"]] == [("age", 59, 0)]
    assert s["current"] == {"age": 59} and s["created_at"] == s["updated_at"]
    assert c.get(f"/v1/sessions/{sid}").json() == s

    r = c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 30.5, "sex": 2}})
    assert r.status_code == 200, r.text
    assert r.json()["current"] == {"age": 59, "bmi": 30.5, "sex": 2}
    # A correction keeps both answers in the history; `current` holds the latest.
    c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 33.25}})
    # A retraction (null) is recorded and removes the answer from `current`.
    s = c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"sex": None}}).json()
    assert [(o["feature"], o["value"]) for o in s["observations"]] == [
        ("age", 59),
        ("bmi", 30.5),
        ("sex", 2),
        ("bmi", 33.25),
        ("sex", None),
    ]
    assert [o["seq"] for o in s["observations"]] == [0, 1, 2, 3, 4]
    ats = [o["at"] for o in s["observations"]]
    assert ats == sorted(ats) and s["updated_at"] == ats[-1] >= s["created_at"]
    assert s["current"] == {"age": 59, "bmi": 33.25}
    assert c.get(f"/v1/sessions/{sid}").json() == s

    p = c.get(f"/v1/sessions/{sid}/prediction", params=Q)
    assert p.status_code == 200, p.text
    assert p.json()["session_id"] == sid and p.json()["targets"][TARGET]["mean"] > 0
    n = c.get(f"/v1/sessions/{sid}/next-features", params={**Q, "top_k": 3})
    assert n.status_code == 200 and len(n.json()["ranking"]) == 3
    assert {x["feature"] for x in n.json()["ranking"]}.isdisjoint({"age", "bmi"})

    assert c.delete(f"/v1/sessions/{sid}").status_code == 204
    for method, path in [
        ("GET", ""),
        ("GET", "/prediction"),
        ("GET", "/next-features"),
        ("DELETE", ""),
    ]:
        body = problem(c.request(method, f"/v1/sessions/{sid}{path}"), 404)
        assert body["type"] == "/problems/session-not-found" and sid in body["detail"]
    problem(c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 1}}), 404)


def test_next_features_skip_observed_and_excluded_and_take_costs(c: httpx.Client) -> None:
    sid = new_session(c, {"age": 59, "sex": 2, "bmi": 30.0})["session_id"]
    r = c.get(f"/v1/sessions/{sid}/next-features", params={**Q, "exclude": "ldl, hdl"})
    assert r.status_code == 200, r.text
    ranking = r.json()["ranking"]
    assert {x["feature"] for x in ranking} == set(FEATURES) - {"age", "sex", "bmi", "ldl", "hdl"}
    gains = [x["gain"] for x in ranking]
    assert gains == sorted(gains, reverse=True)

    r = c.get(f"/v1/sessions/{sid}/next-features", params={**Q, "costs": "ldl:5,hdl:2"})
    ranking = r.json()["ranking"]
    assert {x["feature"] for x in ranking} == set(FEATURES) - {"age", "sex", "bmi"}
    costs = {x["feature"]: x["cost"] for x in ranking}
    assert costs["ldl"] == 5 and costs["hdl"] == 2 and costs["blood_sugar"] == 1
    per_cost = [x["gain_per_cost"] for x in ranking]
    assert per_cost == sorted(per_cost, reverse=True)
    assert all(x["gain_per_cost"] == pytest.approx(x["gain"] / x["cost"]) for x in ranking)
    assert r.json()["version"] >= 1 and r.json()["target"] == TARGET


def test_prediction_changes_as_answers_arrive(c: httpx.Client) -> None:
    sid = new_session(c)["session_id"]
    before = c.get(f"/v1/sessions/{sid}/prediction", params=Q).json()["targets"][TARGET]
    assert c.get(f"/v1/sessions/{sid}/prediction", params=Q).json()["targets"][TARGET] == before  # seeded
    answers = {"bmi": 41.0, "blood_sugar": 150.0, "triglycerides": 270.0, "blood_pressure": 130.0}
    assert c.post(f"/v1/sessions/{sid}/observations", json={"observations": answers}).status_code == 200
    after = c.get(f"/v1/sessions/{sid}/prediction", params=Q).json()["targets"][TARGET]
    assert after["mean"] != before["mean"] and after["quantiles"] != before["quantiles"]
    ranked = c.get(f"/v1/sessions/{sid}/next-features", params=Q).json()["ranking"]
    assert {x["feature"] for x in ranked} == set(FEATURES) - set(answers)


def test_an_answer_by_its_label_counts_as_its_code(c: httpx.Client) -> None:
    coded, labelled = (new_session(c, {"age": 50, "sex": sex})["session_id"] for sex in (1, "group 1"))
    assert c.get(f"/v1/sessions/{labelled}").json()["current"] == {"age": 50, "sex": "group 1"}  # kept as sent
    by_code, by_label = (c.get(f"/v1/sessions/{s}/prediction", params=Q).json()["targets"] for s in (coded, labelled))
    assert by_label == by_code


# --------------------------------------------------------------------------------------------------------- errors


def test_session_errors(c: httpx.Client) -> None:
    for method, path in [("GET", ""), ("GET", "/prediction"), ("GET", "/next-features"), ("DELETE", "")]:
        problem(c.request(method, f"/v1/sessions/no-such-session{path}"), 404)
    problem(c.post("/v1/sessions", json={"model": "nope"}), 404)
    problem(c.post("/v1/sessions", json={"model": MODEL, "version": 99}), 404)
    problem(c.post("/v1/sessions", json={}), 422, "model")
    problem(c.post("/v1/sessions", json={"model": MODEL, "colour": "red"}), 422, "colour")
    body = problem(c.post("/v1/sessions", json={"model": MODEL, "observations": {"sex": 7}}), 422, "observations.sex")
    assert "unknown category" in reason(body, "observations.sex")
    body = problem(c.post("/v1/sessions", json={"model": MODEL, "observations": {TARGET: 100}}), 422)
    assert "target" in reason(body, f"observations.{TARGET}")

    sid = new_session(c, {"age": 40})["session_id"]
    url = f"/v1/sessions/{sid}"
    problem(c.post(f"{url}/observations", json={"observations": {}}), 422, "observations")
    problem(c.post(f"{url}/observations", json={"observations": {"bmi": 1}, "x": 1}), 422, "x")
    raw = b'{"observations": {"bmi": NaN}}'
    problem(c.post(f"{url}/observations", content=raw, headers={"content-type": "application/json"}), 422)
    for params, field in [
        ({"exclude": "nope"}, "exclude"),
        ({"costs": "ldl"}, "costs"),
        ({"costs": "ldl:x"}, "costs"),
        ({"costs": "ldl:-1"}, "costs.ldl"),
        ({"costs": "nope:1"}, "costs.nope"),
        ({"top_k": 0}, "top_k"),
        ({"method": "magic"}, "method"),
        ({"samples": 65}, "samples"),
        ({"samples": 1}, "samples"),
    ]:
        problem(c.get(f"{url}/next-features", params=params), 422, field)
    problem(c.get(f"{url}/prediction", params={"samples": 65}), 422, "samples")
    problem(c.get(f"{url}/prediction", params={"seed": -1}), 422, "seed")


@pytest.mark.parametrize(
    "observations,field,why",
    [
        ({"bmi": -1.0}, "observations.bmi", "negative"),
        ({"bmi": "tall"}, "observations.bmi", "expected a number"),
        ({"sex": 3}, "observations.sex", "unknown category"),
        ({"shoe_size": 44}, "observations.shoe_size", "unknown feature"),
        ({"ldl": 120.0, "sex": 9}, "observations.sex", "unknown category"),  # one bad answer sinks the request
        ({TARGET: 150.0}, f"observations.{TARGET}", "target"),
    ],
    ids=["negative", "type", "category", "unknown", "mixed", "target"],
)
def test_rejected_observation_changes_nothing(c: httpx.Client, observations: dict, field: str, why: str) -> None:
    sid = new_session(c, {"age": 40, "bmi": 25.0})["session_id"]
    before = c.get(f"/v1/sessions/{sid}").json()
    body = problem(c.post(f"/v1/sessions/{sid}/observations", json={"observations": observations}), 422, field)
    assert why in reason(body, field) and field in body["detail"]
    assert c.get(f"/v1/sessions/{sid}").json() == before


# ---------------------------------------------------------------------------------------------------- concurrency


def test_concurrent_writers_lose_nothing(any_svc: Service) -> None:
    """24 clients (own connections) answer at once, 10 features, some more than once: all kept, seq unique."""
    sid = new_session(any_svc.client(), {"age": 50})["session_id"]
    writes = []
    for i in range(24):
        feature = FEATURES[i % len(FEATURES)]
        value = 1 + (i // len(FEATURES)) % 2 if feature == "sex" else round(20.0 + i + 0.125 * i, 3)
        writes.append((feature, value))

    async def write(feature: str, value) -> int:
        async with any_svc.async_client() as ac:
            r = await ac.post(f"/v1/sessions/{sid}/observations", json={"observations": {feature: value}})
            return r.status_code

    async def all_at_once() -> list[int]:
        return await asyncio.gather(*(write(f, v) for f, v in writes))

    assert asyncio.run(all_at_once()) == [200] * len(writes)
    s = any_svc.client().get(f"/v1/sessions/{sid}").json()
    obs = s["observations"]
    assert len(obs) == 1 + len(writes)
    assert sorted(o["seq"] for o in obs) == list(range(len(obs)))
    assert [o["seq"] for o in obs] == list(range(len(obs)))  # kept in arrival order
    assert sorted((o["feature"], o["value"]) for o in obs[1:]) == sorted(writes)
    latest = {}
    for o in obs:
        latest[o["feature"]] = o["value"]
    assert s["current"] == latest


# -------------------------------------------------------------------------------------------------------- pinning


def test_session_stays_pinned_to_its_model_version(svc: Service, c: httpx.Client) -> None:
    v2 = second_version(svc)["version"]
    try:
        activate(svc, 1)
        sid = new_session(c, {"age": 61})["session_id"]
        assert c.get(f"/v1/sessions/{sid}").json()["version"] == 1
        activate(svc, v2)
        assert c.get(f"/v1/sessions/{sid}").json()["version"] == 1
        assert c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 28.0}}).json()["version"] == 1
        assert c.get(f"/v1/sessions/{sid}/prediction", params=Q).json()["version"] == 1
        assert c.get(f"/v1/sessions/{sid}/next-features", params=Q).json()["version"] == 1
        assert new_session(c)["version"] == v2  # new sessions take the active version
        assert new_session(c, version=1)["version"] == 1  # or the one asked for
    finally:
        activate(svc, 1)


# --------------------------------------------------------------------------------------------- expiry and outages


def test_expired_session_is_404(short: Service, throwaway: ThrowawayRedis) -> None:
    if not throwaway.running:
        throwaway.start()
    c = short.client()
    sid = new_session(c, {"age": 30})["session_id"]
    assert c.get(f"/v1/sessions/{sid}").json()["expires_in"] == 1
    time.sleep(1.6)
    body = problem(c.get(f"/v1/sessions/{sid}"), 404)
    assert "expired" in body["detail"]
    problem(c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 30}}), 404)


def test_a_session_past_its_cap_is_409_and_keeps_what_it_held(short: Service, throwaway: ThrowawayRedis) -> None:
    """Issue #22, 2: the cap on answers (`session_max_observations`, here 6) bounds what a read costs."""
    if not throwaway.running:
        throwaway.start()
    c = short.client()
    sid = new_session(c, {"age": 30, "bmi": 25})["session_id"]
    for bmi in (26, 27, 28, 29):  # corrections count
        assert c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": bmi}}).status_code == 200
    body = problem(c.post(f"/v1/sessions/{sid}/observations", json={"observations": {"bmi": 30}}), 409)
    assert body["type"].endswith("/session-full") and body["cap"] == 6 and "new session" in body["detail"]
    assert reason(body, "observations") == "1 more answers would pass the session's cap of 6"
    held = c.get(f"/v1/sessions/{sid}").json()
    assert len(held["observations"]) == 6 and held["current"] == {"age": 30, "bmi": 29}
    assert c.get(f"/v1/sessions/{sid}/prediction", params=Q).status_code == 200  # still usable for answers
    seven = {"age": 50, "bmi": 25, "blood_pressure": 90, "total_cholesterol": 190, "ldl": 110, "hdl": 50,
             "blood_sugar": 90}  # fmt: skip
    assert problem(c.post("/v1/sessions", json={"model": MODEL, "observations": seven}), 409)["cap"] == 6


def test_use_renews_the_idle_ttl(short: Service, throwaway: ThrowawayRedis) -> None:
    if not throwaway.running:
        throwaway.start()
    c = short.client()
    sid = new_session(c)["session_id"]
    for _ in range(4):  # 2 s in all, each gap half the TTL
        time.sleep(0.5)
        assert c.get(f"/v1/sessions/{sid}").status_code == 200


def test_redis_outage_and_recovery(short: Service, throwaway: ThrowawayRedis) -> None:
    c = short.client()
    if throwaway.running:
        throwaway.stop()

    # Started with Redis down: alive, not ready, sessions refused with a reason.
    r = c.get("/readyz")
    body = problem(r, 503)
    assert body["checks"]["sessions"] == "unreachable (redis)" and body["checks"]["models"] == {f"{MODEL} v1": "ok"}
    assert "sessions unreachable" in body["detail"]
    body = problem(c.post("/v1/sessions", json={"model": MODEL}), 503)
    assert "session store is unavailable" in body["detail"]
    assert r.headers["retry-after"]

    # Redis comes up: the service recovers by itself.
    throwaway.start()
    assert c.get("/readyz").status_code == 200
    sid = new_session(c, {"age": 44})["session_id"]
    assert c.get(f"/v1/sessions/{sid}").status_code == 200

    # Redis goes down mid-session: every session route answers 503 quickly, nothing hangs.
    throwaway.stop()
    for method, path, payload in [
        ("GET", "", None),
        ("POST", "/observations", {"observations": {"bmi": 31.0}}),
        ("GET", "/prediction", None),
        ("GET", "/next-features", None),
        ("DELETE", "", None),
    ]:
        started = time.monotonic()
        r = c.request(method, f"/v1/sessions/{sid}{path}", json=payload)
        assert time.monotonic() - started < 10
        body = problem(r, 503)
        assert body["detail"] == "The session store is unavailable; retry shortly." and r.headers["retry-after"]
    problem(c.get("/readyz"), 503)
    assert f"Redis at 127.0.0.1:{throwaway.port} is unreachable" in short.logs.text  # the reason, in the log
    assert c.post(f"/v1/models/{MODEL}/predict", json={"rows": [{"age": 44}]}).status_code == 200  # rest works

    # Back on the same port: new sessions work at once, without restarting the service. The old one is gone
    # only because this Redis kept nothing (no persistence).
    throwaway.start()
    assert c.get("/readyz").status_code == 200
    sid2 = new_session(c, {"age": 45})["session_id"]
    assert c.get(f"/v1/sessions/{sid2}").json()["current"] == {"age": 45}
    problem(c.get(f"/v1/sessions/{sid}"), 404)
