"""The three questions as query objects: what a caller asks, validated, and how its answer is read off the graph.

Each query knows how to prepare itself on an engine (encode its rows, draw its noise) and how to turn the sampler
graph's named outputs into its answer, in the user's units. The engine runs many prepared queries in one graph call.
Every draw a row's answer makes comes from the row's own streams (`Prepared.rng(row, kind, column)`), so the answer
depends on the row, the model, the sample count and the seed only: not on the rows beside it, in the request or in
the sampler call, nor on which other figures were asked for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hhvaem.app.engine import plausibility as checks
from hhvaem.app.engine.errors import FieldError, InputError
from hhvaem.app.engine.summaries import ColumnPredictive, point_value, summarise, uncertainty
from hhvaem.model.acquisition import (
    Gain,
    Mixture,
    histogram_information,
    mixture_gain,
    rank_features,
    stopping_advice,
)

if TYPE_CHECKING:
    from hhvaem.app.engine.engine import Engine, Prepared

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
# The kinds of a row's draw streams (`Prepared.rng`), each keyed further by the schema column it draws for.
SUMMARY, GAIN, IMPUTATION, PLAUSIBILITY = 0, 1, 2, 3
METHODS = ("mixture", "histogram")
Row = Mapping[str, Any]


def check_quantiles(quantiles) -> tuple[float, ...]:
    try:
        qs = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError):
        raise InputError([FieldError("quantiles", "expected a list of numbers in (0, 1)")]) from None
    bad = [q for q in qs if not 0.0 < q < 1.0]
    if bad:
        raise InputError([FieldError("quantiles", f"each quantile must lie in (0, 1), got {bad[0]!r}")])
    return qs


@dataclass(frozen=True)
class ImputeQuery:
    """Fill in the holes of `rows`: every hole's predictive summary, and the completed rows."""

    rows: Sequence[Row]
    samples: int | None = None  # posterior samples (None: the model's default)
    quantiles: Sequence[float] = DEFAULT_QUANTILES
    seed: int | None = None
    return_samples: bool = False
    strict: bool = True  # JSON clients: only null is missing, text is not parsed as a number (tables: False)
    calibrated: bool = True  # quantiles with the model's conformal correction (False: the model's raw ones)
    plausibility: bool = False  # also check each observed feature against the others (app/engine/plausibility.py)
    plausibility_threshold: float = checks.DEFAULT_THRESHOLD

    def prepare(self, engine: Engine) -> Prepared:
        quantiles = check_quantiles(self.quantiles)
        threshold = checks.check_threshold(self.plausibility_threshold)
        rows, copies = checks.with_copies(self.rows, engine, self.plausibility)
        threshold = threshold if self.plausibility else None
        finish = lambda p, o: _checked(self.finish(engine, p, o, quantiles), engine, p, o, copies, threshold)  # noqa: E731
        return engine.prepare(rows, self.samples, self.seed, finish, self.strict)

    def finish(self, engine: Engine, prep: Prepared, out: dict[str, np.ndarray], quantiles) -> list[dict[str, Any]]:
        schema = engine.schema
        mask = np.concatenate([prep.feeds["mask"], prep.feeds["y_mask"]], axis=1)
        features, target = out["features"], out["target"]
        w = max(features.shape[-1], target.shape[-1])
        pad = [(0, 0)] * 3
        params = np.concatenate(
            [np.pad(features, [*pad, (0, w - features.shape[-1])]), np.pad(target, [*pad, (0, w - target.shape[-1])])],
            axis=2,
        )
        rows = []
        for i, row in enumerate(self.rows):
            completed, imputed = {}, {}
            for j, c in enumerate(schema.columns):
                if mask[i, j]:
                    completed[c.name] = row[c.name]
                else:
                    imputed[c.name] = _summary(
                        engine, prep, i, j, c, params[i, :, j], quantiles, self.return_samples, self.calibrated
                    )
                    completed[c.name] = point_value(c, imputed[c.name])
            rows.append({"values": completed, "imputed": imputed, "acceptance_rate": float(out["acceptance"][i])})
        return rows


