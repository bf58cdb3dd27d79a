"""scikit-learn estimators over HH-VAEM: an imputer, a regressor and a classifier for tables with holes.

Each estimator trains with `hhvaem.training.fit`, writes a real artifact (the directory `hhvaem serve` serves:
manifest.json, the ONNX graphs, model.pt, plus `estimator.json` saying how the estimator reads it) and answers
through the inference engine (`hhvaem.app.engine.Engine`) with the engine's query objects. Missing cells are NaN
(or None) in arrays and DataFrames; DataFrames may hold text categories.

Predictions are a function of the row: each row's noise is seeded from `random_state` and the row's own values,
so a row gets the same answer whatever other rows share its call (and in whatever order). Multiple imputation
(`HHVAEMImputer.sample`) draws each table from one posterior sample per row (`MultipleImputeQuery`).

torch is imported only when an estimator is fitted; loading a saved estimator and predicting needs ONNX Runtime
and numpy only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d, validate_data

from hhvaem.app.engine import Engine, FieldError, InputError
from hhvaem.app.engine.queries import ImputeQuery, MultipleImputeQuery, NextFeaturesQuery, PredictQuery

__all__ = ["HHVAEMClassifier", "HHVAEMImputer", "HHVAEMRegressor"]

SIDECAR = "estimator.json"  # in the artifact: which estimator, its parameters, how it names the columns
CHUNK_ROWS = 256  # rows per sampler call


class _HHVAEMEstimator(BaseEstimator):
    """What the three estimators share: input checks, training into an artifact, the engine, save/load."""

    _kind: str  # "imputer" | "regressor" | "classifier": written to, and checked against, estimator.json

    def __init__(
        self,
        steps: int = 2000,
        variant: str = "hhvaem",
        samples: int = 100,
        types: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        random_state: int | None = 0,
        threads: int = 1,
        artifact_dir: str | None = None,
        verbose: bool | int = False,
        calibrate: bool = False,
    ):
        self.steps = steps
        self.variant = variant
        self.samples = samples
        self.types = types
        self.overrides = overrides
        self.random_state = random_state
        self.threads = threads
        self.artifact_dir = artifact_dir
        self.verbose = verbose
        self.calibrate = calibrate

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # holes are what the model is for
        return tags

    # ---- input ----------------------------------------------------------------------------
    def _table(self, X, reset: bool) -> pd.DataFrame:
        """X checked the scikit-learn way (shape, feature names, finiteness), as a frame named like the model."""
        if not reset:
            check_is_fitted(self)
        min_rows = 2 if reset else 1
        if isinstance(X, pd.DataFrame) and not all(pd.api.types.is_numeric_dtype(t) for t in X.dtypes):
            # text categories: keep the values as they are (the engine checks each cell against the schema)
            validate_data(self, X, reset=reset, dtype=None, ensure_all_finite=False, ensure_min_samples=min_rows)
            df = X.reset_index(drop=True)
            df.columns = self._input_names(X.shape[1])
            return df  # each column keeps its dtype: numbers stay numbers for schema inference
        values = validate_data(
            self, X, reset=reset, dtype="numeric", ensure_all_finite="allow-nan", ensure_min_samples=min_rows
        )
        return pd.DataFrame(values.astype(np.float64), columns=self._input_names(values.shape[1]))

    def _input_names(self, n: int) -> list[str]:
        names = getattr(self, "feature_names_in_", None)
        return [str(c) for c in names] if names is not None else [f"x{i}" for i in range(n)]

    @staticmethod
    def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
        rows = df.astype(object).where(pd.notna(df), None).to_dict("records")
        return [{k: v for k, v in r.items() if v is not None} for r in rows]

    def _seed(self) -> int:
        if isinstance(self.random_state, (int, np.integer)):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _row_seed(self, row: Mapping[str, Any], base: int) -> int:
        """The noise seed of one row: `random_state` and the row's values, nothing else."""
        text = json.dumps(row, sort_keys=True, default=str)
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        return int(np.random.SeedSequence([base, int.from_bytes(digest, "little")]).generate_state(1)[0])

    # ---- training -------------------------------------------------------------------------
    def _train(self, df: pd.DataFrame, target: str, target_type: Mapping[str, Any] | None = None) -> None:
        """Infers the schema (the project's rule; `types` overrides), trains, writes the artifact, loads it."""
        import torch

        from hhvaem.training import quality
        from hhvaem.training.artifact import data_fingerprint, write_artifact
        from hhvaem.training.finish import finish
        from hhvaem.training.fit import fit, planned_steps
        from hhvaem.training.progress import LineProgress
        from hhvaem.training.tabular import PYTHON, infer_schema, validate_table
        from hhvaem.training.trainer import StageSteps

        types = dict(self.types or {})
        if target_type is not None:
            types[target] = dict(target_type)
        schema = infer_schema(df, [target], types, remedies=PYTHON)  # its messages name `types=`, not CLI flags
        table, _ = validate_table(df, schema, min_rows=2, remedies=PYTHON)
        threads = torch.get_num_threads()
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        try:
            steps = StageSteps(**self.steps) if isinstance(self.steps, Mapping) else self.steps
            progress = None
            if self.verbose:  # scikit-learn's convention: progress on stdout
                stages = planned_steps(self.variant, len(table), len(schema.features), steps)
                progress = LineProgress(sys.stdout, f"[{type(self).__name__}] ", stages=stages)
            train_df, held = quality.split_rows(table, self._seed()) if self.calibrate else (table, None)

            def refit(rows: pd.DataFrame):
                overrides = dict(self.overrides or {})
                return fit(rows, schema, self.variant, steps, self._seed(), progress, overrides=overrides)

            fitted = refit(train_df)
            if self.artifact_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="hhvaem-")
                out = Path(self._tmp.name) / "model"
            else:
                out = Path(self.artifact_dir)
            write_artifact(out, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(table))
            if self.calibrate:
                say = (lambda line: print(f"[{type(self).__name__}] {line}")) if self.verbose else (lambda line: None)
                finish(out, len(table), train_df, held, fitted, refit, self._seed(), max(self.threads, 1), True, say)
        finally:
            torch.set_num_threads(threads)
        self.artifact_dir_ = str(out)
        self.target_ = target
        (out / SIDECAR).write_text(json.dumps(self._sidecar(), indent=1, default=str))
        self.engine_ = Engine(out, threads=self.threads)

    def _sidecar(self) -> dict[str, Any]:
        names = getattr(self, "feature_names_in_", None)
        return {
            "estimator": self._kind,
            "params": self.get_params(),
            "feature_names_in": None if names is None else [str(n) for n in names],
            "n_features_in": self.n_features_in_,
            "target": self.target_,
            "classes": [_plain(c) for c in getattr(self, "classes_", [])] or None,
        }

    # ---- answering ------------------------------------------------------------------------
    def _answer_rows(self, df: pd.DataFrame, query: Callable[[dict[str, Any], int], Any]) -> list[Any]:
        """One single-row query per row (`query(row, seed)`), run CHUNK_ROWS rows per sampler call."""
        check_is_fitted(self)
        base = self._seed()
        prepared, errors = [], []
        for i, row in enumerate(self._records(df)):
            try:
                prepared.append(query(row, self._row_seed(row, base)).prepare(self.engine_))
            except InputError as e:  # the row's own query calls it row 0
                errors += [FieldError(err.field, err.reason, i) for err in e.errors]
        if errors:
            raise InputError(errors)
        answers: list[Any] = []
        for start in range(0, len(prepared), CHUNK_ROWS):
            answers.extend(self.engine_.run(prepared[start : start + CHUNK_ROWS]))
        return answers

    def next_features(
        self,
        X,
        top_k: int | None = None,
        costs: Mapping[str, float] | None = None,
        method: str = "mixture",
    ) -> list[list[dict[str, Any]]]:
        """For each row of X: the unobserved features ranked by expected information gain about the model's
        target (gain per unit cost with `costs`), best first: [{"feature", "gain", "cost", "gain_per_cost"}]."""
        df = self._model_frame(self._table(X, reset=False))
        answers = self._answer_rows(
            df,
            lambda row, seed: NextFeaturesQuery(
                {k: v for k, v in row.items() if k != self.target_},
                costs=costs,
                top_k=top_k,
                samples=self.samples,
                seed=seed,
                method=method,
            ),
        )
        return [a["ranking"] for a in answers]

    def _model_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """The input frame as the model reads it (the imputer keeps its target column; the others have none)."""
        return df

    # ---- saving ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Copies the artifact to `path`: a directory `hhvaem serve --models` (or `POST /v1/models`) serves."""
        check_is_fitted(self)
        path = Path(path)
        shutil.copytree(self.artifact_dir_, path, dirs_exist_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path):
        """The estimator of an artifact directory: one saved by `save`, or any `hhvaem train` artifact (its
        features are the inputs, its first target the target)."""
        path = Path(path)
        engine = Engine(path, threads=1)
        side = path / SIDECAR
        info = json.loads(side.read_text()) if side.is_file() else cls._sidecar_of(engine)
        if info["estimator"] != cls._kind:
            raise ValueError(f"{path}: holds an HHVAEM {info['estimator']}, not a {cls._kind}")
        est = cls(**{k: v for k, v in info["params"].items() if k in cls._get_param_names()})
        est.artifact_dir_, est.target_, est.n_features_in_ = str(path), info["target"], info["n_features_in"]
        if info.get("feature_names_in") is not None:
            est.feature_names_in_ = np.asarray(info["feature_names_in"], dtype=object)
        est._loaded(engine, info)
        est.engine_ = Engine(path, threads=est.threads) if est.threads != 1 else engine
        return est

    @classmethod
    def _sidecar_of(cls, engine: Engine) -> dict[str, Any]:
        schema = engine.schema
        target = schema.targets[0]
        names = [c.name for c in schema.features] + ([target.name] if cls._kind == "imputer" else [])
        kind = cls._kind if cls._kind == "imputer" else ("classifier" if target.is_discrete else "regressor")
        classes = list(target.categories) if target.is_discrete else None
        return {
            "estimator": kind,
            "params": {},
            "feature_names_in": names,
            "n_features_in": len(names),
            "target": target.name,
            "classes": classes,
        }

    def _loaded(self, engine: Engine, info: dict[str, Any]) -> None:
        """Estimator-specific attributes of a loaded artifact."""

    # An Engine holds ONNX Runtime sessions, which do not pickle: a pickle carries the artifact's files instead,
    # so that it loads anywhere, after the original temporary directory is gone.
    def __getstate__(self):
        state = super().__getstate__()
        state = {k: v for k, v in state.items() if k not in ("engine_", "_tmp")}
        if "artifact_dir_" in state:
            folder = Path(state["artifact_dir_"])
            state["_artifact_files"] = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        return state

    def __setstate__(self, state):
        files = state.pop("_artifact_files", None)
        super().__setstate__(state)
        if files is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hhvaem-")
            folder = Path(self._tmp.name) / "model"
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            self.artifact_dir_ = str(folder)
            self.engine_ = Engine(folder, threads=self.threads)


