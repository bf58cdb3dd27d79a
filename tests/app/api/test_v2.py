"""The Open Inference Protocol v2 routes over real HTTP: NVIDIA's `tritonclient.http` (which speaks the protocol,
binary tensor extension included) against the running service, the protocol's own JSON examples, responses
validated against the protocol's schemas (transcribed from KServe's rest_predict_v2.yaml), errors in the
protocol's {"error": ...} shape, and a model with text categories (the BYTES tensors)."""

from __future__ import annotations

import json
import math

import httpx
import jsonschema_rs
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.app.service import FEATURES, MODEL, SAMPLES, TARGET, Service, running_service

D = len(FEATURES)

# The protocol's response objects (KServe docs/predict-api/v2/rest_predict_v2.yaml, components.schemas).
_TENSOR_DATA = {"type": "array"}
SCHEMAS = {
    "server_metadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "model_metadata": {
        "type": "object",
        "required": ["name", "platform"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
            "outputs": {"type": "array", "items": {"$ref": "#/$defs/metadata_tensor"}},
        },
        "$defs": {
            "metadata_tensor": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                },
            }
        },
    },
    "inference_response": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string"},
                        "parameters": {"type": "object"},
                        "data": _TENSOR_DATA,
                    },
                },
            },
        },
    },
    "error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
}


def valid(kind: str, body: dict) -> dict:
    jsonschema_rs.validate(SCHEMAS[kind], body)
    return body


def error(response: httpx.Response, status: int, *words: str) -> str:
    """Asserts the protocol's error shape with `status`; returns the message (which names each of `words`)."""
    assert response.status_code == status, (response.status_code, response.text)
    message = valid("error", response.json())["error"]
    assert "Traceback" not in message
    for w in words:
        assert w in message, (w, message)
    return message


@pytest.fixture(scope="module")
def triton_client(svc: Service):
    client = triton.InferenceServerClient(svc.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def features(rows: list[dict]) -> np.ndarray:
    """Rows (feature -> value) as the `features` tensor: schema order, NaN for a hole, codes for categories."""
    x = np.full((len(rows), D), np.nan, np.float32)
    for i, row in enumerate(rows):
        for name, value in row.items():
            x[i, FEATURES.index(name)] = [1, 2].index(value) if name == "sex" else value
    return x


ROWS = [
    {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101.0},
    {"age": 48, "sex": 1, "bmi": 21.6, "ldl": 103.2, "hdl": 70.0},
]


def _infer(client, x: np.ndarray, outputs=None, binary=True, **parameters):
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    requested = [triton.InferRequestedOutput(name, binary_data=binary) for name in outputs] if outputs else None
    return client.infer(MODEL, [inp], outputs=requested, parameters={"samples": SAMPLES, "seed": 7, **parameters})


# ---- health and metadata -------------------------------------------------------------------------------------
def test_health_and_server_metadata(triton_client, c):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL) and triton_client.is_model_ready(MODEL, "1")
    assert not triton_client.is_model_ready("nope") and not triton_client.is_model_ready(MODEL, "99")
    meta = valid("server_metadata", c.get("/v2").json())
    assert meta["name"] == "hhvaem" and "binary_tensor_data" in meta["extensions"]
    assert triton_client.get_server_metadata()["name"] == "hhvaem"
    r = c.get("/v2/health/live")
    assert r.status_code == 200 and r.content == b""  # the protocol: status only, empty body
    assert c.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert c.get("/v2/models/nope/ready").status_code == 404


