"""Reproducible answers in the engine: the default seed comes from the model, the sample count and the row, so an
answer is the same in any process and whatever it is batched or chunked with (docs/how-to/reproducible-answers.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from hhvaem.app.engine import Engine, ImputeQuery, NextFeaturesQuery, PredictQuery
from hhvaem.app.engine.scoring import score_frame
from hhvaem.app.engine.seeds import row_seeds
from hhvaem.app.services.batcher import DynamicBatcher

ROW = {"age": 59, "sex": 2, "bmi": 32.1, "blood_pressure": 101.0}
OTHERS = [{}, {"age": 30}, {"bmi": 20.0, "hdl": 40.0}, {"age": 70, "sex": 1, "ldl": 120.0}]


@pytest.fixture(scope="module")
def engine(demo_artifact):
    return Engine(demo_artifact, threads=1)


def test_row_seeds_are_a_digest_of_source_request_and_encoded_row():
    x = np.array([[1.0, 0.0], [-0.0, 2.0], [1.0, 0.0]], np.float32)
    seeds = row_seeds({"model": "abc"}, {"samples": 10}, x)
    assert seeds[0] == seeds[2] != seeds[1]  # the row's content, not its place
    assert seeds == row_seeds({"model": "abc"}, {"samples": 10}, x.astype(np.float64))  # the float32 encoding
    assert seeds[1] == row_seeds({"model": "abc"}, {"samples": 10}, np.array([[0.0, 2.0]], np.float32))[0]  # -0.0
    assert seeds[0] != row_seeds({"model": "abd"}, {"samples": 10}, x)[0]
    assert seeds[0] != row_seeds({"seed": 0}, {"samples": 10}, x)[0]
    assert seeds[0] != row_seeds({"model": "abc"}, {"samples": 11}, x)[0]
    # a known answer, fixed by the definition: blake2b-128 of the sorted JSON, then the row's float32 bytes,
    # read little-endian (a change here changes every default answer)
    assert row_seeds({"seed": 0}, {"samples": 2}, np.zeros((1, 1), np.float32)) == [0x9EC2604674073EAE728DF932144AA3CA]


def test_the_same_request_gives_the_same_numbers_in_another_engine_and_another_process(engine, demo_artifact):
    mine = engine.next_features(ROW)
    assert Engine(demo_artifact, threads=1).next_features(ROW) == mine  # fresh state
    code = (
        "import json, sys; from hhvaem.app.engine import Engine; "
        f"e = Engine({str(demo_artifact)!r}, threads=1); "
        f"print(json.dumps([e.next_features({ROW!r}), e.impute({OTHERS!r}, samples=20)]))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "123"}  # another hash() salt: not used
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    theirs = json.loads(out.stdout)
    assert theirs == json.loads(json.dumps([mine, engine.impute(OTHERS, samples=20)]))


def test_an_explicit_seed_wins_and_another_seed_changes_the_numbers(engine):
    default = engine.predict([ROW], samples=20)
    seeded = engine.predict([ROW], samples=20, seed=5)
    assert engine.predict([ROW], samples=20, seed=5) == seeded != default
    assert engine.predict([ROW], samples=20, seed=6) != seeded


def test_a_row_answers_the_same_alone_among_other_rows_and_batched_with_other_requests(engine):
    alone = engine.impute([ROW])[0]
    assert engine.impute([*OTHERS[:2], ROW, *OTHERS[2:]])[2] == alone  # its place in the request
    assert engine.impute([{**ROW, "age": 59.0}])[0]["imputed"] == alone["imputed"]  # 59 and 59.0 encode alike
    batch = [
        ImputeQuery(OTHERS).prepare(engine),
        PredictQuery([ROW]).prepare(engine),
        ImputeQuery([ROW]).prepare(engine),
        NextFeaturesQuery(ROW).prepare(engine),
    ]
    _, predicted, imputed, ranked = engine.run(batch)
    assert imputed == [alone]
    assert predicted == engine.predict([ROW])
    assert ranked == engine.next_features(ROW)
    # one row's posterior samples, whatever the operation: the three answers agree on the target
    target = predicted[0]["targets"]["disease_progression"]
    assert ranked["prediction"]["mean"] == target["mean"] == imputed[0]["imputed"]["disease_progression"]["mean"]
    # a candidate's gain does not depend on the others ranked with it
    best = ranked["ranking"][0]
    alone_gain = engine.next_features(ROW, candidates=[best["feature"]])["ranking"][0]["gain"]
    assert alone_gain == best["gain"]
    # asking for other figures does not move the ones asked for before
    narrow = engine.predict([ROW], quantiles=[0.5])[0]["targets"]["disease_progression"]
    assert narrow["mean"] == predicted[0]["targets"]["disease_progression"]["mean"]
    assert narrow["quantiles"]["0.5"] == predicted[0]["targets"]["disease_progression"]["quantiles"]["0.5"]


def test_the_dynamic_batcher_does_not_change_answers(engine):
    """Eight requests submitted at once share one sampler call; each answers as it does alone."""
    rows = [ROW, *OTHERS, {"age": 40, "bmi": 28.0}, {"sex": 1}, {"blood_sugar": 90.0}]
    calls = []

    async def main():
        batcher = DynamicBatcher(window_ms=200, max_rows=64, on_batch=lambda n, r, s: calls.append(n))
        try:
            return await asyncio.gather(
                *(batcher.submit("m", engine, ImputeQuery([r], 20).prepare(engine)) for r in rows)
            )
        finally:
            await batcher.close()

    batched = asyncio.run(main())
    assert max(calls) > 1  # they were batched
    assert batched == [engine.impute([r], samples=20) for r in rows]


@pytest.mark.parametrize("operation", ["both", "impute-multiple"])
def test_batch_scoring_answers_each_row_the_same_whatever_the_chunks_and_order(engine, operation):
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "age": rng.integers(20, 80, 9).astype(float),
            "sex": rng.integers(1, 3, 9),
            "bmi": np.round(rng.normal(27, 4, 9), 1),
            "ldl": np.where(rng.random(9) < 0.5, np.nan, np.round(rng.normal(110, 30, 9), 1)),
        }
    )
    op, imputations = ("impute", 3) if operation == "impute-multiple" else ("both", None)

    def scored(frame, chunk_rows):
        out, _ = score_frame(engine, frame, op, 20, chunk_rows, seed=0, imputations=imputations)
        return out

    whole = scored(df, 64)
    for chunk_rows in (1, 4):
        pd.testing.assert_frame_equal(scored(df, chunk_rows), whole)
    order = [8, 3, 0, 5, 1, 7, 2, 6, 4]
    copies = imputations or 1
    reordered = scored(df.iloc[order].reset_index(drop=True), 2)
    expected = whole.iloc[[i * copies + k for i in order for k in range(copies)]].reset_index(drop=True)
    pd.testing.assert_frame_equal(reordered, expected)
    if imputations:  # the draws still differ between imputations
        assert whole.groupby("imputation")["ldl"].apply(list).map(tuple).nunique() > 1
