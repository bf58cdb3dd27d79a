"""Sequential active information acquisition (SAIA) as docs/protocol.md, on the served code path.

For one split: train on the split's training rows, write the artifact and open it with the
inference `Engine` (ONNX Runtime, one thread) - the code that serves `next_features` is what
gets evaluated. Every test row starts with nothing observed; at each step each method picks one
unobserved feature, the row's true value is revealed (in the user's units, as the engine takes
it) and the target prediction is recorded, until all D features are observed. Curves after
0..D acquisitions: the target error over the test rows (RMSE in original units, or the error
rate of a categorical target) and NLL_y = -mean log p(y_true | observed) on the normalised scale
(the K-component predictive mixture of the engine's target parameters). Area under a curve =
its mean over steps 0..D.

Methods, all on the same model, the same posterior sample count K and the same noise: the
sampler call for (split, row, step t) is seeded by those three numbers only, so every method
sees exactly the same posterior samples whenever it has observed the same features (at step 0
and at step D in particular, where all methods agree exactly).

* ``random``: a random order per row, the curve averaged over ``random_orders`` (5) orders.
* ``kl``: EDDI's encoder-based reward (Ma et al. 2018, eq. 7), with the torch model's Gaussian
  encoder q(eps | .) of the same artifact:
      R(i) = E_{x_i, y ~ p(x_i, y | x_O)} [ KL(q(eps | x_O, x_i) || q(eps | x_O))
                                          - KL(q(eps | x_O, x_i, y) || q(eps | x_O, y)) ].
  The joint draws (x_i, y) come from the engine's per-sample predictives on the joint the model implies:
  one posterior sample k, x_i ~ p_k(x_i), and y from the target's component had x_i been observed at the
  value sample k drew for it (the graph's ``target_given``). ``kl_draws`` (M) of the K samples, without
  replacement, shared by all candidates. We implement the full, target-conditioned reward because the
  protocol acquires for the *target*: the first term alone measures what x_i says about the whole latent
  (all features), and for exact posteriors the difference of the two terms is I(x_i; y | x_O), the quantity
  the other two estimators target. ``kl-latent`` (the first term only, EDDI without a target) is available too.
* ``histogram``: the paper's estimator, ``Engine.next_features(method="histogram")``.
* ``mixture``: ours, ``Engine.next_features(method="mixture")``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hhvaem.app.engine import Engine, NextFeaturesQuery, PredictQuery, Prepared
from hhvaem.app.engine.summaries import ColumnPredictive, category_probabilities, moments
from hhvaem.model.hhvaem import HHVAEM
from hhvaem.model.preprocessing import is_missing
from hhvaem.model.schema import Column, Schema
from hhvaem.training.artifact import data_fingerprint, load_model, write_artifact
from hhvaem.training.evaluate import split_indices
from hhvaem.training.fit import fit
from hhvaem.training.tabular import table_columns
from hhvaem.training.trainer import Progress, StageSteps

METHODS = ("random", "kl", "kl-latent", "histogram", "mixture")
DEFAULT_METHODS = ("random", "kl", "histogram", "mixture")
ENGINE_METHODS = ("histogram", "mixture")

Log = Callable[[str], None]


@dataclass(frozen=True)
class SaiaSettings:
    methods: tuple[str, ...] = DEFAULT_METHODS
    samples: int = 100  # K posterior samples per sampler call, every method
    kl_draws: int = 32  # M joint draws (x_i, y) per candidate for the KL reward
    random_orders: int = 5
    max_rows: int | None = None  # a seeded subset of the test rows of each split (None: all)
    seed: int = 0
    threads: int = 1  # ONNX Runtime intra-op threads
    batch_rows: int = 64  # requests per sampler call

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method {bad[0]!r} (expected one of {', '.join(METHODS)})")
        if not self.methods:
            raise ValueError("no methods to compare")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("a method is listed twice")
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2, got {self.samples}")
        if not 1 <= self.kl_draws <= self.samples:
            raise ValueError(f"kl_draws must lie in 1..samples ({self.samples}), got {self.kl_draws}")
        if self.random_orders < 1:
            raise ValueError(f"random_orders must be >= 1, got {self.random_orders}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")


def auc(curve: Sequence[float]) -> float:
    """Area under a SAIA curve: its mean over steps 0..D."""
    return float(np.mean(np.asarray(curve, dtype=float)))


def step_seed(seed: int, split: int, row: int, step: int) -> int:
    """The sampler seed of (split, row, step): the same for every method, so equal observations give equal samples."""
    return int(np.random.SeedSequence([seed, split, row, step]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- the KL reward


def gaussian_kl(mu1: torch.Tensor, s1: torch.Tensor, mu0: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, s1^2) || N(mu0, s0^2)) of diagonal Gaussians, summed over the last axis."""
    return (torch.log(s0 / s1) + (s1 * s1 + (mu1 - mu0) ** 2) / (2.0 * s0 * s0) - 0.5).sum(-1)