class HHVAEMImputer(TransformerMixin, _HHVAEMEstimator):
    """Fills in the holes of a table: `transform` gives each hole's posterior mean (mode for categories),
    `sample(X, n_imputations=M)` (or `transform(X, n_imputations=M)`) gives M completed tables, each one draw
    from the posterior.

    The model needs one column as its target (it gets the model's direct predictor head; impute it like the
    rest): `target` names it (a column name for DataFrames, an index for arrays; default: the last column).
    Choose the column you most want imputed well. `y` is ignored.

    Parameters: `steps` (training budget, as `hhvaem train --steps`; or per stage, {"marginal", "vi", "hmc"}),
    `variant`, `samples` (posterior samples
    per answer), `types` ({column: type or {"type", "categories"}} overriding schema inference), `overrides`
    (ModelConfig / TrainConfig fields, e.g. {"hidden": 16}), `random_state`, `threads` (torch and ONNX Runtime
    threads), `artifact_dir` (where fit writes the artifact; default a temporary directory), `verbose` (True:
    `fit` prints training progress on stdout: each stage's step rate and time left, every 10 s), `calibrate`
    (True: as `hhvaem train` does, hold rows out, or cross-fit a second model under 500 rows, to calibrate the
    served quantiles and write the model card; default False: every row trains, quantiles are the model's raw
    ones).
    """

    _kind = "imputer"

    def __init__(
        self,
        target: str | int | None = None,
        steps: int = 2000,
        variant: str = "hhvaem",
        samples: int = 100,
        types: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        random_state: int | None = 0,
        threads: int = 1,
        artifact_dir: str | None = None,
        verbose: bool | int = False,
        calibrate: bool = False,
    ):
        super().__init__(
            steps, variant, samples, types, overrides, random_state, threads, artifact_dir, verbose, calibrate
        )
        self.target = target

    def fit(self, X, y=None):
        df = self._table(X, reset=True)
        if df.shape[1] < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 columns (one serves as the model's target); "
                f"got {df.shape[1]} feature(s)"
            )
        self._train(df, self._target_name(df.columns))
        return self

    def _target_name(self, names: Sequence[str]) -> str:
        names = list(names)
        if self.target is None:
            return names[-1]
        if isinstance(self.target, (int, np.integer)) and not isinstance(self.target, bool):
            if not -len(names) <= self.target < len(names):
                raise ValueError(f"target: column index {self.target} is out of range for {len(names)} columns")
            return names[self.target]
        if str(self.target) not in names:
            raise ValueError(f"target: {self.target!r} is not a column of X ({', '.join(names[:20])})")
        return str(self.target)

    def transform(self, X, n_imputations: int | None = None):
        """X with every hole filled by its posterior mean (counts rounded; categories: the mode). With
        `n_imputations=M`: `sample(X, M)`, a list of M tables."""
        if n_imputations is not None:
            return self.sample(X, n_imputations)
        df = self._table(X, reset=False)
        answers = self._answer_rows(df, lambda row, seed: ImputeQuery([row], self.samples, seed=seed, strict=False))
        out = pd.DataFrame([a[0]["values"] for a in answers], columns=df.columns)
        return self._like(out, X)

    def sample(self, X, n_imputations: int = 5, random_state: int | None = None) -> list:
        """`n_imputations` completed copies of X, each a proper draw from the posterior predictive: imputation m
        takes one posterior sample per row and draws all of the row's holes from it (jointly, not mean plus
        noise). Rows are independent of one another; `random_state` (default: the estimator's) seeds the draws."""
        check_is_fitted(self)
        if not isinstance(n_imputations, (int, np.integer)) or isinstance(n_imputations, bool) or n_imputations < 1:
            raise ValueError(f"n_imputations: must be a positive integer, got {n_imputations!r}")
        n_imputations = int(n_imputations)
        df = self._table(X, reset=False)
        rows = self._records(df)
        seed = self._seed() if random_state is None else int(random_state)
        samples = max(self.samples, n_imputations)
        draws: list[list[dict[str, Any]]] = []
        for k, start in enumerate(range(0, len(rows), CHUNK_ROWS)):
            query = MultipleImputeQuery(rows[start : start + CHUNK_ROWS], n_imputations, samples, seed + k, False)
            draws.extend(self.engine_.answer(query))
        return [
            self._like(pd.DataFrame([row[m] for row in draws], columns=df.columns), X) for m in range(n_imputations)
        ]

    def _like(self, out: pd.DataFrame, X):
        """The completed table in X's container: a DataFrame (X's index) for a DataFrame, else an array."""
        if isinstance(X, pd.DataFrame):
            out.index = X.index
            if getattr(self, "feature_names_in_", None) is not None:
                return out.infer_objects()
            out.columns = X.columns
            return out.infer_objects()
        values = out.to_numpy()
        try:
            return values.astype(np.float64)
        except (TypeError, ValueError):  # text categories
            return values

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self)
        names = self._input_names(self.n_features_in_)
        if input_features is not None and [str(f) for f in input_features] != names:
            raise ValueError("input_features is not equal to feature_names_in_")
        return np.asarray(names, dtype=object)


