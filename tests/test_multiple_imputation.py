"""Multiple imputation: Rubin's rules against known answers, the query's draws, and the worked example of
docs/multiple_imputation.md (docs/examples/rubin_simulation.py) with its coverage asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hhvaem.app.engine import Engine, InputError, MultipleImputeQuery
from hhvaem.pooling import rubin

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "rubin_simulation.py"


def _example():
    spec = importlib.util.spec_from_file_location("rubin_simulation", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rubin_rules_by_hand():
    q, u = [1.0, 2.0, 3.0], [0.5, 0.5, 0.5]
    p = rubin(q, u)
    assert p.estimate == 2.0 and p.within == 0.5 and p.between == 1.0
    assert p.total == pytest.approx(0.5 + (1 + 1 / 3) * 1.0)
    r = (4 / 3) / 0.5
    assert p.dof == pytest.approx(2 * (1 + 1 / r) ** 2)
    assert p.missing_information == pytest.approx((4 / 3) / p.total)
    lo, hi = p.interval(0.95)
    from scipy.stats import t

    assert hi - 2.0 == pytest.approx(t.ppf(0.975, p.dof) * p.total**0.5)
    assert lo == pytest.approx(4.0 - hi)
    # Barnard-Rubin: never more degrees of freedom than the complete data have
    small = rubin(q, u, complete_dof=10)
    assert small.dof < min(p.dof, 10)
    # identical imputations: no missing information, the complete-data variance
    same = rubin([1.0, 1.0], [0.2, 0.4], complete_dof=30)
    assert same.total == pytest.approx(0.3) and same.dof == 30 and same.missing_information == 0
    with pytest.raises(ValueError, match="M >= 2"):
        rubin([1.0], [0.1])


def test_draws_are_one_posterior_sample_per_imputation(demo_artifact):
    """Imputation m draws from sample m's own likelihood: with one hole the draws scatter like the predictive
    (their spread matches the predictive std), observed cells are kept, and a seed reproduces them."""
    engine = Engine(demo_artifact, threads=1)
    row = {"age": 50, "sex": 1, "bmi": 25.0, "blood_pressure": 90.0}
    (draws,) = engine.answer(MultipleImputeQuery([row], 200, samples=200, seed=3))
    assert len(draws) == 200 and all(d["age"] == 50 and d["bmi"] == 25.0 for d in draws)
    ldl = np.array([d["ldl"] for d in draws])
    assert all(d["sex"] in (1, 2) for d in draws) and (ldl >= 0).all()
    summary = engine.impute([row], samples=200, seed=3)[0]["imputed"]["ldl"]
    assert abs(ldl.mean() - summary["mean"]) < 4 * summary["std"] / np.sqrt(200)
    assert 0.75 < ldl.std() / summary["std"] < 1.3
    (again,) = engine.answer(MultipleImputeQuery([row], 200, samples=200, seed=3))
    assert again == draws
    with pytest.raises(InputError, match="imputations"):
        engine.answer(MultipleImputeQuery([row], 30, samples=20))
    with pytest.raises(InputError, match="imputations"):
        engine.answer(MultipleImputeQuery([row], 0))


@pytest.fixture(scope="module")
def simulation():
    """The worked example, 8 repetitions (about 3 s each on one core)."""
    import torch

    torch.set_num_threads(1)
    example = _example()
    return example, example.summarise([example.repetition(seed) for seed in range(8)])


def test_rubin_coverage_on_a_known_coefficient(simulation):
    """Multiple imputation's 95 % interval covers the true coefficient in at least 6 of 8 repetitions, with little
    bias. The stated tolerance: a calibrated interval does worse with probability 0.006, but ours is not quite
    calibrated (0.84 over 50 repetitions, docs/multiple_imputation.md: the imputation model's own parameters are
    not drawn, and now and then it attenuates the x-y relation), for which 6 of 8 still holds with probability
    0.88; the seeds are fixed, so the test is deterministic. It is wider
    than the interval of one imputed table analysed as if complete, which leaves out the between-imputation
    variance. Mean imputation's interval is narrower, biased and covers the truth at most 2 times in 8; complete
    cases are biased under this MAR mechanism."""
    _, s = simulation
    mi, mean, one = s["multiple imputation"], s["mean imputation"], s["one draw as if complete"]
    assert mi["coverage"] >= 6 / 8, s
    assert abs(mi["bias"]) < 0.1, s
    assert one["width"] < mi["width"] and mean["width"] < mi["width"], s
    assert mean["coverage"] <= 2 / 8 and mean["bias"] > 0.15, s
    assert s["complete cases"]["bias"] < -0.05, s


def _holey_table(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    df = pd.DataFrame(
        {
            "age": rng.integers(20, 80, n).astype(float),
            "sex": rng.integers(1, 3, n).astype(float),
            "bmi": rng.uniform(18, 42, n).round(1),
            "ldl": rng.uniform(50, 200, n).round(1),
        }
    )
    df.loc[::3, "bmi"] = np.nan
    df.loc[1::4, "sex"] = np.nan
    return df


def test_score_frame_writes_m_completed_tables(demo_artifact):
    from hhvaem.app.engine.scoring import score_frame

    engine = Engine(demo_artifact, threads=1)
    df = _holey_table()
    df.loc[5, "age"] = -4  # a bad row: reported, kept unscored in every table
    out, errors = score_frame(engine, df, "both", samples=10, imputations=3, chunk_rows=5)
    # each row three times in a row (row-major: chunks concatenate), imputation 1..3
    assert len(out) == 3 * len(df) and out.columns[0] == "imputation"
    assert out["imputation"].tolist() == [1, 2, 3] * 12
    assert (out["age"].to_numpy()[::3] == df["age"].to_numpy()).all()
    assert any(e["row"] == 6 and e["column"] == "age" for e in errors)
    assert not any(c.endswith(("__std", "__prob")) and not c.startswith("disease") for c in out.columns)
    tables = {m: t.reset_index(drop=True) for m, t in out.groupby("imputation")}
    good = [i for i in range(12) if i != 5]
    for t in tables.values():  # every hole filled, except in the rejected row
        assert not t.loc[good, ["bmi", "sex", "ldl", "total_cholesterol"]].isna().any().any()
        assert t.loc[5, "error"].startswith("age")
    hole = df["bmi"].isna().to_numpy().copy()
    hole[5] = False
    assert (tables[1].loc[hole, "bmi"] != tables[2].loc[hole, "bmi"]).all()  # the draws differ
    assert (tables[1].loc[~hole, "bmi"].fillna(-1) == tables[2].loc[~hole, "bmi"].fillna(-1)).all()  # kept
    # the prediction columns are the same in every imputation (the model's prediction of the row)
    assert (tables[1]["disease_progression__mean"].fillna(0) == tables[3]["disease_progression__mean"].fillna(0)).all()
    with pytest.raises(ValueError, match="impute or both"):
        score_frame(engine, df, "predict", imputations=2)
    with pytest.raises(ValueError, match="imputations"):
        score_frame(engine, df.drop(index=5), "impute", samples=4, imputations=5)


def test_cli_score_imputations(demo_artifact, tmp_path):
    from typer.testing import CliRunner

    from hhvaem.cli import app

    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    _holey_table().to_csv(src, index=False)
    runner = CliRunner()
    res = runner.invoke(app, ["score", demo_artifact, str(src), str(dst), "--samples", "10", "--imputations", "4"])
    assert res.exit_code == 0, res.output
    assert "4 imputations" in res.output
    out = pd.read_csv(dst)
    assert len(out) == 48 and out["imputation"].tolist() == [1, 2, 3, 4] * 12
    assert not out["bmi"].isna().any()
    res = runner.invoke(app, ["score", demo_artifact, str(src), str(dst), "--samples", "10", "--imputations", "11"])
    assert res.exit_code == 2 and "--imputations" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        app, ["score", demo_artifact, str(src), str(dst), "--operation", "predict", "--imputations", "2"]
    )
    assert res.exit_code == 2 and "impute or both" in res.output