def component_draws(col: Column, params: np.ndarray, picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One value from each picked posterior sample's predictive [K, W] of `col`, normalised scale: [M]."""
    return ColumnPredictive(col, params[None]).mixture(0).sample(rng)[picks]


@torch.no_grad()
def kl_rewards(
    model: HHVAEM,
    x: np.ndarray,
    mask: np.ndarray,
    features: np.ndarray,
    given: np.ndarray,
    candidates: Sequence[int],
    target_index: int,
    rng: np.random.Generator,
    draws: int,
    with_target: bool = True,
    drawn: np.ndarray | None = None,
) -> np.ndarray:
    """EDDI's reward per candidate feature for one row (see the module docstring).

    x, mask [D]: the row on the normalised scale (as the engine encodes it); features [K, D, W] and given
    [K, D, P, W]: the engine's natural parameters per posterior sample (`features`, `target_given`); drawn
    [K, D]: the graph's `draws`, the values target_given observed for the features the model reads directly.
    Returns [len(candidates)].
    """
    schema = model.schema
    d, p, k = len(schema.features), len(schema.targets), features.shape[0]
    c = len(candidates)
    if c == 0:
        return np.zeros(0)
    picks = rng.choice(k, size=draws, replace=False)
    xs = np.stack(
        [
            drawn[picks, i]
            if drawn is not None and (drawn[:, i] >= 0).all()
            else component_draws(schema.features[i], features[:, i], picks, rng)
            for i in candidates
        ]
    )  # [C, M]: x_i of the joint draw, as target_given observed it
    base_x = torch.as_tensor(x, dtype=torch.float32)
    base_m = torch.as_tensor(mask, dtype=torch.float32)
    cand_x = base_x.repeat(c, draws, 1)  # [C, M, D]
    cand_m = base_m.repeat(c, draws, 1)
    idx = torch.as_tensor(list(candidates))
    cand_x[torch.arange(c), :, idx] = torch.as_tensor(xs, dtype=torch.float32)
    cand_m[torch.arange(c), :, idx] = 1.0
    n = c * draws
    # Rows: [q(eps | x_O)] + C*M x [q(eps | x_O, x_i)] (+ C*M x [q(eps | x_O, y)] + C*M x [q(eps | x_O, x_i, y)]).
    xx = [base_x[None], cand_x.reshape(n, d)]
    mm = [base_m[None], cand_m.reshape(n, d)]
    yy = torch.zeros(1 + n, p)
    my = torch.zeros(1 + n, p)
    if with_target:
        tcol = schema.targets[target_index]
        ys = np.stack([component_draws(tcol, given[:, i, target_index], picks, rng) for i in candidates])  # [C, M]
        xx += [base_x.repeat(n, 1), cand_x.reshape(n, d)]
        mm += [base_m.repeat(n, 1), cand_m.reshape(n, d)]
        y_t = torch.zeros(2 * n, p)
        y_t[:, target_index] = torch.as_tensor(ys, dtype=torch.float32).reshape(n).repeat(2)
        m_t = torch.zeros(2 * n, p)
        m_t[:, target_index] = 1.0
        yy, my = torch.cat([yy, y_t]), torch.cat([my, m_t])
    mu, sigma = model.dependency.encode(model.observed(torch.cat(xx), torch.cat(mm), yy, my))
    mu, sigma = mu.double(), sigma.double()
    reward = gaussian_kl(mu[1 : 1 + n], sigma[1 : 1 + n], mu[:1], sigma[:1]).reshape(c, draws).mean(1)
    if with_target:
        mu_y, s_y = mu[1 + n : 1 + 2 * n], sigma[1 + n : 1 + 2 * n]  # q(eps | x_O, y_ij)
        mu_xy, s_xy = mu[1 + 2 * n :], sigma[1 + 2 * n :]  # q(eps | x_O, x_ij, y_ij)
        reward = reward - gaussian_kl(mu_xy, s_xy, mu_y, s_y).reshape(c, draws).mean(1)
    return reward.numpy()


# ---------------------------------------------------------------------------------------------- one artifact


@dataclass
class _Track:
    """One acquisition trajectory per test row: a method (and, for random, one of its orders)."""

    method: str
    order: np.ndarray | None  # random: the fixed order [N, D]
    rows: int
    picks: list[list[int]] = field(init=False)  # per row, features in acquisition order
    prediction: list[list[float]] = field(init=False)  # per row, point prediction after t acquisitions
    log_lik: list[list[float]] = field(init=False)  # per row, log p(y_true | observed), normalised
    top_gain: list[list[float]] = field(init=False)  # per row, the chosen feature's score (info methods)
    ties: list[list[bool]] = field(init=False)  # per row, whether the best score was tied

    def __post_init__(self) -> None:
        for name in ("picks", "prediction", "log_lik", "top_gain", "ties"):
            setattr(self, name, [[] for _ in range(self.rows)])


def _capture(prep: Prepared) -> Prepared:
    """Make the engine return the raw graph outputs along with its own result."""
    inner = prep.finish
    prep.finish = lambda outputs: (outputs, inner(outputs))
    return prep


def _python_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def complete_rows(df: pd.DataFrame, schema: Schema, target: str) -> np.ndarray:
    """Positions of the rows whose features and target are all present (a hidden true value cannot be revealed)."""
    cols = table_columns(df, [c.name for c in schema.features] + [target])
    ok = np.ones(len(df), dtype=bool)
    for values in cols.values():
        ok &= np.array([not is_missing(v) for v in values], dtype=bool)
    return np.nonzero(ok)[0]


def choose_rows(n: int, max_rows: int | None, seed: int, split: int) -> np.ndarray:
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, split, 17]).choice(n, size=max_rows, replace=False))


