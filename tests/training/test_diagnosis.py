"""The per-column diagnosis (training/diagnosis.py) on a tiny table whose every figure is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hhvaem.model.families import Stats
from hhvaem.model.hhvaem import HHVAEM, ModelConfig
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Column, Schema
from hhvaem.training.diagnosis import copyable_entries, diagnose
from hhvaem.training.evaluate import feature_metrics

SCHEMA = Schema(
    features=(Column("a", "real"), Column("b", "real"), Column("c", "categorical", categories=("x", "y", "z"))),
    targets=(Column("t", "real"),),
)
UNIT_STATS = {"a": Stats(), "b": Stats(), "t": Stats()}


def test_copyable_entries_are_held_by_a_nearest_training_row_on_the_shown_columns():
    train = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 9.0, 5.0], [7.0, 7.0, 7.0, 7.0]])
    known = np.ones_like(train, dtype=bool)
    discrete = np.array([False, False, False, True])
    x = np.array(
        [
            [1.0, 2.0, 3.5, 5.0],  # shows a, b, c: row 0 is nearest (0.25 against 30.25) and holds d = 4, not 5
            [1.0, 2.0, 0.0, 4.0],  # shows a: rows 0 and 1 tie at 0; both hold b = 2 -> copyable; only row 0
            # holds d = 4 -> not (copying row 1 would give 5)
            [6.0, 0.0, 7.0, 5.0],  # shows a, d: row 2 (1, plus 1 for another category of d) is nearer than
            # row 1 (25 + 0) and holds c = 7 -> copyable
        ]
    )
    observed = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1]], dtype=bool)
    got = copyable_entries(train, known, x, observed, discrete)
    assert not got[0, 3] and got[1, 1] and not got[1, 3] and got[2, 2]
    assert not got[2, 1]  # the nearest row (2) holds b = 7, not 0
    # a training row missing a shown column is no candidate: with row 1's a unknown, row 0 alone is nearest
    unknown = known.copy()
    unknown[1, 0] = False
    assert copyable_entries(train, unknown, x, observed, discrete)[1, 3]


@pytest.fixture
def model() -> HHVAEM:
    torch.manual_seed(0)
    return HHVAEM(SCHEMA, ModelConfig(variant="vaem", latent_dims=(2,), hidden=8, marginal_hidden=4)).eval()


def test_figures_by_hand(model):
    pp = Preprocessor(SCHEMA, UNIT_STATS)  # scale 1, no warp: the metric scale is the model's
    # 4 test rows; the served "posterior" has K = 2 samples, whose Gaussian locs average to the point predictions
    x = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [2.0, -1.0, 2.0], [3.0, 0.0, 2.0]])
    known = np.ones_like(x, dtype=bool)
    known[3, 1] = False
    observed = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool) & known
    pred_a = np.array([0.5, 1.0, 2.0, 1.0])  # errors at a: shown rows 0, 2 -> 0.5, 0; hidden rows 1, 3 -> 0, -2
    pred_b = np.array([0.0, 2.0, -1.0, 0.0])  # b: shown row 1 -> 1; hidden rows 0, 2 -> -1, 0 (row 3 unknown)
    pred_c = np.array([0, 1, 0, 2])  # c: shown rows 0, 3 -> right, right; hidden 1, 2 -> right, wrong
    natural = np.zeros((4, 2, 3, 3))
    for d, pred in enumerate((pred_a, pred_b)):
        natural[:, 0, d, 0], natural[:, 1, d, 0] = pred - 0.25, pred + 0.25
        natural[:, :, d, 1] = 1.0
    natural[np.arange(4), :, 2, pred_c] = 1.0  # class probabilities
    train_x = np.array([[0.0, 1.0, 1.0], [5.0, 1.0, 1.0], [9.0, 9.0, 0.0]])
    train_known = np.ones_like(train_x, dtype=bool)
    out = diagnose(model, pp, natural, x, known, observed, train_x, train_known)

    assert out["col/a/hidden_rmse"] == pytest.approx(math.sqrt((0 + 4) / 2))
    assert out["col/a/observed_rmse"] == pytest.approx(math.sqrt((0.25 + 0) / 2))
    assert out["col/b/hidden_rmse"] == pytest.approx(math.sqrt((1 + 0) / 2))
    assert out["col/b/observed_rmse"] == pytest.approx(1.0)
    # squared error on hidden numbers: a 4, b 1 -> shares 0.8, 0.2; the shares rebuild RMSE_xu
    assert out["col/a/share"] == pytest.approx(0.8) and out["col/b/share"] == pytest.approx(0.2)
    hidden = known & ~observed
    rmse_xu = feature_metrics(SCHEMA, pp, natural, x, hidden, np.random.default_rng(0))["rmse_xu"]
    assert rmse_xu == pytest.approx(math.sqrt(5 / 4))
    assert out["col/c/hidden_accuracy"] == pytest.approx(0.5)
    assert out["col/c/observed_accuracy"] == pytest.approx(1.0)
    # the training rows' majority class of c is y (1): hidden rows 1 and 2 hold y and z
    assert out["col/c/majority_accuracy"] == pytest.approx(0.5)
    assert out["accuracy_over_majority_min"] == pytest.approx(0.0)
    assert out["observed_rmse_median"] == pytest.approx(np.median([math.sqrt(0.125), 1.0]))
    assert out["observed_rmse_max"] == pytest.approx(1.0)
    # copyable hidden numbers: row 0 shows a = 0 and c = x: training row 0 is nearest (0 + 1 against 26 and 81)
    # and holds b = 1, the truth; row 1 shows b = 1: rows 0 and 1 tie, neither holds a = 1; row 2 shows a = 2:
    # row 0 is nearest, b = 1 is not -1; row 3 shows c = z: all tie, none holds a = 3. So {(0, b)}: error 1.
    assert out["rmse_xu_copyable"] == pytest.approx(1.0)
    assert out["rmse_xu_other"] == pytest.approx(math.sqrt((0 + 4 + 0) / 3))
    assert out["copyable_fraction"] == pytest.approx(0.25)


def test_marginal_reconstruction_is_the_decoded_mean_at_the_mean_code(model):
    pp = Preprocessor(SCHEMA, UNIT_STATS)
    x = np.array([[0.0, 1.0, 0.0], [1.0, -1.0, 1.0], [2.0, 0.5, 2.0]])
    known = np.ones_like(x, dtype=bool)
    natural = np.zeros((3, 1, 3, 3))
    natural[..., :2, 1] = 1.0
    natural[..., 2, 0] = 1.0
    out = diagnose(model, pp, natural, x, known, known, x, known)
    with torch.no_grad():
        mu, _ = model.marginal.encode(torch.tensor(x, dtype=torch.float32))
        loc = model.marginal.decode(mu)[..., 0].numpy()  # a Gaussian's first raw parameter is its loc
    for d, name in enumerate("ab"):
        want = math.sqrt(float(((loc[:, d] - x[:, d]) ** 2).mean()))
        assert out[f"col/{name}/marginal_rmse"] == pytest.approx(want, rel=1e-5)
    assert "col/c/marginal_rmse" not in out
    assert out["marginal_rmse_max"] == pytest.approx(max(out["col/a/marginal_rmse"], out["col/b/marginal_rmse"]))