@dataclass(frozen=True)
class MultipleImputeQuery:
    """`imputations` completed copies of each of `rows`, each a proper draw from the posterior predictive.

    Imputation m takes posterior sample m (the graph's natural parameters `features[:, m]` and `target[:, m]`,
    which come from one latent draw eps_m and one code draw) and draws every hole of the row from that sample's
    likelihood, so the holes of one row are drawn jointly, through the same eps_m; it is not the mean plus noise.
    The answer is, per row, a list of `imputations` completed rows (observed values as given).
    """

    rows: Sequence[Row]
    imputations: int
    samples: int | None = None  # posterior samples drawn (None: the model's default); at least `imputations`
    seed: int | None = None
    strict: bool = True

    def prepare(self, engine: Engine) -> Prepared:
        m = self.imputations
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise InputError([FieldError("imputations", f"must be a positive integer, got {m!r}")])
        samples = engine.default_samples if self.samples is None else self.samples
        if isinstance(samples, int) and not isinstance(samples, bool) and m > samples:
            reason = f"at most the number of posterior samples ({samples}), got {m}"
            raise InputError([FieldError("imputations", reason)])
        return engine.prepare(self.rows, self.samples, self.seed, lambda p, o: self.finish(engine, p, o), self.strict)

    def finish(self, engine: Engine, prep: Prepared, out: dict[str, np.ndarray]) -> list[list[dict[str, Any]]]:
        m = self.imputations
        observed = np.concatenate([prep.feeds["mask"], prep.feeds["y_mask"]], axis=1) > 0
        features, target = out["features"][:, :m], out["target"][:, :m]
        n_features = len(engine.schema.features)
        answer = []
        for i, row in enumerate(self.rows):
            draws = {}  # column -> [M] values in the user's units, for the row's holes
            for j, col in enumerate(engine.schema.columns):
                if observed[i, j]:
                    continue
                natural = features[i : i + 1, :, j] if j < n_features else target[i : i + 1, :, j - n_features]
                params = col.family.component_params(natural, col.n_categories)
                drawn = col.family.sample(params, prep.rng(i, IMPUTATION, j))[0]
                if col.is_discrete:
                    draws[col.name] = np.asarray(col.categories, dtype=object)[drawn.astype(int)]
                else:
                    draws[col.name] = engine.preprocessor.to_original(col, drawn)
            completed = []
            for k in range(m):
                values = {}
                for j, col in enumerate(engine.schema.columns):
                    if observed[i, j]:
                        values[col.name] = row[col.name]
                    else:
                        v = draws[col.name][k]
                        values[col.name] = v if col.is_discrete else col.family.to_json(v)
                completed.append(values)
            answer.append(completed)
        return answer


def _refuse_known_targets(engine: Engine, rows: Sequence[Row]) -> None:
    """A prediction of a target the row already gives would be that value back, not a prediction: refused, as
    sessions refuse it (impute conditions on a known target: that is where a given target belongs)."""
    targets = {c.name for c in engine.schema.targets}
    errors = [
        FieldError(name, "is the model's target: predict answers it, a row cannot give it (impute takes it)", row=i)
        for i, row in enumerate(rows)
        if isinstance(row, Mapping)
        for name, value in row.items()
        if name in targets and value is not None
    ]
    if errors:
        raise InputError(errors)


@dataclass(frozen=True)
class PredictQuery:
    """The targets' predictive distribution for each of `rows`, from whatever the row holds."""

    rows: Sequence[Row]
    samples: int | None = None
    quantiles: Sequence[float] = DEFAULT_QUANTILES
    seed: int | None = None
    return_samples: bool = False
    strict: bool = True
    calibrated: bool = True
    extra_outputs: frozenset[str] = frozenset()  # graph outputs a caller reads besides the answer (SAIA: target_given)
    plausibility: bool = False
    plausibility_threshold: float = checks.DEFAULT_THRESHOLD

    def prepare(self, engine: Engine) -> Prepared:
        quantiles = check_quantiles(self.quantiles)
        threshold = checks.check_threshold(self.plausibility_threshold)
        _refuse_known_targets(engine, self.rows)
        rows, copies = checks.with_copies(self.rows, engine, self.plausibility)
        threshold = threshold if self.plausibility else None
        finish = lambda p, o: _checked(self.finish(engine, p, o, quantiles), engine, p, o, copies, threshold)  # noqa: E731
        return engine.prepare(rows, self.samples, self.seed, finish, self.strict, self.extra_outputs)

    def finish(self, engine: Engine, prep: Prepared, out: dict[str, np.ndarray], quantiles) -> list[dict[str, Any]]:
        first = len(engine.schema.features)  # the targets' place among the schema's columns
        samples = self.return_samples
        return [
            {
                "targets": {
                    c.name: _summary(
                        engine, prep, i, first + t, c, out["target"][i, :, t], quantiles, samples, self.calibrated
                    )
                    for t, c in enumerate(engine.schema.targets)
                },
                "acceptance_rate": float(out["acceptance"][i]),
            }
            for i in range(len(self.rows))
        ]