@dataclass
class _Table:
    """The test rows SAIA runs on, in the user's units and (the target) on the normalised scale."""

    chosen: np.ndarray  # positions in the test table
    complete: int  # rows with every feature and the target present
    values: list[list[Any]]  # [N][D] feature values
    y_true: list[Any]  # [N] target values in user units
    y_enc: np.ndarray  # [N] on the normalised scale


def _test_table(engine: Engine, test: pd.DataFrame, tcol: Column, settings: SaiaSettings, split: int) -> _Table:
    feats = engine.schema.features
    complete = complete_rows(test, engine.schema, tcol.name)
    chosen = complete[choose_rows(len(complete), settings.max_rows, settings.seed, split)]
    if len(chosen) == 0:
        raise ValueError("no test row has every feature and the target present")
    cols = table_columns(test.iloc[chosen].reset_index(drop=True), [c.name for c in feats] + [tcol.name])
    n = len(chosen)
    values = [[_python_value(cols[c.name][r]) for c in feats] for r in range(n)]
    y_true = [_python_value(cols[tcol.name][r]) for r in range(n)]
    y_enc = np.array([engine.preprocessor.encode_value(tcol, v) for v in y_true])
    return _Table(chosen, len(complete), values, y_true, y_enc)


def _tracks(settings: SaiaSettings, n: int, d: int, split: int) -> list[_Track]:
    tracks: list[_Track] = []
    for m in settings.methods:
        if m == "random":
            for o in range(settings.random_orders):
                rng = np.random.default_rng([settings.seed, split, 23, o])
                tracks.append(_Track(m, np.stack([rng.permutation(d) for _ in range(n)]), n))
        else:
            tracks.append(_Track(m, None, n))
    return tracks