def test_model_metadata_lists_tensors_datatypes_shapes(triton_client, c):
    meta = valid("model_metadata", triton_client.get_model_metadata(MODEL))
    assert meta["name"] == MODEL and "1" in meta["versions"] and meta["platform"].startswith("hhvaem")
    (inp,) = meta["inputs"]  # no text categories in the demo model: no BYTES input
    assert (inp["name"], inp["datatype"], inp["shape"]) == ("features", "FP32", [-1, D])
    assert json.loads(inp["parameters"]["columns"]) == list(FEATURES)
    assert json.loads(meta["parameters"]["categories"]) == {"sex": [1, 2]}
    assert json.loads(meta["parameters"]["targets"]) == [TARGET]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["imputed"]["shape"] == [-1, D] and outputs["imputed"]["parameters"]["operation"] == "impute"
    assert outputs["imputed_probabilities"]["shape"] == [-1, 2]
    assert json.loads(outputs["imputed_probabilities"]["parameters"]["columns"]) == [["sex", 1], ["sex", 2]]
    assert outputs["target_mean"]["shape"] == [-1, 1] and outputs["target_quantiles"]["shape"] == [-1, 1, -1]
    assert outputs["next_features"]["datatype"] == "BYTES"
    for o in meta["outputs"]:  # protocol parameters: strings, numbers or booleans only
        assert all(isinstance(v, (str, int, float, bool)) for v in o["parameters"].values())
    assert c.get(f"/v2/models/{MODEL}/versions/1").json()["parameters"]["version"] == "1"
    error(c.get("/v2/models/nope"), 404, "nope")
    error(c.get(f"/v2/models/{MODEL}/versions/abc"), 400, "version")


# ---- inference with tritonclient --------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_impute_with_tritonclient_matches_v1(triton_client, c, binary):
    """The same rows, seed and samples through v2 (binary tensors or JSON) and v1 give the same imputations."""
    result = _infer(triton_client, features(ROWS), ["imputed", "imputed_std", "imputed_quantiles"], binary)
    imputed, std, qs = (result.as_numpy(n) for n in ("imputed", "imputed_std", "imputed_quantiles"))
    assert imputed.shape == (2, D) and imputed.dtype == np.float32 and qs.shape == (2, D, 3)
    v1 = c.post(f"/v1/models/{MODEL}/impute", json={"rows": ROWS, "samples": SAMPLES, "seed": 7}).json()["rows"]
    for i, row in enumerate(v1):
        for j, name in enumerate(FEATURES):
            value = row["values"][name]
            want = [1, 2].index(value) if name == "sex" else value
            assert imputed[i, j] == pytest.approx(want, rel=1e-6), (i, name)
            if name in row["imputed"] and name != "sex":
                assert std[i, j] == pytest.approx(row["imputed"][name]["std"], rel=1e-5)
                assert qs[i, j, 1] == pytest.approx(row["imputed"][name]["quantiles"]["0.5"], rel=1e-5)
            elif name in ROWS[i]:
                assert std[i, j] == 0 and qs[i, j, 0] == qs[i, j, 2] == imputed[i, j]  # observed: as given
    assert result.get_response()["model_name"] == MODEL


def test_predict_and_next_features_with_tritonclient(triton_client, c):
    result = triton_client.infer(
        MODEL,
        [_input(features(ROWS))],
        parameters={"operation": "predict", "samples": SAMPLES, "seed": 3, "quantiles": "0.1,0.9"},
    )
    mean, std, qs = result.as_numpy("target_mean"), result.as_numpy("target_std"), result.as_numpy("target_quantiles")
    assert mean.shape == std.shape == (2, 1) and qs.shape == (2, 1, 2) and (std > 0).all()
    assert (qs[:, 0, 0] < qs[:, 0, 1]).all()
    v1 = c.post(f"/v1/models/{MODEL}/predict", json={"rows": ROWS, "samples": SAMPLES, "seed": 3}).json()
    assert mean[0, 0] == pytest.approx(v1["rows"][0]["targets"][TARGET]["mean"], rel=1e-5)
    result = triton_client.infer(
        MODEL,
        [_input(features(ROWS[:1]))],
        parameters={"operation": "next_features", "samples": SAMPLES, "seed": 3, "top_k": 3, "costs": "ldl:5"},
    )
    ranked = [f.decode() for f in result.as_numpy("next_features")]
    gains = result.as_numpy("information_gain")
    assert len(ranked) == 3 and set(ranked) <= set(FEATURES) - set(ROWS[0]) and (gains >= 0).all()
    assert result.as_numpy("gain_per_cost").shape == (3,)
    params = result.get_response()["parameters"]
    assert params["target"] == TARGET and isinstance(params["stop"], bool) and params["prediction_std"] > 0


def _input(x: np.ndarray):
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_tritonclient_sees_the_protocols_errors(triton_client):
    x = features(ROWS)
    x[1, FEATURES.index("bmi")] = -3.0  # a negative value in a positive column
    with pytest.raises(InferenceServerException) as e:
        _infer(triton_client, x)
    assert e.value.status() == "400"
    assert "row 1" in e.value.message() and "'bmi'" in e.value.message() and "negative" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton_client.infer("nope", [_input(x)])
    assert e.value.status() == "404"


