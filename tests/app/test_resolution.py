"""next-features resolves its first question (app/engine/queries.py: NextFeaturesQuery.finish, tie_set): more
seeded samples while the leader cannot be told from a runner-up, then `resolved` or the `tie` that remains."""

from __future__ import annotations

import numpy as np
import pytest

from hhvaem.app.engine import Engine
from hhvaem.app.engine.errors import InputError
from hhvaem.app.engine.queries import RESOLVE_SAMPLES, NextFeaturesQuery, tie_set
from hhvaem.model.acquisition import Gain, rank_features

ROW = {"age": 59, "sex": 2}


def test_the_tie_set_is_the_leader_and_whoever_is_within_two_standard_errors():
    rng = np.random.default_rng(0)
    common = rng.standard_normal(10)  # common random numbers: the candidates' groups move together
    gains = {
        "a": Gain(1.0, 0.1, 1.0 + 0.1 * common),
        "b": Gain(0.98, 0.1, 0.98 + 0.1 * common + 0.05 * rng.standard_normal(10)),  # within noise of a
        "c": Gain(0.5, 0.1, 0.5 + 0.1 * common + 0.01 * rng.standard_normal(10)),  # far behind
    }
    ranking = rank_features({k: g.value for k, g in gains.items()})
    assert tie_set(ranking, gains, None) == ["a", "b"]
    # per unit cost, b costs half as much: it leads, and a (at half its gain per cost) is far behind
    by_cost = rank_features({k: g.value for k, g in gains.items()}, {"a": 2.0})
    assert tie_set(by_cost, gains, {"a": 2.0})[0] == "b" and "a" not in tie_set(by_cost, gains, {"a": 2.0})
    assert tie_set([], {}, None) == []


@pytest.fixture(scope="module")
def engine(demo_artifact) -> Engine:
    return Engine(demo_artifact, threads=1)


def _ask(engine, **options):
    prepared = NextFeaturesQuery(ROW, seed=3, samples=100, **options).prepare(engine)
    return prepared.finish(engine.run_graph(prepared.graph, prepared.feeds))


def test_rounds_double_the_samples_until_resolved_or_the_budget(engine):
    a = _ask(engine)
    r = a["resolution"]
    assert r["samples"] == 100 * 2 ** (r["rounds"] - 1) <= RESOLVE_SAMPLES
    assert (r["status"] == "resolved") == (len(r["candidates"]) == 1)
    assert r["candidates"][0] == a["ranking"][0]["feature"]
    if r["status"] == "tie":  # it stopped for the budget, not before
        assert 2 * r["samples"] > RESOLVE_SAMPLES
    assert _ask(engine) == a  # seeded rounds: the same answer again
    off = _ask(engine, max_samples=100)["resolution"]
    assert off["rounds"] == 1 and off["samples"] == 100
    timed = _ask(engine, budget_ms=1e-6)["resolution"]  # the budget is spent after the first round
    assert timed["rounds"] == 1


def test_bad_resolution_options_are_named(engine):
    for options, field in (({"max_samples": 1}, "max_samples"), ({"budget_ms": -5}, "budget_ms")):
        with pytest.raises(InputError, match=field):
            NextFeaturesQuery(ROW, **options).prepare(engine)
