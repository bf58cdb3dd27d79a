"""The inference engine over an exported artifact: impute, predict, next_features.

Requests are validated against the artifact's schema, encoded to the normalised scale,
given their own noise (from the request's seed), and run through the exported sampler
graph; many requests can share one graph call (`run`), which is how the service batches
concurrent requests. Results come back in the user's units and categories.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hhvaem.app.engine.backends import Backend, OnnxBackend, TorchBackend
from hhvaem.app.engine.summaries import ColumnPredictive, point_value, summarise, uncertainty
from hhvaem.model.acquisition import histogram_information, mixture_information, rank_features, stopping_advice
from hhvaem.model.io.artifact import PREDICTIVE_GRAPH, ArtifactError, manifest_checksum, read_manifest
from hhvaem.model.preprocessing import EncodingError, Preprocessor, is_missing
from hhvaem.model.schema import Column, Schema

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
# Draws per posterior sample for quantiles: about 1000 values in all, at least one per sample.
QUANTILE_DRAWS = 1000
# Inputs whose rows lie on axis 1 (their axis 0 is the HMC step).
_STEP_MAJOR = ("momentum", "log_u")
METHODS = ("mixture", "histogram")


@dataclass(frozen=True)
class FieldError:
    field: str
    reason: str
    row: int | None = None


class InputError(ValueError):
    """A request that does not fit the model; `errors` names every offending field and why."""

    def __init__(self, errors: Sequence[FieldError]):
        self.errors = list(errors)
        super().__init__(
            "; ".join((f"row {e.row}, " if e.row is not None else "") + f"{e.field}: {e.reason}" for e in self.errors)
        )


@dataclass
class Prepared:
    """One request's encoded rows and noise, ready to share a sampler call with others."""

    feeds: dict[str, np.ndarray]
    rows: int
    samples: int
    finish: Callable[[tuple[np.ndarray, ...]], Any]
    rng: np.random.Generator = field(repr=False, default_factory=np.random.default_rng)


