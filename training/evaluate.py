"""Evaluation exactly as docs/protocol.md: 10-fold splits, MCAR(0.5) test masks, K posterior samples.

The posterior samples come from the served path: the fitted model is exported and its impute graph runs in
the inference engine (ONNX Runtime), so `hhvaem evaluate` measures the computation the service runs. Point
predictions, intervals and scores are read off the graph's per-sample likelihoods; the two likelihood metrics
need p(x_d | eps_k) and p(y | eps_k) at the true values, which the torch model evaluates at the engine's eps.

Metrics per split: NLL_xu, NLL_y, RMSE_xu, ACC_xu (normalised scale), the target error in original units (RMSE,
or accuracy for classification targets), calibration (coverage of the central 50 % and 90 % intervals, CRPS;
Brier for categories) of the hidden entries and of the target, and the seconds spent training and evaluating.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import KFold

from hhvaem.app.engine import Engine
from hhvaem.app.engine.summaries import ColumnPredictive, category_probabilities, moments
from hhvaem.model.hhvaem import HHVAEM
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema
from hhvaem.training.artifact import data_fingerprint, write_artifact
from hhvaem.training.diagnosis import diagnose
from hhvaem.training.fit import encode_rows, fit
from hhvaem.training.metrics import brier, numeric_scores
from hhvaem.training.trainer import Progress, StageSteps, TrainData

N_SPLITS = 10
TEST_SAMPLES = 1000
# Chains per graph call: large enough to use the matrix units, small enough to bound memory.
CHAINS_PER_CALL = 20_000


def split_indices(n_rows: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    folds = list(KFold(n_splits=N_SPLITS, shuffle=True, random_state=0).split(np.arange(n_rows)))
    return folds[split]


def protocol_test_mask(n_rows: int, n_features: int, split: int) -> np.ndarray:
    """Every test feature observed independently with probability 0.5 (the target never)."""
    return np.random.default_rng(1000 + split).random((n_rows, n_features)) < 0.5


def served_posterior(
    engine: Engine, data: TrainData, observed: np.ndarray, n_samples: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """The impute graph's outputs (eps, natural parameters of features and target, acceptance) for every row,
    the targets hidden, `observed` [N, D] saying which features the model sees."""
    rng = np.random.default_rng(seed)
    x = data.x.numpy().astype(np.float32)
    mask = observed.astype(np.float32)
    empty = np.zeros((len(x), 0), np.float32)
    step = max(1, CHAINS_PER_CALL // n_samples)
    parts: list[dict[str, np.ndarray]] = []
    for i in range(0, len(x), step):
        feeds = engine.feeds(x[i : i + step], mask[i : i + step], empty, empty, n_samples, rng)
        parts.append(engine.run_graph("impute", feeds))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def likelihoods(
    model: HHVAEM, data: TrainData, observed: np.ndarray, eps: np.ndarray, seed: int = 0, chunk_rows: int = 16
):
    """log p(x_d | eps_k) [N, K, D] and log p(y_p | eps_k, x_O) [N, K, P] at the true values."""
    gen = torch.Generator().manual_seed(seed)
    lp_x, lp_y = [], []
    seen = torch.from_numpy(observed)
    for i in range(0, data.x.shape[0], chunk_rows):
        sl = slice(i, i + chunk_rows)
        e = torch.from_numpy(eps[sl]).to(data.x.dtype)
        lp_x.append(model.feature_log_prob(e, data.x[sl], generator=gen))
        obs = model.observed(data.x[sl], seen[sl])
        y_raw = model.target_params(e, obs.unsqueeze(-2))
        lp_y.append(model.dependency.target_likelihood.log_prob(y_raw, data.y[sl].unsqueeze(1)))
    return torch.cat(lp_x).numpy(), torch.cat(lp_y).numpy()


def protocol_metrics(
    model: HHVAEM,
    pp: Preprocessor,
    engine: Engine,
    data: TrainData,
    observed: np.ndarray,
    n_samples: int,
    seed: int = 0,
    train: TrainData | None = None,
) -> dict[str, float]:
    """The protocol's metrics of the test rows `data` given what the model sees (`observed`); with the training
    rows (`train`), the per-column diagnosis too (training/diagnosis.py)."""
    out = served_posterior(engine, data, observed, n_samples, seed)
    lp_x, lp_y = likelihoods(model, data, observed, out["eps"], seed)
    # densities on the protocol's scale: warped columns add log |d model / d protocol| at the true value
    lp_x = lp_x + protocol_log_jacobian(model.schema.features, pp, data.x.numpy())[:, None, :]
    lp_y = lp_y + protocol_log_jacobian(model.schema.targets, pp, data.y.numpy())[:, None, :]
    hidden = data.mx.numpy() & ~observed  # unobserved entries whose true value is known
    metrics = likelihood_metrics(lp_x, lp_y, hidden, data.my.numpy(), n_samples)
    rng = np.random.default_rng(seed + 1)
    metrics.update(feature_metrics(model.schema, pp, out["features"], data.x.numpy(), hidden, rng))
    metrics.update(target_metrics(model.schema, pp, out["target"], data.y.numpy(), data.my.numpy(), rng))
    metrics["acceptance_rate"] = float(out["acceptance"].mean())
    if train is not None:
        known = data.mx.numpy()
        metrics.update(
            diagnose(
                model, pp, out["features"], data.x.numpy(), known, observed & known, train.x.numpy(), train.mx.numpy()
            )
        )
    return metrics


def protocol_log_jacobian(columns, pp: Preprocessor, x: np.ndarray) -> np.ndarray:
    """``log |d model / d protocol|`` [N, C] at model-scale values x [N, C] (0 except for warped columns)."""
    out = np.zeros(x.shape, dtype=np.float64)
    for d, col in enumerate(columns):
        out[:, d] = col.family.protocol_log_jacobian(x[:, d], pp.stats.get(col.name))
    return out


def likelihood_metrics(lp_x, lp_y, hidden: np.ndarray, seen_y: np.ndarray, n_samples: int) -> dict[str, float]:
    metrics: dict[str, float] = {}
    log_k = math.log(n_samples)
    n_u = hidden.sum(1)
    rows = n_u > 0
    if rows.any():
        per_sample = (lp_x * hidden[:, None]).sum(-1) / np.maximum(n_u, 1)[:, None]
        metrics["nll_xu"] = float(-(_logsumexp(per_sample) - log_k)[rows].mean())
    y_rows = seen_y.any(1)
    if y_rows.any():
        per_sample = (lp_y * seen_y[:, None]).sum(-1)
        metrics["nll_y"] = float(-(_logsumexp(per_sample) - log_k)[y_rows].mean())
    return metrics


def feature_metrics(schema: Schema, pp: Preprocessor, natural, x, hidden, rng) -> dict[str, float]:
    """RMSE_xu and ACC_xu of the posterior predictive mean / mode, and the calibration of the hidden entries."""
    sq, hits, draws, truth, probs, labels = [], [], [], [], [], []
    for d, col in enumerate(schema.features):
        h = hidden[:, d]
        if not h.any():
            continue
        p = col.family.component_params(natural[h, :, d], col.n_categories)  # [M, K, w]
        if col.is_discrete:
            prob = p.mean(1)
            hits.append(prob.argmax(1) == x[h, d])
            probs.append(np.pad(prob, ((0, 0), (0, natural.shape[-1] - prob.shape[1]))))
            labels.append(x[h, d])
        else:
            # on the protocol's scale (warped columns are mapped back), so that every model and baseline compares
            stats = pp.stats.get(col.name)
            scale = col.family.metric_scale(stats)
            true = col.family.to_protocol(x[h, d], stats)
            sq.append(((col.family.protocol_moments(p, stats)[0].mean(1) - true) / scale) ** 2)
            draws.append(col.family.to_protocol(col.family.sample(p, rng), stats) / scale)
            truth.append(true / scale)
    metrics: dict[str, float] = {}
    if sq:
        metrics["rmse_xu"] = math.sqrt(float(np.concatenate(sq).mean()))
        metrics.update(numeric_scores(np.concatenate(draws), np.concatenate(truth), "xu"))
    if hits:
        metrics["acc_xu"] = float(np.concatenate(hits).mean())
        metrics["xu_brier"] = brier(np.concatenate(probs), np.concatenate(labels))
    return metrics


def target_metrics(schema: Schema, pp: Preprocessor, natural, y, seen_y, rng) -> dict[str, float]:
    """The target error in original units (the posterior predictive mean, or the mode's accuracy) and calibration."""
    rmses, accs, scores = [], [], []
    for j, col in enumerate(schema.targets):
        seen = seen_y[:, j].astype(bool)
        if not seen.any():
            continue
        pred = ColumnPredictive(col, natural[seen, :, j])
        if col.is_discrete:
            probs = category_probabilities(pred)
            accs.append(float((probs.argmax(1) == y[seen, j]).mean()))
            scores.append({"target_brier": brier(probs, y[seen, j])})
        else:
            truth = pp.to_original(col, y[seen, j])
            rmses.append(float(np.sqrt(np.mean((moments(pred, pp)[0] - truth) ** 2))))
            p = col.family.component_params(pred.params, col.n_categories)
            scores.append(numeric_scores(col.family.user_draws(p, pp.stats.get(col.name), rng, 1), truth, "target"))
    metrics: dict[str, float] = {}
    if rmses:
        metrics["target_rmse"] = float(np.mean(rmses))
    if accs:
        metrics["target_accuracy"] = float(np.mean(accs))
    for key in {k for s in scores for k in s}:
        metrics[key] = float(np.mean([s[key] for s in scores if key in s]))
    return metrics


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(-1, keepdims=True)
    return (np.log(np.exp(a - m).sum(-1, keepdims=True)) + m)[..., 0]


def evaluate_split(
    df: pd.DataFrame,
    schema: Schema,
    split: int,
    variant: str,
    steps: int | StageSteps | None,
    seed: int = 0,
    n_samples: int = TEST_SAMPLES,
    progress: Progress | None = None,
    compile: bool | None = None,
    overrides: dict | None = None,
    threads: int = 1,
) -> dict[str, float]:
    """Trains on the split's training rows (`overrides`: ModelConfig / TrainConfig fields), exports the model,
    and scores the split's test rows through the inference engine."""
    train_idx, test_idx = split_indices(len(df), split)
    t0 = time.perf_counter()
    train_df = df.iloc[train_idx].reset_index(drop=True)
    fitted = fit(train_df, schema, variant, steps, seed, progress, compile=compile, overrides=overrides)
    train_seconds = time.perf_counter() - t0
    test = encode_rows(fitted.preprocessor, df.iloc[test_idx].reset_index(drop=True))
    mask = protocol_test_mask(len(test_idx), len(schema.features), split) & test.mx.numpy()
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        art = Path(tmp) / "model"
        t1 = time.perf_counter()
        write_artifact(art, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(train_df))
        t2 = time.perf_counter()
        engine = Engine(art, threads=threads)
        train = encode_rows(fitted.preprocessor, train_df)
        metrics = protocol_metrics(fitted.model, fitted.preprocessor, engine, test, mask, n_samples, seed, train)
    metrics["train_seconds"] = train_seconds
    metrics["train_steps"] = float(fitted.history["steps"]["total"])
    for stage in ("vi", "hmc"):  # where early stopping ended each stage
        if "best_step" in fitted.history.get(stage, {}):
            metrics[f"{stage}_best_step"] = float(fitted.history[stage]["best_step"])
    metrics["export_seconds"] = t2 - t1
    metrics["eval_ms_per_row"] = 1000 * (time.perf_counter() - t2) / len(test_idx)
    return metrics


def summarise(variant: str, splits: list[int], per_split: list[dict[str, float]]) -> dict:
    names = sorted({k for m in per_split for k in m})
    metrics = {}
    for name in names:
        vals = [m.get(name, float("nan")) for m in per_split]
        arr = np.array(vals, dtype=float)
        metrics[name] = {"mean": float(np.nanmean(arr)), "std": float(np.nanstd(arr)), "per_split": vals}
    return {"variant": variant, "splits": splits, "metrics": metrics}