class HHVAEMRegressor(RegressorMixin, _HHVAEMEstimator):
    """Predicts a numeric target from rows with holes: `predict(X)` the posterior predictive mean,
    `predict(X, return_std=True)` also its standard deviation. `y` may have missing values (those rows still
    teach the model the features' joint); `target_type` is the target's column type (real or positive, count).
    Other parameters as `HHVAEMImputer`."""

    _kind = "regressor"

    def __init__(
        self,
        target_type: str = "real",
        steps: int = 2000,
        variant: str = "hhvaem",
        samples: int = 100,
        types: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        random_state: int | None = 0,
        threads: int = 1,
        artifact_dir: str | None = None,
        verbose: bool | int = False,
        calibrate: bool = False,
    ):
        super().__init__(
            steps, variant, samples, types, overrides, random_state, threads, artifact_dir, verbose, calibrate
        )
        self.target_type = target_type

    def fit(self, X, y):
        df = self._table(X, reset=True)
        name = _target_column(df.columns, y)
        y = _target_values(y, len(df))
        y = pd.to_numeric(pd.Series(y), errors="raise").to_numpy(dtype=np.float64)
        if np.isinf(y).any():
            raise ValueError("Input y contains infinity")
        if np.isnan(y).all():
            raise ValueError("Input y contains NaN only: every target is missing")
        df[name] = y
        self._train(df, name, {"type": self.target_type})
        return self

    def predict(self, X, return_std: bool = False):
        df = self._table(X, reset=False)
        answers = self._answer_rows(df, lambda row, seed: PredictQuery([row], self.samples, seed=seed, strict=False))
        summaries = [a[0]["targets"][self.target_] for a in answers]
        mean = np.array([s["mean"] for s in summaries], dtype=np.float64)
        if return_std:
            return mean, np.array([s["std"] for s in summaries], dtype=np.float64)
        return mean

    def predict_interval(self, X, level: float = 0.9) -> np.ndarray:
        """The central `level` predictive interval of each row's target, [n, 2] (lower, upper): the served
        quantiles, with the model's conformal correction when it was fitted with `calibrate=True`."""
        check_is_fitted(self, "engine_")
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level!r}")
        q = ((1 - level) / 2, (1 + level) / 2)
        df = self._table(X, reset=False)
        answers = self._answer_rows(df, lambda row, seed: PredictQuery([row], self.samples, q, seed, strict=False))
        keys = [f"{v:g}" for v in q]
        return np.array([[a[0]["targets"][self.target_]["quantiles"][k] for k in keys] for a in answers])