class Engine:
    def __init__(self, artifact: str | Path, backend: str = "onnx", device: str = "auto", threads: int = 0):
        self.path = Path(artifact)
        self.manifest = read_manifest(self.path, require=(PREDICTIVE_GRAPH,))
        self.checksum = manifest_checksum(self.path)
        self.schema = Schema.from_dict(self.manifest["schema"])
        self.preprocessor = Preprocessor.from_dict(self.schema, self.manifest["preprocessing"])
        arch, sampler = self.manifest["architecture"], self.manifest["sampler"]
        self.latent_size = int(arch["latent_size"])
        self.hmc_steps = int(sampler["hmc_steps"])
        self.default_samples = int(sampler.get("default_chains", 100))
        if backend == "onnx":
            self.backend: Backend = OnnxBackend(self.path / PREDICTIVE_GRAPH, device, threads)
        elif backend == "torch":
            self.backend = TorchBackend(self.path, device, threads)
        else:
            raise ArtifactError(f"unknown backend {backend!r} (expected onnx or torch)")
        self._columns = {c.name: c for c in self.schema.columns}
        self._feature_index = {c.name: j for j, c in enumerate(self.schema.features)}
        self._target_index = {c.name: j for j, c in enumerate(self.schema.targets)}

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    # ---- encoding -------------------------------------------------------------------------
    def encode_rows(self, rows: Sequence[Mapping[str, Any]], strict: bool = True):
        """(x, mask, y, y_mask) float32 arrays; every bad cell is reported, not just the first."""
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)) or len(rows) == 0:
            raise InputError([FieldError("rows", "expected a non-empty list of rows")])
        d, p = len(self.schema.features), len(self.schema.targets)
        x, mx = np.zeros((len(rows), d), np.float32), np.zeros((len(rows), d), np.float32)
        y, my = np.zeros((len(rows), p), np.float32), np.zeros((len(rows), p), np.float32)
        errors: list[FieldError] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                errors.append(FieldError("rows", "expected an object mapping feature names to values", i))
                continue
            for name, value in row.items():
                col = self._columns.get(name)
                if col is None:
                    errors.append(FieldError(str(name), f"unknown feature (the model knows {self._known()})", i))
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    errors.append(FieldError(name, f"{value} is not allowed; send null for a missing value", i))
                    continue
                # JSON clients say "missing" with null only; text like "" or "NA" is a value to check
                # (a category may be called "NA"). Tables (strict=False) use the usual missing tokens.
                if value is None or (not strict and is_missing(value)):
                    continue
                try:
                    v = self.preprocessor.encode_value(col, value, i, strict=strict)
                except EncodingError as e:
                    errors.append(FieldError(name, e.reason, i))
                    continue
                far = col.family.implausible(v)
                if far:
                    errors.append(FieldError(name, f"{value!r} is {far}; the model cannot extrapolate that far", i))
                    continue
                if name in self._feature_index:
                    x[i, self._feature_index[name]], mx[i, self._feature_index[name]] = v, 1.0
                else:
                    y[i, self._target_index[name]], my[i, self._target_index[name]] = v, 1.0
        if errors:
            raise InputError(errors)
        return x, mx, y, my

    def _known(self) -> str:
        names = [c.name for c in self.schema.columns]
        return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")

    def noise(self, rows: int, samples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        e, d, t = self.latent_size, len(self.schema.features), self.hmc_steps
        out = {}
        for name in self.backend.inputs:
            if name == "noise":
                out[name] = rng.standard_normal((rows, samples, e), dtype=np.float32)
            elif name == "code_noise":
                out[name] = rng.standard_normal((rows, samples, d), dtype=np.float32)
            elif name == "momentum":
                out[name] = rng.standard_normal((t, rows, samples, e), dtype=np.float32)
            elif name == "log_u":
                out[name] = np.log(rng.random((t, rows, samples), dtype=np.float32) + np.float32(1e-30))
            elif name == "gumbel":
                u = rng.random((rows, samples, samples)) + 1e-30
                out[name] = (-np.log(-np.log(u))).astype(np.float32)
        return out

    def prepare(self, rows, samples: int | None, seed: int | None, finish, strict: bool = True) -> Prepared:
        samples = self._check_samples(samples)
        x, mx, y, my = self.encode_rows(rows, strict)
        rng = np.random.default_rng(seed)
        feeds = {"x": x, "mask": mx, "y": y, "y_mask": my, **self.noise(len(x), samples, rng)}
        prepared = Prepared(feeds, len(x), samples, finish, rng)
        prepared.finish = lambda outputs: finish(prepared, outputs)
        return prepared

    def _check_samples(self, samples: int | None) -> int:
        samples = self.default_samples if samples is None else samples
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 2:
            raise InputError([FieldError("samples", f"must be an integer >= 2, got {samples!r}")])
        return samples

    # ---- running --------------------------------------------------------------------------
    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        """Runs prepared requests with the same sample count through ONE sampler call; finishes each."""
        if len({p.samples for p in batch}) > 1:
            raise ValueError("requests in one sampler call must ask for the same number of samples")
        feeds = {
            k: np.concatenate([p.feeds[k] for p in batch], axis=1 if k in _STEP_MAJOR else 0) for k in batch[0].feeds
        }
        outputs = self.backend.run(feeds)
        results, start = [], 0
        for p in batch:
            part = tuple(o[start : start + p.rows] for o in outputs)
            start += p.rows
            results.append(p.finish(part))
        return results

    # ---- the three questions ----------------------------------------------------------------
    def prepare_impute(
        self, rows, samples=None, quantiles=DEFAULT_QUANTILES, seed=None, return_samples=False, strict=True
    ):
        quantiles = _check_quantiles(quantiles)

        def finish(prep: Prepared, outputs):
            _, features, target, acceptance = outputs[:4]
            out = []
            mask = np.concatenate([prep.feeds["mask"], prep.feeds["y_mask"]], axis=1)
            w = max(features.shape[-1], target.shape[-1])
            pad = [(0, 0)] * 3
            params = np.concatenate(
                [
                    np.pad(features, [*pad, (0, w - features.shape[-1])]),
                    np.pad(target, [*pad, (0, w - target.shape[-1])]),
                ],
                axis=2,
            )
            summaries = {  # only for columns with a hole in some row
                c.name: summarise(
                    ColumnPredictive(c, params[:, :, j]),
                    self.preprocessor,
                    prep.rng,
                    quantiles,
                    self._draws(prep.samples),
                    return_samples,
                )
                for j, c in enumerate(self.schema.columns)
                if not mask[:, j].all()
            }
            for i, row in enumerate(rows):
                completed, imputed = {}, {}
                for j, c in enumerate(self.schema.columns):
                    if mask[i, j]:
                        completed[c.name] = row[c.name]
                    else:
                        imputed[c.name] = summaries[c.name][i]
                        completed[c.name] = point_value(c, imputed[c.name])
                out.append({"values": completed, "imputed": imputed, "acceptance_rate": float(acceptance[i])})
            return out

        return self.prepare(rows, samples, seed, finish, strict)

    def prepare_predict(
        self, rows, samples=None, quantiles=DEFAULT_QUANTILES, seed=None, return_samples=False, strict=True
    ):
        quantiles = _check_quantiles(quantiles)

        def finish(prep: Prepared, outputs):
            _, _, target, acceptance = outputs[:4]
            per_target = {
                c.name: summarise(
                    ColumnPredictive(c, target[:, :, j]),
                    self.preprocessor,
                    prep.rng,
                    quantiles,
                    self._draws(prep.samples),
                    return_samples,
                )
                for j, c in enumerate(self.schema.targets)
            }
            return [
                {"targets": {n: s[i] for n, s in per_target.items()}, "acceptance_rate": float(acceptance[i])}
                for i in range(prep.rows)
            ]

        return self.prepare(rows, samples, seed, finish, strict)

    def prepare_next_features(
        self,
        row: Mapping[str, Any],
        candidates: Sequence[str] | None = None,
        costs: Mapping[str, float] | None = None,
        top_k: int | None = None,
        samples: int | None = None,
        seed: int | None = None,
        target: str | None = None,
        method: str = "mixture",
        min_gain: float = 0.01,
        max_uncertainty: float | None = None,
        quantiles=DEFAULT_QUANTILES,
    ) -> Prepared:
        quantiles = _check_quantiles(quantiles)
        errors: list[FieldError] = []
        tcol = self._target(target, errors)
        if method not in METHODS:
            errors.append(FieldError("method", f"unknown method {method!r} (expected one of {', '.join(METHODS)})"))
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            errors.append(FieldError("top_k", f"must be a positive integer, got {top_k!r}"))
        observed = {k for k, v in row.items() if v is not None} if isinstance(row, Mapping) else set()
        pool = self._candidates(candidates, observed, errors)
        for name, cost in (costs or {}).items():
            if name not in self._feature_index:
                errors.append(FieldError(f"costs.{name}", "unknown feature"))
            elif isinstance(cost, bool) or not isinstance(cost, (int, float)) or not (math.isfinite(cost) and cost > 0):
                errors.append(FieldError(f"costs.{name}", f"must be a positive finite number, got {cost!r}"))
        if errors:
            raise InputError(errors)
        ti = self._target_index[tcol.name]

        def finish(prep: Prepared, outputs):
            _, features, tgt, acceptance, given = outputs
            y_pred = ColumnPredictive(tcol, tgt[:, :, ti])
            gains = self._gains(features, given[:, :, :, ti], tcol, pool, method, prep.rng)
            ranking = rank_features(gains, {k: float(v) for k, v in (costs or {}).items()} or None, top_k)
            unc = uncertainty(y_pred, self.preprocessor, 0)
            advice = stopping_advice(ranking[0].gain if ranking else None, unc, min_gain, max_uncertainty)
            return {
                "target": tcol.name,
                "method": method,
                "ranking": [vars(r) for r in ranking],
                "prediction": summarise(
                    y_pred, self.preprocessor, prep.rng, quantiles, self._draws(prep.samples), False
                )[0],
                "uncertainty": unc,
                "stop": {"stop": advice.stop, "reason": advice.reason},
                "acceptance_rate": float(acceptance[0]),
            }

        return self.prepare([row], samples, seed, finish)

    def impute(self, rows, **kw) -> list[dict[str, Any]]:
        return self.run([self.prepare_impute(rows, **kw)])[0]

    def predict(self, rows, **kw) -> list[dict[str, Any]]:
        return self.run([self.prepare_predict(rows, **kw)])[0]

    def next_features(self, row, **kw) -> dict[str, Any]:
        return self.run([self.prepare_next_features(row, **kw)])[0]

    # ---- helpers ----------------------------------------------------------------------------
    def _draws(self, samples: int) -> int:
        return max(1, QUANTILE_DRAWS // samples)

    def _target(self, target: str | None, errors: list[FieldError]) -> Column:
        if target is None:
            return self.schema.targets[0]
        if target not in self._target_index:
            names = ", ".join(c.name for c in self.schema.targets)
            errors.append(FieldError("target", f"unknown target {target!r} (the model predicts {names})"))
            return self.schema.targets[0]
        return self._columns[target]

    def _candidates(self, candidates, observed: set[str], errors: list[FieldError]) -> list[str]:
        if candidates is None:
            return [c.name for c in self.schema.features if c.name not in observed]
        pool = []
        for name in candidates:
            if name not in self._feature_index:
                errors.append(FieldError(f"candidates.{name}", "unknown feature"))
            elif name in observed:
                errors.append(FieldError(f"candidates.{name}", "already observed in this row"))
            elif name not in pool:
                pool.append(name)
        return pool

    def _gains(self, features: np.ndarray, given: np.ndarray, tcol: Column, pool, method, rng) -> dict[str, float]:
        """I(y; x_i | x_O) for each candidate, on the joint the model implies: component k pairs p_k(x_i)
        with the target's p(y | eps_k, x_i = its sampled value) (`given` [1, K, D, W], see PredictiveGraph)."""
        gains = {}
        for name in pool:
            j = self._feature_index[name]
            x_mix = ColumnPredictive(self._columns[name], features[:, :, j]).mixture(0)
            y_mix = ColumnPredictive(tcol, given[:, :, j]).mixture(0)
            if method == "mixture":
                gains[name] = float(mixture_information(x_mix, y_mix, rng))
            else:  # the paper's estimator: a 2-d histogram of one joint draw per posterior sample
                x, y = x_mix.sample(rng), y_mix.sample(rng)  # draw k of each from component k: joint draws
                gains[name] = float(histogram_information(x, y, x_mix.discrete, y_mix.discrete))
        return gains

    def describe(self) -> dict[str, Any]:
        """What a client needs to know about the model: schema, sampler, metrics."""
        m = self.manifest
        return {
            "name": self.name,
            "checksum": self.checksum,
            "schema": m["schema"],
            "targets": [c.name for c in self.schema.targets],
            "variant": m["architecture"].get("variant"),
            "sampler": m["sampler"],
            "metrics": m.get("metrics", {}),
            "backend": self.backend.name,
            "created_at": m.get("created_at"),
        }


def _check_quantiles(quantiles) -> tuple[float, ...]:
    try:
        qs = tuple(float(q) for q in quantiles)
    except (TypeError, ValueError):
        raise InputError([FieldError("quantiles", "expected a list of numbers in (0, 1)")]) from None
    bad = [q for q in qs if not 0.0 < q < 1.0]
    if bad:
        raise InputError([FieldError("quantiles", f"each quantile must lie in (0, 1), got {bad[0]!r}")])
    return qs
