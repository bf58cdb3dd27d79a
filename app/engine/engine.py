"""The inference engine over an exported artifact: impute, predict, next features.

Requests (query objects, `app.engine.queries`) are validated against the artifact's schema, encoded to the
normalised scale, given their own noise (each row from its own seed: `app.engine.seeds`; shaped by the graph
contract), and run through the exported sampler graph; many requests can share one graph call (`run`), which is
how the service batches concurrent requests. Results come back in the user's units and categories.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hhvaem.app.engine.backends import Backend, OnnxBackend, TorchBackend
from hhvaem.app.engine.errors import FieldError, InputError
from hhvaem.app.engine.queries import ImputeQuery, NextFeaturesQuery, PredictQuery
from hhvaem.app.engine.seeds import row_seeds
from hhvaem.model.calibration import Calibration
from hhvaem.model.io.artifact import ArtifactError, manifest_checksum, read_manifest
from hhvaem.model.io.contract import ContractError, Dims, draw_noise, graph_for, graphs_from_manifest
from hhvaem.model.preprocessing import EncodingError, Preprocessor, is_missing
from hhvaem.model.schema import Column, Schema

# Draws per posterior sample for quantiles: about 1000 values in all, at least one per sample.
QUANTILE_DRAWS = 1000
# A graph call runs at most this many chains (rows x samples); larger batches are split. Cost per chain is lowest
# between ~1,000 and ~3,000 chains on one core (docs/performance.md), and it bounds memory (~13 KiB per chain).
CHAINS_PER_CALL = 2048
# Every graph call ends with guard rows of at least this many chains (zeros, answers dropped). ONNX Runtime's CPU
# kernels compute the last few elements of a tensor (its vector tail) on another code path, which rounds
# differently; the guard rows hold that tail, so no real row's numbers depend on whether it came last in a call.
GUARD_CHAINS = 64
Query = ImputeQuery | PredictQuery | NextFeaturesQuery


@dataclass
class Prepared:
    """One request's encoded rows and noise, ready to share a sampler call with others. `seeds`: one per row
    (`Engine.prepare`); the row's noise is drawn from its seed, every other draw of its answer from `rng`."""

    feeds: dict[str, np.ndarray]
    rows: int
    samples: int
    finish: Callable[[dict[str, np.ndarray]], Any]
    seeds: list[int] = field(repr=False, default_factory=list)
    graph: str = "conditional"  # the graph that answers it (`contract.graph_for`)

    def rng(self, row: int, *stream: int) -> np.random.Generator:
        """Row `row`'s generator for the draws named `stream` (e.g. a column's): independent of the row's noise and
        of its other streams, so what one figure draws does not move another."""
        return np.random.default_rng(np.random.SeedSequence(self.seeds[row], spawn_key=stream))


