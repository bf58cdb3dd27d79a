"""Per-column diagnosis of an evaluation split: where the imputation error comes from (docs/accuracy.md).

For every feature, on the protocol's scale (docs/protocol.md), from the same served posterior as the split's
metrics:

* `hidden_rmse` (numbers) or `hidden_accuracy` (categories): the error on the entries the test mask hid, and the
  column's `share` of the table's squared error on hidden numeric entries (the shares add up to 1, and
  sqrt(sum of squared errors / count) over the columns is the split's RMSE_xu exactly);
* `observed_rmse` / `observed_accuracy`: the *observed-entry reconstruction*, the posterior predictive mean (or
  mode) at the entries the row showed the model, against their values. Near 0: the latent carries the column;
  near 1 sd: the model explains it as noise even when it sees it;
* `marginal_rmse` (numbers): the column's own marginal VAE, decoded at its encoder's mean code, against the value
  (all known test entries): the ceiling the dependency VAE can reach through that code;
* `majority_accuracy` (categories): the training rows' majority class on the same hidden entries.

And for the table, RMSE_xu split by whether a training row could have supplied the hidden entry
(`copyable`): the training rows nearest to the test row on the columns it shows hold exactly the entry's true
value (every one of them, when several tie). That is the case a nearest-neighbour imputer wins by copying
(replicated designs: one concrete mix at several ages, one hull at several speeds); a model whose latent carries
the observed columns can win it too.

Flat keys (`col/<name>/<figure>`, `rmse_xu_copyable`, ...) so that `summarise` averages them over splits.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hhvaem.model.hhvaem import HHVAEM
from hhvaem.model.preprocessing import Preprocessor

# test rows per block when comparing against every training row (bounds memory on large tables)
_ROWS_PER_BLOCK = 64


def copyable_entries(
    train_x: np.ndarray, train_known: np.ndarray, x: np.ndarray, observed: np.ndarray, discrete: np.ndarray
) -> np.ndarray:
    """[N, D] True where every nearest training row holds the entry's exact value, so that copying a nearest row
    recovers it whichever is taken: nearest on the columns the test row shows (squared differences on the
    protocol's scale, 1 for a different category; a training row missing one of them is not a candidate)."""
    out = np.zeros(x.shape, dtype=bool)
    for start in range(0, len(x), _ROWS_PER_BLOCK):
        xs, obs = x[start : start + _ROWS_PER_BLOCK], observed[start : start + _ROWS_PER_BLOCK]
        diff = xs[:, None, :] - train_x[None, :, :]  # [n, R, D]
        gap = np.where(discrete, (diff != 0).astype(float), diff * diff)
        usable = (train_known[None, :, :] | ~obs[:, None, :]).all(-1)  # [n, R]
        dist = np.where(usable, (gap * obs[:, None, :]).sum(-1), np.inf)
        nearest = usable & (dist <= dist.min(1, keepdims=True) + 1e-12)  # [n, R]
        holds = (diff == 0) & train_known[None, :, :]
        out[start : start + len(xs)] = (holds | ~nearest[:, :, None]).all(1)
    return out


def _scales(model: HHVAEM, pp: Preprocessor) -> list[float]:
    return [1.0 if c.is_discrete else c.family.metric_scale(pp.stats.get(c.name)) for c in model.schema.features]


@torch.no_grad()
def marginal_means(model: HHVAEM, pp: Preprocessor, x: np.ndarray) -> np.ndarray:
    """[N, D] each column's marginal-VAE reconstruction, decoded at its encoder's mean code: the predictive mean
    on the protocol's scale (numbers) or the mode (categories)."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mu, _ = model.marginal.encode(xt)
    natural = model.marginal.likelihood.natural(model.marginal.decode(mu)).numpy()  # [N, D, W]
    out = np.zeros(x.shape)
    for d, col in enumerate(model.schema.features):
        p = col.family.component_params(natural[:, None, d], col.n_categories)
        if col.is_discrete:
            out[:, d] = p[:, 0].argmax(-1)
        else:
            out[:, d] = col.family.protocol_moments(p, pp.stats.get(col.name))[0][:, 0]
    return out


def point_predictions(model: HHVAEM, pp: Preprocessor, natural: np.ndarray) -> np.ndarray:
    """[N, D] posterior predictive mean (numbers, on the protocol's scale) or mode (categories) of every feature,
    from the served per-sample natural parameters [N, K, D, W]."""
    out = np.zeros(natural.shape[:1] + natural.shape[2:3])
    for d, col in enumerate(model.schema.features):
        p = col.family.component_params(natural[:, :, d], col.n_categories)
        if col.is_discrete:
            out[:, d] = p.mean(1).argmax(1)
        else:
            out[:, d] = col.family.protocol_moments(p, pp.stats.get(col.name))[0].mean(1)
    return out


def protocol_values(model: HHVAEM, pp: Preprocessor, x: np.ndarray) -> np.ndarray:
    """[N, D] the model's values on the protocol's scale (categories unchanged)."""
    out = np.array(x, dtype=np.float64)
    for d, col in enumerate(model.schema.features):
        if not col.is_discrete:
            out[:, d] = col.family.to_protocol(x[:, d], pp.stats.get(col.name))
    return out


def diagnose(
    model: HHVAEM,
    pp: Preprocessor,
    natural: np.ndarray,
    x: np.ndarray,
    known: np.ndarray,
    observed: np.ndarray,
    train_x: np.ndarray,
    train_known: np.ndarray,
) -> dict[str, float]:
    """The per-column figures and the copyable split (module docstring). `x`, `known` [N, D]: the test rows on
    the model's scale and which entries are known; `observed`: what the model was shown."""
    pred = point_predictions(model, pp, natural)
    recon = marginal_means(model, pp, x)
    x = protocol_values(model, pp, x)
    scales = np.array(_scales(model, pp))
    hidden = known & ~observed
    shown = known & observed
    numeric = np.array([not c.is_discrete for c in model.schema.features])
    copyable = copyable_entries(protocol_values(model, pp, train_x), train_known, x, observed, ~numeric)
    err = (pred - x) / scales  # metric scale
    total_sq = float((err[:, numeric] ** 2)[hidden[:, numeric]].sum())
    out: dict[str, float] = {}
    for d, col in enumerate(model.schema.features):
        key, h, s = f"col/{col.name}", hidden[:, d], shown[:, d]
        if col.is_discrete:
            if h.any():
                out[f"{key}/hidden_accuracy"] = float((pred[h, d] == x[h, d]).mean())
                counts = np.bincount(train_x[train_known[:, d], d].astype(int), minlength=col.n_categories)
                out[f"{key}/majority_accuracy"] = float((x[h, d] == counts.argmax()).mean())
            if s.any():
                out[f"{key}/observed_accuracy"] = float((pred[s, d] == x[s, d]).mean())
            continue
        if h.any():
            sq = err[h, d] ** 2
            out[f"{key}/hidden_rmse"] = math.sqrt(float(sq.mean()))
            out[f"{key}/share"] = float(sq.sum()) / total_sq if total_sq > 0 else 0.0
        if s.any():
            out[f"{key}/observed_rmse"] = math.sqrt(float((err[s, d] ** 2).mean()))
        k = known[:, d]
        if k.any():
            out[f"{key}/marginal_rmse"] = math.sqrt(float((((recon[k, d] - x[k, d]) / scales[d]) ** 2).mean()))
    observed_rmse = [v for k, v in out.items() if k.endswith("/observed_rmse")]
    if observed_rmse:
        out["observed_rmse_median"] = float(np.median(observed_rmse))
        out["observed_rmse_max"] = float(np.max(observed_rmse))
    marginal = [v for k, v in out.items() if k.endswith("/marginal_rmse")]
    if marginal:
        out["marginal_rmse_max"] = float(np.max(marginal))
    gaps = [
        out[f"col/{c.name}/hidden_accuracy"] - out[f"col/{c.name}/majority_accuracy"]
        for c in model.schema.features
        if f"col/{c.name}/hidden_accuracy" in out
    ]
    if gaps:
        out["accuracy_over_majority_min"] = float(np.min(gaps))
    num_hidden = hidden & numeric
    for name, sel in (("copyable", num_hidden & copyable), ("other", num_hidden & ~copyable)):
        if sel.any():
            out[f"rmse_xu_{name}"] = math.sqrt(float((err[sel] ** 2).mean()))
    if num_hidden.any():
        out["copyable_fraction"] = float((num_hidden & copyable).sum() / num_hidden.sum())
    return out
