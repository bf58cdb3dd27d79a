"""The classical methods a user would compare against, under the same protocol (docs/protocol.md).

Same splits, same test masks, the same normalisation from the training rows (positive columns log(1 + x) then
standardised, counts divided by their standard deviation for RMSE_xu) and the same metric code as our models.
Imputers are fitted on the training rows (their genuine holes included) and impute the masked test rows:

* ``mean``: column mean / mode.
* ``knn``: scikit-learn's ``KNNImputer(n_neighbors=5)`` on the standardised numeric columns and the categorical
  columns one-hot encoded and scaled by 1/sqrt(2) (so that two different categories are as far apart as one
  standard deviation); a category is the neighbours' mode (the argmax of the averaged one-hot block).
* ``mice``: ``IterativeImputer`` with ``BayesianRidge``, 10 rounds, on the same encoding; then each categorical
  column's holes by a ``LogisticRegression`` on the completed other columns (chained regressions for numbers, a
  classifier for categories, as MICE does with mixed types).
* ``missforest``: the same with ``ExtraTreesRegressor`` / ``ExtraTreesClassifier`` (MissForest-style).
* ``miceforest``: the literature's LightGBM MICE (the ``miceforest`` package, an optional dependency: the
  ``anchors`` extra, ``pip install 'hhvaem[anchors]'``; without it the method stops with a one-line error naming
  the package). Numeric columns on the metric scale, categorical and binary columns as pandas categoricals
  (LightGBM splits on them as categories). An ``ImputationKernel`` on the training rows with
  ``MICEFOREST_DATASETS`` = 3 datasets and ``MICEFOREST_ITERATIONS`` = 3 rounds, every column modelled
  (``variable_schema`` = all columns, so that a column complete in the training rows can still be imputed in the
  test rows), miceforest's default forests (LightGBM random forest, 48 trees, depth 8) with ``num_threads=1``,
  seeded by ``random_state=seed`` (miceforest derives LightGBM's seeds from it; the test rows' initial draws use
  ``numpy.random.default_rng(seed)``). ``mean_match_candidates=0``: a hole gets the forest's prediction (the
  regression's value, the most probable class), not a donor value drawn near it, as a point imputation wants. The
  test rows are imputed with the kernel's fitted models as ``kernel.impute_new_data`` means to: holes first drawn
  from the training rows' observed values, then each round predicts every hole from the previous round's rows.
  The point imputation is the mean over the datasets for numbers, their mode for categories (ties: the lowest).
  Two bugs of miceforest 6.0.5 are worked around: ``impute_new_data`` never advances the new data's iteration
  count (every round predicts from the random initial draws and ``complete_data()`` returns those draws), so the
  rounds over the test rows are our loop; and a column's training rows are indexed in the smallest unsigned type
  that holds its last hole (uint8 for a column without holes), so on over 256 rows models train on rows 0-255
  repeated: a sentinel row, all missing, goes last in the training table (no model trains on it). Every column then
  has a hole, so miceforest never takes the path (also mean matching's) that calls ``Booster.__inner_predict``
  positionally, which lightgbm 4.7 made keyword-only: lightgbm 4.7 works.

Targets (hidden at test time) are predicted by ``hgb_nan``: HistGradientBoosting (regressor or classifier)
trained on 10 copies of the training rows, each with a fresh random mask (missing rate ~ U(0, 1) per row), so
that it has seen every pattern of holes; it handles NaN natively and the categories as categorical features.
``constant`` is the floor every predictor must clear: the training rows' mean target (original units) or their
majority class.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from sklearn.experimental import enable_iterative_imputer  # noqa: F401 - enables IterativeImputer
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
from sklearn.linear_model import BayesianRidge, LogisticRegression

from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema
from hhvaem.training.evaluate import protocol_test_mask, split_indices
from hhvaem.training.fit import encode_rows
from hhvaem.training.tabular import table_columns

IMPUTERS = ("mean", "knn", "mice", "missforest", "miceforest")
PREDICTORS = ("constant", "hgb_nan")
METHODS = IMPUTERS + PREDICTORS
MASKED_COPIES = 10
# Methods that need a package outside the `train` extra: {method: (module, pip requirement, extra)}.
OPTIONAL = {"miceforest": ("miceforest", "miceforest", "anchors")}
MICEFOREST_DATASETS = 3
MICEFOREST_ITERATIONS = 3


class MissingPackageError(ImportError):
    """A baseline whose package is not installed; the message names the package and how to install it."""


def require(method: str):
    """The optional package `method` needs, imported; MissingPackageError (a one-line reason) when it is absent."""
    module, requirement, extra = OPTIONAL[method]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(
            f"the {method} baseline needs the {requirement!r} package, which is not installed: "
            f"pip install 'hhvaem[{extra}]' (or pip install {requirement})"
        ) from None


def missing_packages(methods) -> list[str]:
    """Why each of `methods` cannot run here (its package is missing); empty when all can."""
    out = []
    for method in methods:
        if method in OPTIONAL:
            try:
                require(method)
            except MissingPackageError as e:
                out.append(str(e))
    return out


class Encoding:
    """The imputers' design matrix: numeric columns on the metric scale, categories one-hot / sqrt(2)."""

    def __init__(self, schema: Schema, pp: Preprocessor):
        self.schema = schema
        self.scales = [1.0 if c.is_discrete else c.family.metric_scale(pp.stats.get(c.name)) for c in schema.features]

    def encode(self, x: np.ndarray, observed: np.ndarray) -> np.ndarray:
        blocks = []
        for d, col in enumerate(self.schema.features):
            if col.is_discrete:
                onehot = np.eye(col.n_categories)[x[:, d].astype(int)] / math.sqrt(2.0)
                onehot[~observed[:, d]] = np.nan
                blocks.append(onehot)
            else:
                blocks.append(np.where(observed[:, d], x[:, d] / self.scales[d], np.nan)[:, None])
        return np.concatenate(blocks, axis=1)

    def blocks(self) -> list[slice]:
        """Each feature's columns in the design matrix."""
        out, i = [], 0
        for col in self.schema.features:
            width = col.n_categories if col.is_discrete else 1
            out.append(slice(i, i + width))
            i += width
        return out

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Back to one value per feature: the metric scale for numbers, the argmax category."""
        out, i = np.zeros((len(z), len(self.schema.features))), 0
        for d, col in enumerate(self.schema.features):
            if col.is_discrete:
                out[:, d] = z[:, i : i + col.n_categories].argmax(1)
                i += col.n_categories
            else:
                out[:, d] = z[:, i] * self.scales[d]
                i += 1
        return out


def make_imputer(method: str, seed: int):
    """(the imputer of the design matrix, a classifier factory for categories or None)."""
    if method == "mean":
        return SimpleImputer(strategy="mean", keep_empty_features=True), None
    if method == "knn":
        return KNNImputer(n_neighbors=5, keep_empty_features=True), None
    # tol=0: ten full rounds (fitted on complete training rows, the default tolerance stops after one)
    # n_nearest_features: each column is regressed on its 20 most correlated others (wide tables stay tractable)
    if method == "mice":
        imputer = IterativeImputer(
            BayesianRidge(), max_iter=10, tol=0, n_nearest_features=20, random_state=seed, keep_empty_features=True
        )
        return imputer, lambda: LogisticRegression(max_iter=1000)
    if method == "missforest":
        trees = ExtraTreesRegressor(n_estimators=50, min_samples_leaf=2, n_jobs=1, random_state=seed)
        imputer = IterativeImputer(
            trees, max_iter=5, tol=0, n_nearest_features=20, random_state=seed, keep_empty_features=True
        )
        return imputer, lambda: ExtraTreesClassifier(n_estimators=50, min_samples_leaf=2, n_jobs=1, random_state=seed)
    raise ValueError(f"unknown imputer {method!r} (expected one of {', '.join(IMPUTERS)})")


def _frame(enc: Encoding, x: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    """miceforest's table: numbers on the metric scale, categories as pandas categoricals, NaN in the holes."""
    cols = {}
    for d, col in enumerate(enc.schema.features):
        if col.is_discrete:
            codes = np.where(observed[:, d], x[:, d], -1).astype(int)  # -1: a hole
            cols[f"x{d}"] = pd.Categorical.from_codes(codes, categories=list(range(col.n_categories)))
        else:
            cols[f"x{d}"] = np.where(observed[:, d], x[:, d].astype(np.float64) / enc.scales[d], np.nan)
    return pd.DataFrame(cols)