# ---- the protocol's JSON examples -----------------------------------------------------------------------------
def test_the_protocols_json_example(c):
    """The request of the protocol's example (id "42", a shaped tensor, requested outputs) in this model's terms;
    the response echoes the id and gives exactly the requested tensors with name, shape, datatype and data."""
    body = {
        "id": "42",
        "parameters": {"samples": SAMPLES, "seed": 1},
        "inputs": [
            {"name": "features", "shape": [2, D], "datatype": "FP32", "data": features(ROWS).tolist()},
        ],
        "outputs": [{"name": "imputed"}, {"name": "imputed_std"}],
    }
    # JSON has no NaN: null marks the holes (nested data, as the protocol allows)
    body["inputs"][0]["data"] = [[None if math.isnan(v) else v for v in row] for row in body["inputs"][0]["data"]]
    r = c.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    out = valid("inference_response", r.json())
    assert out["id"] == "42" and out["model_name"] == MODEL and out["model_version"] == "1"
    assert [o["name"] for o in out["outputs"]] == ["imputed", "imputed_std"]
    imputed = out["outputs"][0]
    assert imputed["shape"] == [2, D] and imputed["datatype"] == "FP32" and len(imputed["data"]) == 2 * D
    assert imputed["data"][FEATURES.index("age")] == 59  # flat, row-major
    # flat data and no outputs list: every impute output
    flat = {**body, "outputs": None}
    del flat["outputs"]
    flat["inputs"] = [{**body["inputs"][0], "data": [v for row in body["inputs"][0]["data"] for v in row]}]
    names = [
        o["name"] for o in valid("inference_response", c.post(f"/v2/models/{MODEL}/infer", json=flat).json())["outputs"]
    ]
    assert names == ["imputed", "imputed_std", "imputed_quantiles", "imputed_probabilities"]
    # the version path gives the same
    r2 = c.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
    assert r2.json()["outputs"] == out["outputs"]


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (lambda b: b.pop("inputs"), 400, ["inputs"]),
        (lambda b: b["inputs"][0].update(datatype="FP99"), 400, ["datatype", "FP99"]),
        (lambda b: b["inputs"][0].update(datatype="FP64"), 400, ["FP32"]),
        (lambda b: b["inputs"][0].update(datatype={"a": 1}), 400, ["datatype"]),  # found by the fuzz test
        (lambda b: b["inputs"][0].update(shape=[3, D]), 400, ["shape", "elements"]),
        (lambda b: b["inputs"][0].update(name="x"), 400, ["'x'", "features"]),
        (lambda b: b.update(outputs=[{"name": "target_mean"}]), 400, ["target_mean", "impute"]),
        (lambda b: b["parameters"].update(operation="explain"), 400, ["operation", "explain"]),
        (lambda b: b["parameters"].update(colour="red"), 400, ["parameters.colour"]),
        (lambda b: b["parameters"].update(samples=10_000), 400, ["samples"]),
        (lambda b: b["parameters"].update(quantiles="0.5,2"), 400, ["quantiles"]),
        (lambda b: b["inputs"][0]["data"].__setitem__(1, 7.0), 400, ["row 0", "'sex'", "code"]),
        (lambda b: b["inputs"][0].update(shape=[9, D], data=[0.0] * 9 * D), 400, ["at most", "rows"]),
    ],
)
def test_bad_requests_get_the_protocols_error(c, change, status, words):
    body = {
        "parameters": {"samples": SAMPLES},
        "inputs": [{"name": "features", "shape": [1, D], "datatype": "FP32", "data": [59.0] + [None] * (D - 1)}],
    }
    change(body)
    error(c.post(f"/v2/models/{MODEL}/infer", json=body), status, *words)