def _requests(engine: Engine, tracks, table: _Table, tcol: Column, settings: SaiaSettings, split: int, step: int):
    """Every track's sampler request for this step: next-features for the engine's methods, else a prediction."""
    feats, d = engine.schema.features, len(engine.schema.features)
    requests: list[tuple[_Track, int, Prepared]] = []
    for tr in tracks:
        for r in range(len(table.chosen)):
            row = {feats[j].name: table.values[r][j] for j in tr.picks[r]}
            seed = step_seed(settings.seed, split, int(table.chosen[r]), step)
            if tr.method in ENGINE_METHODS and step < d:
                query = NextFeaturesQuery(row, samples=settings.samples, seed=seed, target=tcol.name, method=tr.method)
            else:
                # the KL reward draws its joint (x_i, y) from the graph's target_given
                extra = frozenset({"target_given", "draws"}) if tr.method.startswith("kl") else frozenset()
                query = PredictQuery([row], samples=settings.samples, seed=seed, extra_outputs=extra)
            requests.append((tr, r, _capture(query.prepare(engine))))
    return requests


def _acquire(engine, model, tr: _Track, r: int, prep, outputs, result, ti: int, settings, table, split, step) -> None:
    """Records track `tr`'s prediction for row r after `step` acquisitions and picks its next feature."""
    feats, d = engine.schema.features, len(engine.schema.features)
    tcol = engine.schema.targets[ti]
    pred = ColumnPredictive(tcol, outputs["target"][:, :, ti])
    if tcol.is_discrete:
        tr.prediction[r].append(float(np.argmax(category_probabilities(pred)[0])))
    else:
        tr.prediction[r].append(float(moments(pred, engine.preprocessor)[0][0]))
    y = np.array([table.y_enc[r]])
    jacobian = pred.column.family.protocol_log_jacobian(y, engine.preprocessor.stats.get(pred.column.name))
    tr.log_lik[r].append(float(pred.mixture(0).log_marginal(y)[0] + jacobian[0]))  # on the protocol's scale
    if step == d:
        return
    if tr.method == "random":
        tr.picks[r].append(int(tr.order[r, step]))
        return
    if tr.method in ENGINE_METHODS:
        ranking = result["ranking"]
        tr.picks[r].append(feats.index(engine.columns[ranking[0]["feature"]]))
        tr.top_gain[r].append(ranking[0]["gain"])
        tr.ties[r].append(len(ranking) > 1 and ranking[1]["gain"] == ranking[0]["gain"])
        return
    rng = np.random.default_rng([settings.seed, split, int(table.chosen[r]), step, 31])
    cand = [j for j in range(d) if j not in tr.picks[r]]
    scores = kl_rewards(
        model,
        prep.feeds["x"][0],
        prep.feeds["mask"][0],
        outputs["features"][0],
        outputs["target_given"][0],
        cand,
        ti,
        rng,
        settings.kl_draws,
        with_target=tr.method == "kl",
        drawn=outputs["draws"][0] if "draws" in outputs else None,
    )
    # The engine's order: highest score first, ties broken by feature name.
    best = min(range(len(cand)), key=lambda c: (-scores[c], feats[cand[c]].name))
    tr.picks[r].append(cand[best])
    tr.top_gain[r].append(float(scores[best]))
    tr.ties[r].append(int(np.sum(scores == scores[best])) > 1)


