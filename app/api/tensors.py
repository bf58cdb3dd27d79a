"""A model's tensors under the Open Inference Protocol: what `/v2/models/{name}` lists, how input tensors become
the engine's rows, and how the engine's answers become output tensors.

Inputs: `features`, FP32 [-1, D] in the schema's feature order, NaN for a hole; a category is sent as its code,
the index into the categories the metadata lists (`parameters.categories`). A model with text categories also
takes `categories`, BYTES [-1, C], one column per feature with text categories (`parameters.columns`): a label
there fills the cell (empty: not given). Outputs per operation (`parameters.operation`):

* impute: `imputed` [-1, D] (observed values as given, holes filled with the posterior mean, or the mode's code),
  `imputed_std` [-1, D] (0 where observed and for categories), `imputed_quantiles` [-1, D, Q],
  `imputed_probabilities` [-1, K] (every category of every discrete feature, as `parameters.columns` lists;
  one-hot where observed), `imputed_categories` BYTES [-1, C] (the labels, with text categories), and per
  family-specific figure (`Family.extras`) `imputed_<figure>` [-1, E] over the features that have it
  (`imputed_probability_zero` for zero_positive features: 0 or 1 where observed);
* predict: `target_mean`, `target_std` [-1, P], `target_quantiles` [-1, P, Q] for numeric targets,
  `target_probabilities` [-1, K] for categorical ones;
* next_features (one row): `next_features` BYTES [-1] best first, `information_gain` FP32 [-1],
  `gain_per_cost` FP32 [-1] (with costs); the prediction and the stopping hint in the response's parameters.

Structured metadata parameters (lists, maps) are JSON text: the protocol's parameters are strings, numbers or
booleans.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hhvaem.app.api.oip import Output, ProtocolError
from hhvaem.app.engine.queries import DEFAULT_QUANTILES
from hhvaem.model.schema import Column, Schema

OPERATIONS = ("impute", "predict", "next_features")


def _numeric_text(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelTensors:
    schema: Schema

    @property
    def features(self) -> tuple[Column, ...]:
        return self.schema.features

    @property
    def labelled(self) -> list[Column]:
        """Features with text categories: the `categories` BYTES input and `imputed_categories` output."""
        return [c for c in self.features if c.is_discrete and not all(_numeric_text(v) for v in c.categories)]

    @property
    def extras(self) -> dict[str, list[Column]]:
        """Each family-specific figure (`Family.extras`) and the features that have it."""
        out: dict[str, list[Column]] = {}
        for c in self.features:
            for extra in c.family.extras:
                out.setdefault(extra, []).append(c)
        return out

    @property
    def numeric_targets(self) -> list[Column]:
        return [c for c in self.schema.targets if not c.is_discrete]

    @property
    def discrete_targets(self) -> list[Column]:
        return [c for c in self.schema.targets if c.is_discrete]

    # ---- metadata -------------------------------------------------------------------------
    def metadata(self) -> tuple[list[dict], list[dict], dict[str, Any]]:
        """(inputs, outputs, model parameters) of the model metadata response."""
        names = [c.name for c in self.features]
        inputs = [_tensor("features", "FP32", [-1, len(names)], columns=names)]
        if self.labelled:
            inputs.append(_tensor("categories", "BYTES", [-1, len(self.labelled)], [c.name for c in self.labelled]))
        q = -1
        outputs = [
            _tensor("imputed", "FP32", [-1, len(names)], names, "impute"),
            _tensor("imputed_std", "FP32", [-1, len(names)], names, "impute"),
            _tensor("imputed_quantiles", "FP32", [-1, len(names), q], names, "impute"),
        ]
        pairs = _category_columns([c for c in self.features if c.is_discrete])
        if pairs:
            outputs.append(_tensor("imputed_probabilities", "FP32", [-1, len(pairs)], pairs, "impute"))
        if self.labelled:
            labelled = [c.name for c in self.labelled]
            outputs.append(_tensor("imputed_categories", "BYTES", [-1, len(labelled)], labelled, "impute"))
        for extra, cols in self.extras.items():
            names_e = [c.name for c in cols]
            outputs.append(_tensor(f"imputed_{extra}", "FP32", [-1, len(names_e)], names_e, "impute"))
        numeric = [c.name for c in self.numeric_targets]
        if numeric:
            outputs += [
                _tensor("target_mean", "FP32", [-1, len(numeric)], numeric, "predict"),
                _tensor("target_std", "FP32", [-1, len(numeric)], numeric, "predict"),
                _tensor("target_quantiles", "FP32", [-1, len(numeric), q], numeric, "predict"),
            ]
        target_pairs = _category_columns(self.discrete_targets)
        if target_pairs:
            outputs.append(_tensor("target_probabilities", "FP32", [-1, len(target_pairs)], target_pairs, "predict"))
        # asked with parameters.plausibility: p per observed feature given the others, NaN where not observed
        outputs.append(_tensor("plausibility", "FP32", [-1, len(names)], names, "impute,predict"))
        outputs += [
            _tensor("next_features", "BYTES", [-1], None, "next_features"),
            _tensor("information_gain", "FP32", [-1], None, "next_features"),
            _tensor("gain_per_cost", "FP32", [-1], None, "next_features"),
        ]
        parameters = {
            "operations": ",".join(OPERATIONS),
            "categories": json.dumps({c.name: list(c.categories) for c in self.schema.columns if c.is_discrete}),
            "targets": json.dumps([c.name for c in self.schema.targets]),
            "quantiles": ",".join(f"{q:g}" for q in DEFAULT_QUANTILES),
        }
        return inputs, outputs, parameters

    def output_names(self, operation: str) -> list[str]:
        return [t["name"] for t in self.metadata()[1] if operation in t["parameters"]["operation"].split(",")]

    # ---- inputs -> rows --------------------------------------------------------------------
    def rows(self, inputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The engine's rows from the input tensors; every misfit is named (input, row, column)."""
        known = {"features", "categories"} if self.labelled else {"features"}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise ProtocolError(f"input {unknown[0]!r}: not an input of this model (it takes {', '.join(known)})")
        if "features" not in inputs:
            raise ProtocolError("input 'features': missing (FP32 [-1, D] in the model's feature order)")
        x = inputs["features"]
        d = len(self.features)
        if x.dtype != np.float32:
            raise ProtocolError(f"input 'features': datatype must be FP32, got {_datatype(x)}")
        if x.ndim != 2 or x.shape[1] != d or x.shape[0] == 0:
            raise ProtocolError(f"input 'features': shape must be [rows >= 1, {d}], got {list(x.shape)}")
        errors: list[str] = []
        rows = [self._row(x[i], i, errors) for i in range(x.shape[0])]
        if "categories" in inputs:
            self._labels(inputs["categories"], rows, errors)
        if errors:
            raise ProtocolError(_join(errors))
        return rows

    def _row(self, values: np.ndarray, i: int, errors: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for j, col in enumerate(self.features):
            # The shortest decimal that is this float32 (32.1, not 32.099998...): what the client meant, and the row
            # that v1 gets for the same value, so the two protocols encode, seed and answer it alike.
            v = float(str(values[j]))
            if math.isnan(v):
                continue
            if col.is_discrete:
                if not (math.isfinite(v) and v == int(v) and 0 <= v < col.n_categories):
                    errors.append(
                        f"input 'features' row {i}, column {col.name!r} ({j}): {v:g} is not a category code "
                        f"(0..{col.n_categories - 1} for {list(col.categories)[:10]})"
                    )
                    continue
                row[col.name] = col.categories[int(v)]
            else:
                row[col.name] = v  # the engine checks the value against the column (support, plausibility)
        return row

    def _labels(self, labels: np.ndarray, rows: list[dict[str, Any]], errors: list[str]) -> None:
        cols = self.labelled
        if labels.dtype != object:
            errors.append(f"input 'categories': datatype must be BYTES, got {_datatype(labels)}")
            return
        if labels.shape != (len(rows), len(cols)):
            errors.append(f"input 'categories': shape must be [{len(rows)}, {len(cols)}], got {list(labels.shape)}")
            return
        for i, row in enumerate(rows):
            for k, col in enumerate(cols):
                text = labels[i, k]
                if text == "":
                    continue
                by_text = {str(c): c for c in col.categories}
                if text not in by_text:
                    known = ", ".join(repr(str(c)) for c in col.categories[:10])
                    errors.append(
                        f"input 'categories' row {i}, column {col.name!r}: unknown category {text!r} ({known})"
                    )
                elif col.name in row and row[col.name] != by_text[text]:
                    errors.append(
                        f"input 'categories' row {i}, column {col.name!r}: {text!r} disagrees with the code in "
                        f"'features' ({row[col.name]!r})"
                    )
                else:
                    row[col.name] = by_text[text]

    # ---- answers -> outputs ----------------------------------------------------------------
    def imputed(self, answer: list[dict[str, Any]], quantiles: tuple[float, ...]) -> list[Output]:
        n, d = len(answer), len(self.features)
        values, std = np.zeros((n, d), np.float32), np.zeros((n, d), np.float32)
        qs = np.zeros((n, d, len(quantiles)), np.float32)
        discrete = [c for c in self.features if c.is_discrete]
        probs = np.zeros((n, sum(c.n_categories for c in discrete)), np.float32)
        labels = np.empty((n, len(self.labelled)), dtype=object)
        keys = [f"{q:g}" for q in quantiles]
        for i, row in enumerate(answer):
            offset = 0
            for j, col in enumerate(self.features):
                value, hole = row["values"][col.name], row["imputed"].get(col.name)
                if col.is_discrete:
                    code = list(col.categories).index(value)
                    values[i, j] = qs[i, j] = code
                    p = (
                        [hole["probabilities"][str(c)] for c in col.categories]
                        if hole
                        else np.eye(col.n_categories)[code]
                    )
                    probs[i, offset : offset + col.n_categories] = p
                    offset += col.n_categories
                else:
                    values[i, j] = value
                    std[i, j] = hole["std"] if hole else 0.0
                    qs[i, j] = [hole["quantiles"][k] for k in keys] if hole else value
            for k, col in enumerate(self.labelled):
                labels[i, k] = str(row["values"][col.name])
        out = [Output("imputed", "FP32", values), Output("imputed_std", "FP32", std)]
        out.append(Output("imputed_quantiles", "FP32", qs))
        if discrete:
            out.append(Output("imputed_probabilities", "FP32", probs))
        if self.labelled:
            out.append(Output("imputed_categories", "BYTES", labels))
        for extra, cols in self.extras.items():
            figure = np.zeros((n, len(cols)), np.float32)
            for i, row in enumerate(answer):
                for k, col in enumerate(cols):
                    hole = row["imputed"].get(col.name)
                    given = col.family.observed_extras(row["values"][col.name]) if not hole else hole
                    figure[i, k] = given[extra]
            out.append(Output(f"imputed_{extra}", "FP32", figure))
        return out

    def predicted(self, answer: list[dict[str, Any]], quantiles: tuple[float, ...]) -> list[Output]:
        keys = [f"{q:g}" for q in quantiles]
        out = []
        numeric, discrete = self.numeric_targets, self.discrete_targets
        if numeric:
            mean = np.array([[r["targets"][c.name]["mean"] for c in numeric] for r in answer], np.float32)
            std = np.array([[r["targets"][c.name]["std"] for c in numeric] for r in answer], np.float32)
            qs = [[[r["targets"][c.name]["quantiles"][k] for k in keys] for c in numeric] for r in answer]
            out += [Output("target_mean", "FP32", mean), Output("target_std", "FP32", std)]
            out.append(Output("target_quantiles", "FP32", np.array(qs, np.float32)))
        if discrete:
            probs = [
                [r["targets"][c.name]["probabilities"][str(k)] for c in discrete for k in c.categories] for r in answer
            ]
            out.append(Output("target_probabilities", "FP32", np.array(probs, np.float32)))
        return out

    def plausibility(self, answer: list[dict[str, Any]]) -> Output:
        """p of each observed feature given the row's others [rows, features]; NaN where the row has no value."""
        p = np.full((len(answer), len(self.features)), np.nan, np.float32)
        for i, row in enumerate(answer):
            for j, col in enumerate(self.features):
                if col.name in row.get("plausibility", {}):
                    p[i, j] = row["plausibility"][col.name]["p"]
        return Output("plausibility", "FP32", p)

    @staticmethod
    def ranked(answer: dict[str, Any]) -> tuple[list[Output], dict[str, Any]]:
        ranking = answer["ranking"]
        out = [
            Output("next_features", "BYTES", np.array([r["feature"] for r in ranking], dtype=object)),
            Output("information_gain", "FP32", np.array([r["gain"] for r in ranking], np.float32)),
        ]
        if any(r["gain_per_cost"] is not None for r in ranking):
            with np.errstate(over="ignore"):  # a ratio beyond FP32 (a tiny cost) is inf: null in JSON data
                per_cost = np.array([r["gain_per_cost"] for r in ranking], np.float32)
            out.append(Output("gain_per_cost", "FP32", per_cost))
        prediction = answer["prediction"]
        parameters: dict[str, Any] = {
            "target": answer["target"],
            "method": answer["method"],
            "uncertainty": answer["uncertainty"],
            "stop": answer["stop"]["stop"],
            "stop_reason": answer["stop"]["reason"],
        }
        if "mean" in prediction:
            parameters |= {"prediction_mean": prediction["mean"], "prediction_std": prediction["std"]}
        else:
            parameters["prediction_mode"] = str(prediction["mode"])
        return out, parameters


def _tensor(name: str, datatype: str, shape: list[int], columns, operation: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if operation:
        params["operation"] = operation
    if columns is not None:
        params["columns"] = json.dumps(columns)
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": params}


def _category_columns(columns: list[Column]) -> list[list[Any]]:
    return [[c.name, v] for c in columns for v in c.categories]


def _datatype(a: np.ndarray) -> str:
    return (
        "BYTES"
        if a.dtype == object
        else {"f": "FP", "i": "INT", "u": "UINT", "b": "BOOL"}.get(a.dtype.kind, str(a.dtype))
        + ("" if a.dtype.kind == "b" else str(a.dtype.itemsize * 8))
    )


def _join(errors: list[str], shown: int = 5) -> str:
    more = len(errors) - shown
    return "; ".join(errors[:shown]) + (f" (and {more} more)" if more > 0 else "")