def test_malformed_bodies_and_unknown_models(c):
    error(c.post(f"/v2/models/{MODEL}/infer", content=b"{nope"), 400, "JSON")
    error(c.post(f"/v2/models/{MODEL}/infer", content=b"[1]"), 400, "object")
    r = c.post(
        f"/v2/models/{MODEL}/infer",
        content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "99"},
    )
    error(r, 400, "Inference-Header-Content-Length")
    ok = {"inputs": [{"name": "features", "shape": [1, D], "datatype": "FP32", "data": [None] * D}]}
    error(c.post("/v2/models/nope/infer", json=ok), 404, "nope")
    error(c.post(f"/v2/models/{MODEL}/infer", json=ok, headers={"Content-Encoding": "gzip"}), 400, "gzip")
    # next_features takes one row
    two = {"parameters": {"operation": "next_features"}, "inputs": [{**ok["inputs"][0], "shape": [2, D]}]}
    two["inputs"][0]["data"] = [None] * 2 * D
    error(c.post(f"/v2/models/{MODEL}/infer", json=two), 400, "one row")


def test_crafted_requests_get_a_400_not_a_500(c):
    """Issue #22, 3: each of these was a 500 (an empty tensor of 2**62 rows, data nested 990 deep, a JSON body nested
    past Python's recursion limit)."""
    empty = {"inputs": [{"name": "features", "shape": [2**62, 0], "datatype": "FP32", "data": []}]}
    error(c.post(f"/v2/models/{MODEL}/infer", json=empty), 400, "shape", "too large")
    huge = {"inputs": [{"name": "features", "shape": [2**31 - 1] * 3 + [0], "datatype": "FP32", "data": []}]}
    error(c.post(f"/v2/models/{MODEL}/infer", json=huge), 400, "shape", "too large")
    head = '{"inputs": [{"name": "features", "shape": [1, ' + str(D) + '], "datatype": "FP32", "data": '
    deep = head + "[" * 990 + "59.0" + "]" * 990 + "}]}"
    error(c.post(f"/v2/models/{MODEL}/infer", content=deep.encode()), 400, "nested")
    three = {
        "inputs": [{"name": "features", "shape": [1, D], "datatype": "FP32", "data": [[[59.0] + [None] * (D - 1)]]}]
    }
    error(c.post(f"/v2/models/{MODEL}/infer", json=three), 400, "nested deeper than the shape's 2")
    text = '{"inputs": [{"name": "features", "shape": [1], "datatype": "FP32", "data": ' + "[" * 20_000
    error(c.post(f"/v2/models/{MODEL}/infer", content=text.encode()), 400, "nested too deeply")
    # data nested exactly as deep as the shape is fine (the protocol's nested form)
    rows = {"inputs": [{"name": "features", "shape": [1, D], "datatype": "FP32", "data": [[59.0] + [None] * (D - 1)]}]}
    assert c.post(f"/v2/models/{MODEL}/infer", json=rows).status_code == 200