@dataclass(frozen=True)
class NextFeaturesQuery:
    """Which unobserved feature of `row` to measure next: candidates ranked by information gain about a target."""

    row: Row
    candidates: Sequence[str] | None = None  # None: every unobserved feature
    exclude: Sequence[str] = ()  # features not to rank (e.g. questions the user skipped)
    costs: Mapping[str, float] | None = None  # ranks by gain per unit cost when given
    top_k: int | None = None
    samples: int | None = None
    seed: int | None = None
    target: str | None = None  # None: the model's first target
    method: str = "mixture"  # or "histogram" (the paper's estimator)
    min_gain: float = 0.01  # the stopping hint: below this best gain, stop
    max_uncertainty: float | None = None  # ... or when the prediction is this certain
    quantiles: Sequence[float] = DEFAULT_QUANTILES
    calibrated: bool = True

    def prepare(self, engine: Engine) -> Prepared:
        quantiles = check_quantiles(self.quantiles)
        errors: list[FieldError] = []
        tcol = engine.target_column(self.target, errors)
        if self.method not in METHODS:
            known = ", ".join(METHODS)
            errors.append(FieldError("method", f"unknown method {self.method!r} (expected one of {known})"))
        top_k = self.top_k
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            errors.append(FieldError("top_k", f"must be a positive integer, got {top_k!r}"))
        observed = {k for k, v in self.row.items() if v is not None} if isinstance(self.row, Mapping) else set()
        pool = engine.candidates(self.candidates, observed, errors)
        unknown = sorted(set(self.exclude) - set(engine.feature_index))
        if unknown:
            errors.append(FieldError("exclude", f"unknown feature {unknown[0]!r}"))
        pool = [name for name in pool if name not in set(self.exclude)]
        for name, cost in (self.costs or {}).items():
            if name not in engine.feature_index:
                errors.append(FieldError(f"costs.{name}", "unknown feature"))
            elif isinstance(cost, bool) or not isinstance(cost, (int, float)) or not (math.isfinite(cost) and cost > 0):
                errors.append(FieldError(f"costs.{name}", f"must be a positive finite number, got {cost!r}"))
        if errors:
            raise InputError(errors)
        finish = lambda p, o: self.finish(engine, p, o, tcol, pool, quantiles)  # noqa: E731
        return engine.prepare([self.row], self.samples, self.seed, finish, needs=frozenset({"target_given"}))

    def finish(self, engine: Engine, prep: Prepared, out, tcol, pool, quantiles) -> dict[str, Any]:
        ti = engine.target_index[tcol.name]
        y_pred = ColumnPredictive(tcol, out["target"][:, :, ti])
        gains = self.gains(engine, out, tcol, ti, pool, lambda j: prep.rng(0, GAIN, j))
        costs = {k: float(v) for k, v in (self.costs or {}).items()} or None
        ranking = rank_features({k: g.value for k, g in gains.items()}, costs, self.top_k)
        unc = uncertainty(y_pred, engine.preprocessor, 0)
        advice = stopping_advice(ranking[0].gain if ranking else None, unc, self.min_gain, self.max_uncertainty)
        first = len(engine.schema.features)
        return {
            "target": tcol.name,
            "method": self.method,
            "ranking": [{**vars(r), "gain_se": _finite(gains[r.feature].se)} for r in ranking],
            "tie": tie(ranking, gains),
            "prediction": _summary(
                engine, prep, 0, first + ti, tcol, out["target"][0, :, ti], quantiles, False, self.calibrated
            ),
            "uncertainty": unc,
            "stop": {"stop": advice.stop, "reason": advice.reason},
            "acceptance_rate": float(out["acceptance"][0]),
        }

    def gains(self, engine: Engine, out, tcol, ti: int, pool, rng_for) -> dict[str, Gain]:
        """I(y; x_i | x_O) for each candidate, on the joint the model implies: component k pairs p_k(x_i) with the
        target's p(y | eps_k, x_i = its sampled value) (the graph's `target_given`); for a feature the model reads
        directly (a category, no code), p_k(x_i) is the point mass at the value drawn (`draws`). Every
        candidate is scored on the same K posterior samples (common random numbers), so differences between
        candidates carry less noise than the gains themselves; the mixture estimator reports each gain's Monte
        Carlo standard error, the histogram baseline none (inf). `rng_for(j)`: candidate j's generator, so a
        candidate's gain does not depend on which others are ranked with it."""
        gains = {}
        draws = out.get("draws")
        for name in pool:
            j = engine.feature_index[name]
            col = engine.schema.features[j]
            if draws is not None and (draws[0, :, j] >= 0).all():
                x_mix = Mixture(col.family, np.eye(col.n_categories)[draws[0, :, j].astype(int)])
            else:
                x_mix = ColumnPredictive(col, out["features"][:, :, j]).mixture(0)
            y_mix = ColumnPredictive(tcol, out["target_given"][:, :, j, ti]).mixture(0)
            rng = rng_for(j)
            if self.method == "mixture":
                gains[name] = mixture_gain(x_mix, y_mix, rng)
            else:  # the paper's estimator: a 2-d histogram of one joint draw per posterior sample
                x, y = x_mix.sample(rng), y_mix.sample(rng)  # draw k of each from component k: joint draws
                value = float(histogram_information(x, y, x_mix.discrete, y_mix.discrete))
                gains[name] = Gain(value, float("inf"), np.zeros(0))
        return gains