class HHVAEMClassifier(ClassifierMixin, _HHVAEMEstimator):
    """Predicts a class from rows with holes: `predict_proba(X)` the posterior predictive class probabilities
    (columns in `classes_` order), `predict(X)` the most probable class. Labels may be missing (None / NaN) for
    some rows. Parameters as `HHVAEMImputer`."""

    _kind = "classifier"

    def fit(self, X, y):
        df = self._table(X, reset=True)
        name = _target_column(df.columns, y)
        y = _target_values(y, len(df))
        missing = pd.isna(y)
        if missing.all():
            raise ValueError("Input y contains NaN only: every label is missing")
        labels = y[~missing]
        check_classification_targets(labels)
        self.classes_ = np.unique(labels)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y; got 1 class")
        df[name] = np.where(missing, None, y).astype(object)
        categories = [_plain(c) for c in self.classes_]
        kind = "binary" if len(categories) == 2 else "categorical"
        self._train(df, name, {"type": kind, "categories": categories})
        return self

    def predict_proba(self, X) -> np.ndarray:
        df = self._table(X, reset=False)
        answers = self._answer_rows(df, lambda row, seed: PredictQuery([row], self.samples, seed=seed, strict=False))
        keys = [str(_plain(c)) for c in self.classes_]
        return np.array([[a[0]["targets"][self.target_]["probabilities"][k] for k in keys] for a in answers])

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def _loaded(self, engine: Engine, info: dict[str, Any]) -> None:
        self.classes_ = np.asarray(info["classes"])


def _target_values(y, n_rows: int) -> np.ndarray:
    if y is None:
        raise ValueError("this estimator requires y to be passed, but the target y is None")
    y = column_or_1d(np.asarray(y, dtype=object) if _has_text(y) else y, warn=True)
    check_consistent_length(np.empty(n_rows), y)
    return y


def _has_text(y) -> bool:
    return any(isinstance(v, str) for v in np.asarray(y, dtype=object).ravel()[:1000])


def _target_column(names, y) -> str:
    """The target's name in the model: a pandas Series' name, else "y"; never an input column's name."""
    name = y.name if isinstance(getattr(y, "name", None), str) and y.name else "y"
    while name in set(names):
        name += "_"
    return name


def _plain(value: Any) -> Any:
    """numpy scalars as Python's (the schema is JSON)."""
    return value.item() if isinstance(value, np.generic) else value
