"""The scikit-learn estimators: scikit-learn's own estimator checks, pipelines and cross-validation, DataFrames with
text categories and holes, multiple imputation, save/load to a directory the service serves, and pickling."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import (
    check_classifiers_train,
    check_regressors_train,
    estimator_checks_generator,
)

from hhvaem import HHVAEMClassifier, HHVAEMImputer, HHVAEMRegressor
from hhvaem.app.engine import Engine

# A tiny model and budget: the checks test the estimator contract, not the model's accuracy (the VAEM variant
# exports the smallest graphs; the HMC path is trained and served in the other tests). About 0.6 s per fit.
TINY = {
    "variant": "vaem",
    "steps": 30,
    "samples": 8,
    "overrides": {"hidden": 16, "marginal_hidden": 8, "latent_dims": (2, 1)},
}
# The score checks ask for R^2 > 0.5 and accuracy > 0.83 on scikit-learn's toy problems, which takes a real (if
# small) budget: the default network, 300 steps, no held-out early stopping on these 200-300 rows.
ACCURATE = {"variant": "vaem", "steps": 300, "samples": 16, "overrides": {"lr": 3e-3, "validation_fraction": 0.0}}
SCORE_CHECKS = {"check_regressors_train", "check_classifiers_train"}
ESTIMATORS = (HHVAEMImputer, HHVAEMRegressor, HHVAEMClassifier)

# Every check applies and passes; none is skipped. The score checks alone run with the ACCURATE budget (in
# test_score_checks) instead of the TINY one, which cannot reach their thresholds (docs/ecosystem.md).
DEFERRED = {name: "run with a real training budget in test_score_checks" for name in SCORE_CHECKS}


def _checks():
    for cls in ESTIMATORS:
        estimator = cls(**TINY)
        for est, check in estimator_checks_generator(estimator, expected_failed_checks=DEFERRED, mark="skip"):
            name = _check_name(check)
            yield pytest.param(est, check, id=f"{cls.__name__}-{name}")


def _check_name(check) -> str:
    func = getattr(check, "func", check)
    func = getattr(func, "__wrapped__", func)
    return getattr(func, "__name__", str(check))


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("estimator", "check"), list(_checks()))
def test_scikit_learn_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("check", [check_regressors_train, check_classifiers_train], ids=lambda c: c.__name__)
@pytest.mark.parametrize("variant", [{}, {"readonly_memmap": True}, {"readonly_memmap": True, "X_dtype": "float32"}])
def test_score_checks(check, variant):
    """scikit-learn's score checks (R^2 > 0.5, accuracy > 0.83 and the consistency of predict/predict_proba)."""
    cls = HHVAEMRegressor if check is check_regressors_train else HHVAEMClassifier
    check(cls.__name__, cls(**ACCURATE), **variant)


def _table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """x ~ N(0, 1), colour a text category that shifts x, size = 2x + noise; 20 % holes (not in size)."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n)
    x = rng.normal(size=n) + (colour == "red") * 2.0
    df = pd.DataFrame({"x": x, "colour": colour, "size": 2 * x + rng.normal(scale=0.3, size=n)})
    holes = rng.random((n, 2)) < 0.2
    df.loc[holes[:, 0], "x"] = np.nan
    df.loc[holes[:, 1], "colour"] = None
    return df


def test_imputer_on_a_frame_with_text_categories():
    df = _table()
    imp = HHVAEMImputer(target="x", **ACCURATE).fit(df)
    out = imp.transform(df)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["x", "colour", "size"]
    assert out.index.equals(df.index) and not out.isna().any().any()
    assert set(out["colour"]) <= {"red", "green", "blue"}
    observed = df["x"].notna()
    assert np.array_equal(out.loc[observed, "x"], df.loc[observed, "x"])  # observed cells stay as given
    assert list(imp.get_feature_names_out()) == ["x", "colour", "size"]
    # the hole of x is filled from what the row knows: x's posterior mean follows size (= 2x + noise)
    hole = ~observed
    r = np.corrcoef(out.loc[hole, "x"], df.loc[hole, "size"])[0, 1]
    assert r > 0.8, r


def test_multiple_imputations_are_posterior_draws():
    df = _table()
    imp = HHVAEMImputer(target="x", **ACCURATE).fit(df)
    tables = imp.transform(df, n_imputations=4)
    assert len(tables) == 4 and all(t.shape == df.shape for t in tables)
    hole = df["x"].isna()
    draws = np.stack([t.loc[hole, "x"].to_numpy(float) for t in tables])
    assert (draws.std(0) > 0).all()  # each hole differs between imputations
    for t in tables:  # observed cells never change
        assert np.array_equal(t.loc[~hole, "x"], df.loc[~hole, "x"])
        assert set(t["colour"]) <= {"red", "green", "blue"}
    # the draws scatter around the posterior mean (transform), not around 0 or the column mean
    mean = imp.transform(df).loc[hole, "x"].to_numpy(float)
    assert np.corrcoef(draws.mean(0), mean)[0, 1] > 0.8
    # the same random_state gives the same tables; another gives others
    again = imp.sample(df, 4)
    assert all(a.equals(b) for a, b in zip(tables, again))
    assert not imp.sample(df, 4, random_state=1)[0].equals(tables[0])
    with pytest.raises(ValueError, match="imputations"):
        imp.sample(df, 0)
    assert len(imp.sample(df, np.int64(2))) == 2


def test_pipeline_and_cross_val_score():
    """The imputer fills x's holes inside a pipeline; cross-validation refits it per fold."""
    df = _table(150)
    X = df[["x", "size"]].to_numpy()
    y = df["size"].to_numpy() + np.random.default_rng(1).normal(scale=0.1, size=150)
    pipe = make_pipeline(HHVAEMImputer(target=0, **TINY), LinearRegression())
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.5, scores