# The top two are "tied" when their difference is within this many standard errors of it.
TIE_STANDARD_ERRORS = 2.0


def tie(ranking, gains: dict[str, Gain]) -> dict[str, Any]:
    """Whether the first two of the ranking are within Monte Carlo noise of each other (then more samples, or
    either question, will do): {"tied", "features", "difference", "difference_se"}."""
    if len(ranking) < 2:
        return {"tied": False, "features": [r.feature for r in ranking], "difference": None, "difference_se": None}
    a, b = gains[ranking[0].feature], gains[ranking[1].feature]
    diff, se = a.value - b.value, a.difference_se(b)
    return {
        "tied": bool(diff <= TIE_STANDARD_ERRORS * se),
        "features": [ranking[0].feature, ranking[1].feature],
        "difference": float(diff),
        "difference_se": _finite(se),
    }


def _summary(
    engine: Engine,
    prep: Prepared,
    row: int,
    j: int,
    col,
    params: np.ndarray,
    quantiles,
    samples: bool,
    calibrated: bool,
):
    """Row `row`'s predictive summary of schema column `j` (`col`, natural params [K, W]), from the row's own stream
    for that column; its quantiles conformally calibrated (`calibrated` and the model has a calibration) or raw."""
    rng = prep.rng(row, SUMMARY, j)
    draws = engine.draws_per_sample(prep.samples)
    levels = None
    if calibrated and engine.calibration is not None and not col.is_discrete:
        share = prep.feeds["mask"][row : row + 1].mean(1)  # the share of the row's features the model sees
        levels = engine.calibration.levels(col.name, share, quantiles)
    pred = ColumnPredictive(col, params[None])
    return summarise(pred, engine.preprocessor, rng, quantiles, draws, samples, levels)[0]


def _checked(answer: list[dict[str, Any]], engine: Engine, prep: Prepared, out, copies, threshold: float | None):
    """The answer's rows with their plausibility checks added (when the query asked for them: a `threshold`)."""
    if threshold is None:
        return answer
    stream = lambda k, j: prep.rng(k, PLAUSIBILITY, j)  # noqa: E731
    found = checks.read(engine, prep, out, len(answer), copies, threshold, stream)
    return [{**row, **check} for row, check in zip(answer, found)]


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