def _curves(tracks: list[_Track], settings: SaiaSettings, tcol: Column, table: _Table) -> dict[str, Any]:
    truth = np.array(table.y_enc if tcol.is_discrete else [float(v) for v in table.y_true])
    methods = {}
    for m in settings.methods:
        mine = [tr for tr in tracks if tr.method == m]
        err, nll = [], []
        for tr in mine:
            pred = np.array(tr.prediction)  # [N, D + 1]
            if tcol.is_discrete:
                err.append((pred != truth[:, None]).mean(0))
            else:
                err.append(np.sqrt(((pred - truth[:, None]) ** 2).mean(0)))
            nll.append(-np.array(tr.log_lik).mean(0))
        entry: dict[str, Any] = {
            "error": np.mean(err, 0).tolist(),
            "nll_y": np.mean(nll, 0).tolist(),
            "picks": [tr.picks for tr in mine] if m == "random" else mine[0].picks,
        }
        entry["auc_error"], entry["auc_nll_y"] = auc(entry["error"]), auc(entry["nll_y"])
        if m == "random":
            entry["error_per_order"] = [e.tolist() for e in err]
            entry["nll_y_per_order"] = [e.tolist() for e in nll]
        else:
            entry["mean_top_gain"] = np.array(mine[0].top_gain).mean(0).tolist()
            entry["tie_rate"] = np.array(mine[0].ties, dtype=float).mean(0).tolist()
        methods[m] = entry
    return methods


def saia_artifact(
    artifact: str | Path,
    test: pd.DataFrame,
    target: str | None = None,
    settings: SaiaSettings | None = None,
    split: int = 0,
    log: Log | None = None,
) -> dict[str, Any]:
    """Runs SAIA for every (complete) row of `test` with the model of `artifact`; returns curves and AUCs per method.

    `test` holds the rows in the user's units (feature and target columns). With `settings.max_rows` a seeded
    subset of the complete rows is used.
    """
    settings = settings or SaiaSettings()
    engine = Engine(artifact, backend="onnx", threads=settings.threads)
    schema = engine.schema
    tcol = schema.targets[0] if target is None else next((c for c in schema.targets if c.name == target), None)
    if tcol is None:
        raise ValueError(f"unknown target {target!r} (the model predicts {', '.join(c.name for c in schema.targets)})")
    ti = [c.name for c in schema.targets].index(tcol.name)
    need_torch = any(m not in ("random", *ENGINE_METHODS) for m in settings.methods)
    model = load_model(artifact)[0] if need_torch else None
    d = len(schema.features)
    table = _test_table(engine, test, tcol, settings, split)
    tracks = _tracks(settings, len(table.chosen), d, split)
    t0 = time.perf_counter()
    for step in range(d + 1):
        requests = _requests(engine, tracks, table, tcol, settings, split, step)
        results = []
        for i in range(0, len(requests), settings.batch_rows):
            results += engine.run([p for _, _, p in requests[i : i + settings.batch_rows]])
        for (tr, r, prep), (outputs, result) in zip(requests, results):
            _acquire(engine, model, tr, r, prep, outputs, result, ti, settings, table, split, step)
        if log:
            log(f"split {split}: step {step}/{d} ({time.perf_counter() - t0:.0f} s)")
    return {
        "split": split,
        "rows": int(len(table.chosen)),
        "test_rows": int(len(test)),
        "complete_rows": table.complete,
        "features": [c.name for c in schema.features],
        "saia_seconds": time.perf_counter() - t0,
        "methods": _curves(tracks, settings, tcol, table),
    }


# ---------------------------------------------------------------------------------------------- splits


def run_split(
    df: pd.DataFrame,
    schema: Schema,
    split: int,
    target: str | None = None,
    steps: int | StageSteps | None = None,  # None: `hhvaem train`'s default budget for the table
    settings: SaiaSettings | None = None,
    variant: str = "hhvaem",
    progress: Progress | None = None,
    compile: bool | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Train on the split's training rows, export, and run SAIA on its test rows through the engine."""
    settings = settings or SaiaSettings()
    train_idx, test_idx = split_indices(len(df), split)
    train_df = df.iloc[train_idx].reset_index(drop=True)
    t0 = time.perf_counter()
    fitted = fit(train_df, schema, variant, steps, settings.seed, progress, compile=compile)
    train_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="saia-") as tmp:
        art = Path(tmp) / f"split{split}"
        write_artifact(art, fitted.model, fitted.preprocessor, fitted.history, data_fingerprint(train_df))
        out = saia_artifact(art, df.iloc[test_idx].reset_index(drop=True), target, settings, split, log)
    out["train_seconds"] = train_seconds
    out["train_steps"] = int(fitted.history["steps"]["total"])
    return out