def test_a_gain_per_cost_beyond_fp32_is_null_in_json_and_inf_in_binary(c):
    """Issue #22, 3: a cost of 1e-300 made gain / cost overflow FP32 and the JSON encoder fail (500). JSON has no
    infinity: the element is null, as v1 answers; binary output carries the IEEE value."""
    plain = {"row": {"age": 59}, "samples": SAMPLES, "seed": 0}
    best = c.post(f"/v1/models/{MODEL}/next-features", json=plain).json()["ranking"][0]
    assert best["gain"] > 0  # the cheap feature must carry some gain for its ratio to overflow
    cheap = best["feature"]
    body = {
        "parameters": {"operation": "next_features", "samples": SAMPLES, "seed": 0, "costs": f"{cheap}:1e-300"},
        "inputs": [{"name": "features", "shape": [1, D], "datatype": "FP32", "data": [59.0] + [None] * (D - 1)}],
    }
    r = c.post(f"/v2/models/{MODEL}/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in valid("inference_response", r.json())["outputs"]}
    ranked, per_cost = out["next_features"]["data"], out["gain_per_cost"]["data"]
    assert per_cost[ranked.index(cheap)] is None  # its ratio is beyond FP32
    assert all(v is None or math.isfinite(v) for v in per_cost) and sum(v is None for v in per_cost) == 1
    v1 = c.post(f"/v1/models/{MODEL}/next-features", json={**plain, "costs": {cheap: 1e-300}})
    assert v1.status_code == 200  # v1 answers in float64: the same ratio, finite there
    assert next(f for f in v1.json()["ranking"] if f["feature"] == cheap)["gain_per_cost"] > float(
        np.finfo(np.float32).max
    )
    binary = {**body, "parameters": {**body["parameters"], "binary_data_output": True}}
    r = c.post(f"/v2/models/{MODEL}/infer", json=binary)
    assert r.status_code == 200 and "Inference-Header-Content-Length" in r.headers
    head = json.loads(r.content[: int(r.headers["Inference-Header-Content-Length"])])
    assert {o["name"] for o in head["outputs"]} >= {"gain_per_cost"}


def test_v2_inference_is_audited_like_v1(svc: Service, c):
    before = len(svc.events("imputation.served"))
    ok = {"inputs": [{"name": "features", "shape": [1, D], "datatype": "FP32", "data": [50.0] + [None] * (D - 1)}]}
    assert c.post(f"/v2/models/{MODEL}/infer", json={**ok, "parameters": {"samples": SAMPLES}}).status_code == 200
    events = svc.events("imputation.served")
    assert len(events) == before + 1


# ---- a model with text categories: the BYTES tensors -----------------------------------------------------------
@pytest.fixture(scope="module")
def text_service(request, tmp_path_factory):
    """A service for a tiny model of a table with a text category (trained here in about a second)."""
    import torch

    from hhvaem.model.schema import Column, Schema
    from hhvaem.training.artifact import data_fingerprint, write_artifact
    from hhvaem.training.fit import fit

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], 120)
    size = rng.normal(size=120) + (colour == "red") * 3.0
    df = pd.DataFrame({"colour": colour, "size": size, "weight": 2 * size + rng.normal(size=120)})
    schema = Schema(
        features=(Column("colour", "categorical", ("blue", "green", "red")), Column("size", "real")),
        targets=(Column("weight", "real"),),
    )
    overrides = {"hidden": 16, "marginal_hidden": 8, "latent_dims": (2, 1), "hmc_steps": 1, "leapfrog_steps": 1}
    fitted = fit(df, schema, "hhvaem", 60, 0, overrides=overrides)
    folder = tmp_path_factory.mktemp("text-service")
    path = folder / "models" / "colours"  # registered at start-up from the models directory
    write_artifact(path, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(df))
    with running_service(None, folder, database="sqlite", sessions="memory", default_samples=SAMPLES) as service:
        yield service


def test_text_categories_travel_as_bytes(text_service: Service):
    client = triton.InferenceServerClient(text_service.url.removeprefix("http://"))
    try:
        meta = client.get_model_metadata("colours")
        inputs = {t["name"]: t for t in meta["inputs"]}
        assert inputs["categories"]["datatype"] == "BYTES" and inputs["categories"]["shape"] == [-1, 1]
        assert json.loads(inputs["categories"]["parameters"]["columns"]) == ["colour"]
        x = np.array([[np.nan, 3.0], [np.nan, np.nan], [0.0, np.nan]], np.float32)
        labels = np.array([["red"], [""], ["blue"]], dtype=object)  # row 2: the code 0 and the label agree
        cats = triton.InferInput("categories", [3, 1], "BYTES")
        cats.set_data_from_numpy(labels)
        feats = triton.InferInput("features", [3, 2], "FP32")
        feats.set_data_from_numpy(x)
        result = client.infer("colours", [feats, cats], parameters={"seed": 0})
        imputed = result.as_numpy("imputed")
        filled = [v.decode() for v in result.as_numpy("imputed_categories")[:, 0]]
        assert filled[0] == "red" and imputed[0, 0] == 2 and filled[2] == "blue" and imputed[2, 0] == 0
        assert filled[1] in ("blue", "green", "red") and imputed[1, 0] == ["blue", "green", "red"].index(filled[1])
        probs = result.as_numpy("imputed_probabilities")
        assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1) and list(probs[0]) == [0, 0, 1]
        bad = triton.InferInput("categories", [3, 1], "BYTES")
        bad.set_data_from_numpy(np.array([["purple"], [""], ["red"]], dtype=object))
        with pytest.raises(InferenceServerException) as e:
            client.infer("colours", [feats, bad])
        message = e.value.message()
        assert "'purple'" in message and "row 0" in message and "disagrees" in message  # row 2: code 0 is blue
    finally:
        client.close()