def miceforest_impute(enc: Encoding, train, x_test: np.ndarray, observed: np.ndarray, seed: int) -> np.ndarray:
    """LightGBM MICE (the module docstring): fitted on the training rows, then the test rows' holes."""
    mf = require("miceforest")
    train_frame = _frame(enc, train.x.numpy(), train.mx.numpy())
    test_frame = _frame(enc, x_test, observed)
    names = list(train_frame.columns)
    # The sentinel (module docstring): a last row, all missing, so that every column's hole positions (and the
    # training rows miceforest derives from them) get an index type wide enough for the table.
    sentinel = train_frame.iloc[:0].reindex([0])  # one row of NaN, the same dtypes
    kernel = mf.ImputationKernel(
        pd.concat([train_frame, sentinel], ignore_index=True),
        num_datasets=MICEFOREST_DATASETS,
        variable_schema=names,
        mean_match_candidates=0,
        random_state=seed,
    )
    kernel.mice(MICEFOREST_ITERATIONS, num_threads=1)
    rng = np.random.default_rng(seed)
    holes = {c: test_frame[c].isna().to_numpy() for c in names if test_frame[c].isna().any()}
    draws = []
    for dataset in range(MICEFOREST_DATASETS):
        filled = test_frame.copy()
        for c, h in holes.items():  # round 0: values drawn from the training rows' observed ones
            pool = train_frame[c].dropna().to_numpy()
            filled.loc[h, c] = pool[rng.integers(0, len(pool), h.sum())]
        for iteration in range(1, MICEFOREST_ITERATIONS + 1):
            previous, filled = filled, filled.copy()  # each round predicts from the previous round's rows
            for c, h in holes.items():
                model = kernel.get_model(c, dataset, iteration)
                pred = model.predict(previous.loc[h, model.feature_name()])
                if isinstance(test_frame[c].dtype, pd.CategoricalDtype):
                    # binary: P(second category); multiclass: one probability per category
                    index = (pred > 0.5).astype(int) if pred.ndim == 1 else pred.argmax(1)
                    pred = test_frame[c].cat.categories[index]
                filled.loc[h, c] = pred
        draws.append(filled)
    imputed = np.zeros_like(x_test, dtype=np.float64)
    for d, (c, col) in enumerate(zip(names, enc.schema.features)):
        values = np.stack([draw[c].to_numpy(dtype=np.float64) for draw in draws])
        if col.is_discrete:  # the mode over datasets (ties: the lowest category)
            counts = np.stack([(values == k).sum(0) for k in range(col.n_categories)])
            imputed[:, d] = counts.argmax(0)
        else:
            imputed[:, d] = values.mean(0) * enc.scales[d]
    return np.where(observed, x_test, imputed)