class Engine:
    def __init__(self, artifact: str | Path, backend: str = "onnx", device: str = "auto", threads: int = 0):
        self.path = Path(artifact)
        self.manifest = read_manifest(self.path, require_graphs=True)
        self.checksum = manifest_checksum(self.path)
        self.schema = Schema.from_dict(self.manifest["schema"])
        self.preprocessor = Preprocessor.from_dict(self.schema, self.manifest["preprocessing"])
        try:
            self.graphs = graphs_from_manifest(self.manifest)
            self.dims = Dims.from_manifest(self.manifest)
            missing = {"impute", "acquire", "conditional"} - set(self.graphs)
            if missing:
                raise ContractError(f"no {sorted(missing)[0]!r} graph")
        except (ContractError, KeyError) as e:
            raise ArtifactError(f"{self.path}: the manifest's graphs do not fit the graph contract ({e})") from None
        self.default_samples = int(self.manifest["sampler"].get("default_chains", 100))
        try:  # the conformal correction of served quantiles, measured by the trainer (absent: raw quantiles)
            found = self.manifest.get("calibration")
            applied = found is not None and found.get("applied", True)  # kept but not applied: the trainer's check
            self.calibration = Calibration.from_json(found) if applied else None
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"{self.path}: its calibration cannot be read ({e})") from None
        if backend not in ("onnx", "torch"):
            raise ArtifactError(f"unknown backend {backend!r} (expected onnx or torch)")
        self.backends: dict[str, Backend] = {
            name: OnnxBackend(self.path / g.file, g, self.dims, device, threads)
            if backend == "onnx"
            else TorchBackend(self.path, g, device, threads)
            for name, g in self.graphs.items()
        }
        self.columns = {c.name: c for c in self.schema.columns}
        self.feature_index = {c.name: j for j, c in enumerate(self.schema.features)}
        self.target_index = {c.name: j for j, c in enumerate(self.schema.targets)}
        # Every graph's noise inputs are the conditional graph's (the others take fewer data inputs only).
        self.graph = self.graphs["conditional"]
        self._rows_axis = {t.name: t.rows_axis for t in self.graph.inputs}
        self.chains_per_call = CHAINS_PER_CALL

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    @property
    def backend_name(self) -> str:
        """Where the graphs run, e.g. "onnxruntime:CPUExecutionProvider" or "torch:cuda"."""
        return self.backends["impute"].name

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
                v, error = self._encode_cell(name, value, i, strict)
                if error is not None:
                    errors.append(error)
                if v is None:
                    continue
                if name in self.feature_index:
                    x[i, self.feature_index[name]], mx[i, self.feature_index[name]] = v, 1.0
                else:
                    y[i, self.target_index[name]], my[i, self.target_index[name]] = v, 1.0
        if errors:
            raise InputError(errors)
        return x, mx, y, my

    def _encode_cell(self, name: Any, value: Any, row: int, strict: bool) -> tuple[float | None, FieldError | None]:
        """(one cell on the normalised scale or None when missing, or the error saying why it does not fit)."""
        col = self.columns.get(name)
        if col is None:
            return None, FieldError(str(name), f"unknown feature (the model knows {self._known()})", row)
        if isinstance(value, float) and not math.isfinite(value):
            return None, FieldError(name, f"{value} is not allowed; send null for a missing value", row)
        # JSON clients say "missing" with null only; text like "" or "NA" is a value to check (a category may
        # be called "NA"). Tables (strict=False) use the usual missing tokens.
        if value is None or (not strict and is_missing(value)):
            return None, None
        try:
            v = self.preprocessor.encode_value(col, value, row, strict=strict)
        except EncodingError as e:
            return None, FieldError(name, e.reason, row)
        far = col.family.implausible(v)
        if far:
            return None, FieldError(name, f"{value!r} is {far}; the model cannot extrapolate that far", row)
        return v, None

    def _known(self) -> str:
        names = [c.name for c in self.schema.columns]
        return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")

    def noise(self, rows: int, samples: int, rng) -> dict[str, np.ndarray]:
        """The graph's noise inputs for `rows` x `samples`, as the contract shapes them (`rng`: one generator, or
        one per row)."""
        return draw_noise(self.graph, self.dims, rows, samples, rng)

    def prepare(
        self, rows, samples: int | None, seed: int | None, finish, strict: bool = True, needs: frozenset = frozenset()
    ) -> Prepared:
        """Encodes `rows` and draws their noise; `finish(prepared, outputs by name)` makes the answer.
        `needs`: graph outputs the answer reads beyond features, target and acceptance. Each row has a seed of its
        own, from the model (or `seed`, when given), the sample count and the encoded row (`app.engine.seeds`)."""
        samples = self._check_samples(samples)
        x, mx, y, my = self.encode_rows(rows, strict)
        seeds = row_seeds(self.seed_source(seed), {"samples": samples}, x, mx, y, my)
        rngs = [np.random.default_rng(s) for s in seeds]
        prepared = Prepared(self.feeds(x, mx, y, my, samples, rngs), len(x), samples, finish, seeds)
        prepared.graph = graph_for(bool(my.any()), set(needs))
        prepared.finish = lambda outputs: finish(prepared, outputs)
        return prepared

    def seed_source(self, seed: int | None) -> dict[str, Any]:
        """What a row's seed starts from: the caller's `seed`, or else the model's identity (its artifact checksum:
        the same for every registered version of one artifact, different for any other)."""
        return {"model": self.checksum} if seed is None else {"seed": seed}

    def feeds(self, x, mask, y, y_mask, samples: int, rng) -> dict[str, np.ndarray]:
        """Every graph input for encoded rows (the normalised scale, float32) and `samples` samples per row."""
        return {"x": x, "mask": mask, "y": y, "y_mask": y_mask, **self.noise(len(x), samples, rng)}

    def _check_samples(self, samples: int | None) -> int:
        samples = self.default_samples if samples is None else samples
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 2:
            raise InputError([FieldError("samples", f"must be an integer >= 2, got {samples!r}")])
        return samples

    # ---- running --------------------------------------------------------------------------
    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        """Runs prepared requests with the same sample count through one sampler call per graph; finishes each."""
        if len({p.samples for p in batch}) > 1:
            raise ValueError("requests in one sampler call must ask for the same number of samples")
        results: dict[int, Any] = {}
        for name in dict.fromkeys(p.graph for p in batch):
            group = [(i, p) for i, p in enumerate(batch) if p.graph == name]
            outputs = self.call(name, [p for _, p in group])
            start = 0
            for i, p in group:
                results[i] = p.finish({k: v[start : start + p.rows] for k, v in outputs.items()})
                start += p.rows
        return [results[i] for i in range(len(batch))]

    def call(self, graph: str, batch: Sequence[Prepared]) -> dict[str, np.ndarray]:
        """One call of `graph` on the concatenated feeds of `batch`; its outputs by name."""
        names = self.graphs[graph].input_names
        return self.run_graph(
            graph, {k: np.concatenate([p.feeds[k] for p in batch], axis=self._rows_axis[k]) for k in names}
        )

    def run_graph(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`graph` on `feeds` (at least its inputs); its outputs by name. Calls of more than CHAINS_PER_CALL chains
        run as several calls of whole rows, each ending with guard rows (`GUARD_CHAINS`)."""
        spec = self.graphs[graph]
        rows, samples = feeds["x"].shape[0], feeds["eps_noise"].shape[1]
        step = max(1, self.chains_per_call // samples)
        guard = -(-GUARD_CHAINS // samples)
        parts = []
        for start in range(0, rows, step):
            part = {t.name: _guarded(feeds[t.name], t.rows_axis, start, step, guard) for t in spec.inputs}
            n = min(step, rows - start)
            parts.append({k: _rows(v, 0, 0, n) for k, v in spec.named(self.backends[graph].run(part)).items()})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def answer(self, query: Query) -> Any:
        """One query on its own (the service batches prepared queries through `run` instead)."""
        return self.run([query.prepare(self)])[0]

    # ---- the three questions ----------------------------------------------------------------
    def impute(self, rows, **kw) -> list[dict[str, Any]]:
        return self.answer(ImputeQuery(rows, **kw))

    def predict(self, rows, **kw) -> list[dict[str, Any]]:
        return self.answer(PredictQuery(rows, **kw))

    def next_features(self, row, **kw) -> dict[str, Any]:
        return self.answer(NextFeaturesQuery(row, **kw))

    # ---- what the queries look up -----------------------------------------------------------
    def draws_per_sample(self, samples: int) -> int:
        return max(1, QUANTILE_DRAWS // samples)

    def target_column(self, target: str | None, errors: list[FieldError]) -> Column:
        if target is None:
            return self.schema.targets[0]
        if target not in self.target_index:
            names = ", ".join(c.name for c in self.schema.targets)
            errors.append(FieldError("target", f"unknown target {target!r} (the model predicts {names})"))
            return self.schema.targets[0]
        return self.columns[target]

    def candidates(self, candidates, observed: set[str], errors: list[FieldError]) -> list[str]:
        if candidates is None:
            return [c.name for c in self.schema.features if c.name not in observed]
        pool = []
        for name in candidates:
            if name not in self.feature_index:
                errors.append(FieldError(f"candidates.{name}", "unknown feature"))
            elif name in observed:
                errors.append(FieldError(f"candidates.{name}", "already observed in this row"))
            elif name not in pool:
                pool.append(name)
        return pool

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
            "backend": self.backend_name,
            "created_at": m.get("created_at"),
        }


def _rows(a: np.ndarray, axis: int, start: int, n: int) -> np.ndarray:
    return a[start : start + n] if axis == 0 else a[:, start : start + n]


def _guarded(a: np.ndarray, axis: int, start: int, n: int, guard: int) -> np.ndarray:
    """Rows `start`..`start + n` of `a` along `axis`, then `guard` rows of zeros (an empty row, zero noise)."""
    part = _rows(a, axis, start, n)
    shape = list(part.shape)
    shape[axis] = guard
    return np.concatenate([part, np.zeros(shape, part.dtype)], axis=axis)