def summarise(per_split: list[dict[str, Any]], target: Column, settings: SaiaSettings, steps: Any) -> dict[str, Any]:
    """Mean +- std over splits of each method's AUCs, and the mean curves."""
    methods: dict[str, Any] = {}
    for m in settings.methods:
        entry: dict[str, Any] = {}
        for key in ("auc_error", "auc_nll_y"):
            vals = [s["methods"][m][key] for s in per_split]
            entry[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "per_split": vals}
        for key in ("error", "nll_y"):
            entry[key] = np.mean([s["methods"][m][key] for s in per_split], 0).tolist()
        methods[m] = entry
    return {
        "target": target.name,
        "target_error": "error_rate" if target.is_discrete else "rmse",
        "splits": [s["split"] for s in per_split],
        "settings": {**asdict(settings), "steps": steps if isinstance(steps, int | None) else asdict(steps)},
        "methods": methods,
        "per_split": per_split,
    }


def run_saia(
    df: pd.DataFrame,
    schema: Schema,
    splits: Sequence[int],
    target: str | None = None,
    steps: int | StageSteps | None = None,  # None: `hhvaem train`'s default budget for the table
    settings: SaiaSettings | None = None,
    progress_for: Callable[[int], AbstractContextManager[Progress | None]] | None = None,
    compile: bool | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    settings = settings or SaiaSettings()
    tcol = schema.targets[0] if target is None else next((c for c in schema.targets if c.name == target), None)
    if tcol is None:
        names = ", ".join(c.name for c in schema.targets)
        raise ValueError(f"unknown target {target!r} (the table's targets: {names})")
    per_split = []
    for k in splits:
        with progress_for(k) if progress_for else nullcontext() as progress:
            res = run_split(df, schema, k, tcol.name, steps, settings, progress=progress, compile=compile, log=log)
        per_split.append(res)
        if log:
            s = per_split[-1]
            aucs = ", ".join(f"{m} {v['auc_error']:.4g}/{v['auc_nll_y']:.4g}" for m, v in s["methods"].items())
            log(f"split {k}: train {s['train_seconds']:.0f} s, SAIA {s['saia_seconds']:.0f} s; AUC error/NLL_y: {aucs}")
    return summarise(per_split, tcol, settings, steps)


# ---------------------------------------------------------------------------------------------- output


def format_table(summary: dict[str, Any]) -> str:
    err = "RMSE" if summary["target_error"] == "rmse" else "error rate"
    lines = [
        f"{'method':<12}{'AUC ' + err:>24}{'AUC NLL_y':>24}   (target {summary['target']}, splits "
        f"{','.join(map(str, summary['splits']))})"
    ]
    for m, v in summary["methods"].items():
        a, b = v["auc_error"], v["auc_nll_y"]
        lines.append(f"{m:<12}{a['mean']:>14.4f} ± {a['std']:<7.4f}{b['mean']:>14.4f} ± {b['std']:<7.4f}")
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: str | Path, title: str | None = None) -> None:
    """Two panels: target error and NLL_y vs the number of acquired features (mean over splits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    err = "RMSE (original units)" if summary["target_error"] == "rmse" else "error rate"
    for m, v in summary["methods"].items():
        steps = np.arange(len(v["error"]))
        axes[0].plot(steps, v["error"], marker="o", ms=3, label=f"{m} (AUC {v['auc_error']['mean']:.3g})")
        axes[1].plot(steps, v["nll_y"], marker="o", ms=3, label=f"{m} (AUC {v['auc_nll_y']['mean']:.3g})")
    for ax, label in zip(axes, (f"target {err}", "NLL_y (normalised)")):
        ax.set_xlabel("features acquired")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    splits = ",".join(map(str, summary["splits"]))
    fig.suptitle(title or f"SAIA, target {summary['target']}, mean over splits {splits}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(summary: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(summary, indent=1, default=_json_default))


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
