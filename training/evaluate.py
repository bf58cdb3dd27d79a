"""Evaluation exactly as docs/protocol.md: 10-fold splits, MCAR(0.5) test masks, K posterior samples.

Metrics per split: NLL_xu, NLL_y, RMSE_xu, ACC_xu (normalised scale) and the target
error in original units (RMSE, or accuracy for classification targets).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import KFold

from hhvaem.app.engine.summaries import ColumnPredictive, category_probabilities, moments
from hhvaem.model.hhvaem import HHVAEM
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema
from hhvaem.training.fit import encode_rows, fit
from hhvaem.training.trainer import Progress, StageSteps, TrainData

N_SPLITS = 10
TEST_SAMPLES = 1000


def split_indices(n_rows: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    folds = list(KFold(n_splits=N_SPLITS, shuffle=True, random_state=0).split(np.arange(n_rows)))
    return folds[split]


def protocol_test_mask(n_rows: int, n_features: int, split: int) -> np.ndarray:
    """Every test feature observed independently with probability 0.5 (the target never)."""
    return np.random.default_rng(1000 + split).random((n_rows, n_features)) < 0.5


@torch.no_grad()
def posterior_predictions(
    model: HHVAEM, data: TrainData, observed: torch.Tensor, n_samples: int, seed: int = 0, chunk_rows: int = 16
) -> dict[str, torch.Tensor]:
    """Per-row log-likelihoods and point predictions from n_samples posterior samples.

    `observed` [N, D] says which features the model sees; the targets are hidden.
    Returns log p(x_d | eps_k) [N, K, D], log p(y_p | eps_k) [N, K, P], the feature
    point predictions on the normalised scale, the discrete probabilities and the
    targets' raw parameters per sample.
    """
    gen = torch.Generator().manual_seed(seed)
    feat_lik = model.marginal.likelihood
    tgt_lik = model.dependency.target_likelihood
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("lp_x", "lp_y", "x_mean", "x_probs", "y_raw")}
    no_y = torch.zeros_like(data.my)
    for i in range(0, data.x.shape[0], chunk_rows):
        sl = slice(i, i + chunk_rows)
        obs = model.observed(data.x[sl], observed[sl], data.y[sl], no_y[sl])
        eps, _ = model.posterior(obs, n_samples, gen)
        x_raw = model.feature_params(eps, gen)
        out["lp_x"].append(model.feature_log_prob(eps, data.x[sl], generator=gen))
        out["x_mean"].append(feat_lik.point(x_raw).mean(1))  # read for numeric columns only
        out["x_probs"].append(feat_lik.probs(x_raw).mean(1))
        y_raw = model.target_params(eps, obs.unsqueeze(-2))
        out["lp_y"].append(tgt_lik.log_prob(y_raw, data.y[sl].unsqueeze(1)))
        out["y_raw"].append(y_raw)
    return {k: torch.cat(v) for k, v in out.items()}


def target_point(model: HHVAEM, pp: Preprocessor, y_raw: torch.Tensor) -> list[np.ndarray]:
    """Per target: the posterior predictive mean in original units, or the class index of the mode (as served)."""
    natural = model.dependency.target_likelihood.natural(y_raw).numpy()  # [N, K, P, W]
    points = []
    for j, col in enumerate(model.schema.targets):
        pred = ColumnPredictive(col, natural[:, :, j])
        points.append(category_probabilities(pred).argmax(-1) if col.is_discrete else moments(pred, pp)[0])
    return points


def protocol_metrics(
    model: HHVAEM, pp: Preprocessor, data: TrainData, observed: torch.Tensor, n_samples: int, seed: int = 0
) -> dict[str, float]:
    pred = posterior_predictions(model, data, observed, n_samples, seed)
    log_k = math.log(n_samples)
    schema = model.schema
    metrics: dict[str, float] = {}
    hidden = data.mx & ~observed  # unobserved entries whose true value is known
    n_u = hidden.sum(1)
    rows = n_u > 0
    if rows.any():
        per_sample = (pred["lp_x"] * hidden.unsqueeze(1)).sum(-1) / n_u.clamp_min(1).unsqueeze(1)
        metrics["nll_xu"] = float(-(torch.logsumexp(per_sample, 1) - log_k)[rows].mean())
    y_rows = data.my.any(1)
    if y_rows.any():
        per_sample = (pred["lp_y"] * data.my.unsqueeze(1)).sum(-1)
        metrics["nll_y"] = float(-(torch.logsumexp(per_sample, 1) - log_k)[y_rows].mean())
    # RMSE over unobserved numeric entries and accuracy over unobserved discrete ones.
    sq, n_sq, hits, n_hits = 0.0, 0, 0, 0
    for d, col in enumerate(schema.features):
        h = hidden[:, d]
        if not h.any():
            continue
        if col.is_discrete:
            guess = pred["x_probs"][h, d, : col.n_categories].argmax(-1)
            hits += int((guess == data.x[h, d].long()).sum())
            n_hits += int(h.sum())
        else:
            err = (pred["x_mean"][h, d] - data.x[h, d]) / col.family.metric_scale(pp.stats.get(col.name))
            sq += float((err**2).sum())
            n_sq += int(h.sum())
    if n_sq:
        metrics["rmse_xu"] = math.sqrt(sq / n_sq)
    if n_hits:
        metrics["acc_xu"] = hits / n_hits
    # Target error in original units.
    points = target_point(model, pp, pred["y_raw"])
    rmses, accs = [], []
    for j, col in enumerate(schema.targets):
        seen = data.my[:, j].numpy()
        if not seen.any():
            continue
        truth = data.y[:, j].numpy()
        if col.is_discrete:
            accs.append(float((points[j][seen] == truth[seen].astype(int)).mean()))
        else:
            true_orig = pp.to_original(col, truth[seen])
            rmses.append(float(np.sqrt(np.mean((points[j][seen] - true_orig) ** 2))))
    if rmses:
        metrics["target_rmse"] = float(np.mean(rmses))
    if accs:
        metrics["target_accuracy"] = float(np.mean(accs))
    return metrics


def evaluate_split(
    df: pd.DataFrame,
    schema: Schema,
    split: int,
    variant: str,
    steps: int | StageSteps,
    seed: int = 0,
    n_samples: int = TEST_SAMPLES,
    progress: Progress | None = None,
    compile: bool | None = None,
) -> dict[str, float]:
    train_idx, test_idx = split_indices(len(df), split)
    t0 = time.perf_counter()
    fitted = fit(df.iloc[train_idx].reset_index(drop=True), schema, variant, steps, seed, progress, compile=compile)
    train_seconds = time.perf_counter() - t0
    test = encode_rows(fitted.preprocessor, df.iloc[test_idx].reset_index(drop=True))
    mask = torch.from_numpy(protocol_test_mask(len(test_idx), len(schema.features), split)) & test.mx
    metrics = protocol_metrics(fitted.model, fitted.preprocessor, test, mask, n_samples, seed)
    metrics["train_seconds"] = train_seconds
    return metrics


def summarise(variant: str, splits: list[int], per_split: list[dict[str, float]]) -> dict:
    names = sorted({k for m in per_split for k in m})
    metrics = {}
    for name in names:
        vals = [m.get(name, float("nan")) for m in per_split]
        arr = np.array(vals, dtype=float)
        metrics[name] = {"mean": float(np.nanmean(arr)), "std": float(np.nanstd(arr)), "per_split": vals}
    return {"variant": variant, "splits": splits, "metrics": metrics}