def test_regressor_std_and_missing_targets():
    df = _table(150)
    X, y = df[["x", "colour"]], df["size"].to_numpy().copy()
    y[::5] = np.nan  # rows without a target still teach the features' joint
    reg = HHVAEMRegressor(**ACCURATE).fit(X, y)
    mean, std = reg.predict(X, return_std=True)
    assert mean.shape == std.shape == (150,) and (std > 0).all()
    known = ~np.isnan(y) & df["x"].notna().to_numpy()
    assert np.corrcoef(mean[known], y[known])[0, 1] > 0.8
    # a row that knows less is less certain
    _, std_empty = reg.predict(pd.DataFrame({"x": [np.nan], "colour": [None]}), return_std=True)
    assert std_empty[0] > np.median(std)
    ranking = reg.next_features(pd.DataFrame({"x": [np.nan], "colour": ["red"]}))
    assert [r["feature"] for r in ranking[0]] == ["x"] and ranking[0][0]["gain"] > 0
    with pytest.raises(ValueError, match="colour"):  # a category the model never saw, named
        reg.predict(pd.DataFrame({"x": [1.0], "colour": ["purple"]}))


def test_classifier_text_labels_and_probabilities():
    df = _table(150)
    X, y = df[["x", "size"]], df["colour"].to_numpy(dtype=object)
    clf = HHVAEMClassifier(**ACCURATE).fit(X, y)  # None labels are missing, not a class
    assert list(clf.classes_) == ["blue", "green", "red"]
    proba = clf.predict_proba(X)
    assert proba.shape == (150, 3) and np.allclose(proba.sum(1), 1)
    assert list(clf.predict(X)) == list(clf.classes_[proba.argmax(1)])
    red = (df["colour"] == "red").to_numpy()
    assert proba[red, 2].mean() > proba[~red & df["colour"].notna().to_numpy(), 2].mean() + 0.2


def test_save_load_and_serving_the_artifact(tmp_path):
    df = _table()
    reg = HHVAEMRegressor(**TINY).fit(df[["x", "colour"]], df["size"])
    path = reg.save(tmp_path / "sizes")
    assert (path / "manifest.json").is_file() and (path / "estimator.json").is_file()
    loaded = HHVAEMRegressor.load(path)
    X = df[["x", "colour"]].head(5)
    assert np.array_equal(loaded.predict(X), reg.predict(X))
    # the service's engine reads the same directory: its schema is the estimator's inputs and target
    engine = Engine(path, threads=1)
    assert [c.name for c in engine.schema.features] == ["x", "colour"]
    assert [c.name for c in engine.schema.targets] == ["size"]
    side = json.loads((path / "estimator.json").read_text())
    assert side["estimator"] == "regressor" and side["target"] == "size"
    with pytest.raises(ValueError, match="regressor"):
        HHVAEMClassifier.load(path)
    # pickles carry the artifact: they load after the original directory is gone
    blob = pickle.dumps(reg)
    again = pickle.loads(blob)
    assert again.artifact_dir_ != reg.artifact_dir_
    assert np.array_equal(again.predict(X), reg.predict(X))


def test_import_hhvaem_is_cheap():
    """`import hhvaem` loads neither scikit-learn nor torch; the estimators load on first use."""
    import subprocess
    import sys

    code = (
        "import sys, hhvaem\n"
        "assert 'sklearn' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
        "from hhvaem import HHVAEMImputer\n"
        "assert 'torch' not in sys.modules\n"
        "print(HHVAEMImputer.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HHVAEMImputer"


def test_regressor_calibrates_when_asked_and_gives_intervals():
    """`calibrate=True` does what `hhvaem train` does (600 rows: 60 held out) and `predict_interval` serves the
    corrected quantiles; without it the model serves its raw ones and has no card."""
    df = _table(600)
    X, y = df[["x", "colour"]], df["size"].to_numpy()
    reg = HHVAEMRegressor(steps=300, calibrate=True).fit(X, y)
    manifest = reg.engine_.manifest
    assert manifest["calibration"]["rows"] == 60 and manifest["metrics"]["quality"]["rows"] == 60
    interval = reg.predict_interval(X[:20], level=0.8)
    assert interval.shape == (20, 2) and (interval[:, 0] < interval[:, 1]).all()
    mean = reg.predict(X[:20])
    assert ((interval[:, 0] < mean) & (mean < interval[:, 1])).mean() > 0.9
    wide = reg.predict_interval(X[:20], level=0.98)
    assert (wide[:, 1] - wide[:, 0] > interval[:, 1] - interval[:, 0]).all()
    with pytest.raises(ValueError, match="level"):
        reg.predict_interval(X[:2], level=1.5)
    plain = HHVAEMRegressor(steps=30).fit(X[:100], y[:100])
    assert plain.engine_.calibration is None and "calibration" not in plain.engine_.manifest