def impute(method: str, seed: int, enc: Encoding, train, x_test: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """The test rows with their holes filled, one value per feature (metric scale / category index)."""
    if method == "miceforest":
        return miceforest_impute(enc, train, x_test, observed, seed)
    imputer, classifier = make_imputer(method, seed)
    train_design = imputer.fit_transform(enc.encode(train.x.numpy(), train.mx.numpy()))
    test_design = imputer.transform(enc.encode(x_test, observed))
    imputed = enc.decode(test_design)
    if classifier is None:
        return imputed
    for d, (col, block) in enumerate(zip(enc.schema.features, enc.blocks())):
        holes, known = ~observed[:, d], train.mx[:, d].numpy()
        if not col.is_discrete or not holes.any() or len(np.unique(train.x[known, d])) < 2:
            continue
        others = np.delete(np.arange(train_design.shape[1]), np.arange(block.start, block.stop))
        model = classifier().fit(train_design[known][:, others], train.x[known, d].numpy())
        imputed[holes, d] = model.predict(test_design[holes][:, others])
    return imputed


def imputation_metrics(schema: Schema, pp: Preprocessor, imputed: np.ndarray, x: np.ndarray, hidden) -> dict:
    """RMSE_xu (numbers, metric scale) and ACC_xu (categories) of point imputations."""
    sq, hits = [], []
    for d, col in enumerate(schema.features):
        h = hidden[:, d]
        if not h.any():
            continue
        if col.is_discrete:
            hits.append(imputed[h, d] == x[h, d])
        else:
            scale = col.family.metric_scale(pp.stats.get(col.name))
            sq.append(((imputed[h, d] - x[h, d]) / scale) ** 2)
    out = {}
    if sq:
        out["rmse_xu"] = math.sqrt(float(np.concatenate(sq).mean()))
    if hits:
        out["acc_xu"] = float(np.concatenate(hits).mean())
    return out


def hgb_nan_metrics(schema: Schema, pp: Preprocessor, train, test, observed, seed: int) -> dict:
    """The target error of HistGradientBoosting trained on randomly masked copies, on the masked test rows."""
    rng = np.random.default_rng(seed)
    x, mx = train.x.numpy().astype(np.float64), train.mx.numpy()
    copies, masks = [], []
    for _ in range(MASKED_COPIES):
        rate = rng.random((len(x), 1))
        masks.append(mx & (rng.random(mx.shape) >= rate))
        copies.append(x)
    xs = np.where(np.concatenate(masks), np.concatenate(copies), np.nan)
    x_test = np.where(observed, test.x.numpy(), np.nan)
    categorical = np.array([c.is_discrete for c in schema.features])
    out: dict[str, list[float]] = {}
    for j, col in enumerate(schema.targets):
        seen = np.tile(train.my[:, j].numpy(), MASKED_COPIES)
        y = np.tile(train.y[:, j].numpy(), MASKED_COPIES)
        kind = HistGradientBoostingClassifier if col.is_discrete else HistGradientBoostingRegressor
        model = kind(categorical_features=categorical, random_state=seed).fit(xs[seen], y[seen])
        t_seen = test.my[:, j].numpy()
        pred = model.predict(x_test[t_seen])
        if col.is_discrete:
            out.setdefault("target_accuracy", []).append(float((pred == test.y[t_seen, j].numpy()).mean()))
        else:
            truth = pp.to_original(col, test.y[t_seen, j].numpy())
            err = pp.to_original(col, pred) - truth
            out.setdefault("target_rmse", []).append(float(np.sqrt(np.mean(err**2))))
    return {k: float(np.mean(v)) for k, v in out.items()}


def constant_metrics(schema: Schema, pp: Preprocessor, train, test) -> dict:
    """The target error of the best constant: the training rows' mean (original units) or majority class."""
    out: dict[str, list[float]] = {}
    for j, col in enumerate(schema.targets):
        seen, t_seen = train.my[:, j].numpy(), test.my[:, j].numpy()
        y, truth = train.y[seen, j].numpy(), test.y[t_seen, j].numpy()
        if col.is_discrete:
            values, counts = np.unique(y, return_counts=True)
            out.setdefault("target_accuracy", []).append(float((truth == values[counts.argmax()]).mean()))
        else:
            err = pp.to_original(col, truth) - pp.to_original(col, y).mean()
            out.setdefault("target_rmse", []).append(float(np.sqrt(np.mean(err**2))))
    return {k: float(np.mean(v)) for k, v in out.items()}


def baseline_split(df: pd.DataFrame, schema: Schema, split: int, method: str, seed: int = 0) -> dict[str, float]:
    """One method on one split: the same training rows, test rows and test mask as `evaluate_split`."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    train_idx, test_idx = split_indices(len(df), split)
    train_df = df.iloc[train_idx].reset_index(drop=True)
    pp = Preprocessor.fit(schema, table_columns(train_df), warps=False)  # the protocol's scale, as documented
    train = encode_rows(pp, train_df)
    test = encode_rows(pp, df.iloc[test_idx].reset_index(drop=True))
    observed = protocol_test_mask(len(test_idx), len(schema.features), split) & test.mx.numpy()
    hidden = test.mx.numpy() & ~observed
    t0 = time.perf_counter()
    if method == "constant":
        metrics = constant_metrics(schema, pp, train, test)
    elif method == "hgb_nan":
        metrics = hgb_nan_metrics(schema, pp, train, test, observed, seed)
    else:
        imputed = impute(method, seed, Encoding(schema, pp), train, test.x.numpy(), observed)
        metrics = imputation_metrics(schema, pp, imputed, test.x.numpy(), hidden)
    metrics["train_seconds"] = time.perf_counter() - t0
    return metrics


def run_baselines(
    df: pd.DataFrame,
    schema: Schema,
    splits: list[int],
    methods: tuple[str, ...] = METHODS,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """{method: [metrics per split]}."""
    out: dict[str, list[dict[str, float]]] = {}
    for method in methods:
        for k in splits:
            out.setdefault(method, []).append(baseline_split(df, schema, k, method, seed))
            if log:
                log(f"{method} split {k}: " + ", ".join(f"{n} {v:.4f}" for n, v in sorted(out[method][-1].items())))
    return out
