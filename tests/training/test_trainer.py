"""Trainer behaviour that does not need a long run: masks, compile policy, stage bookkeeping."""

from __future__ import annotations

import pytest
import torch

from hhvaem.model.hhvaem import HHVAEM, ModelConfig
from hhvaem.model.posterior import PosteriorNoise, sample_posterior
from hhvaem.model.schema import Column, Schema
from hhvaem.training.trainer import COMPILE_MIN_HMC_STEPS, StageSteps, TrainConfig, TrainData, Trainer, random_mask


def test_random_mask_keeps_only_observed_and_spans_rates():
    gen = torch.Generator().manual_seed(0)
    observed = torch.rand(4000, 10, generator=gen) < 0.8
    m = random_mask(observed, gen)
    assert not (m & ~observed).any()  # never reveals a genuine hole
    kept = m.sum(1).float() / observed.sum(1).clamp_min(1)
    # Per-row missing rates ~ U(0.01, 0.99): some rows keep almost all, some almost nothing, mean ~ 1/2.
    assert kept.min() < 0.1 and kept.max() > 0.9 and abs(kept.mean().item() - 0.5) < 0.05


def test_stage_steps_follow_the_paper_split():
    s = StageSteps.from_total(20000)
    assert (s.marginal, s.vi, s.hmc) == (1000, 18000, 2000)
    small = StageSteps.from_total(40)
    assert small.hmc == 4 and small.vi == 36 and small.marginal == 10


def test_compile_policy():
    assert not TrainConfig(StageSteps(10, 10, COMPILE_MIN_HMC_STEPS - 1)).compiles
    assert TrainConfig(StageSteps(10, 10, COMPILE_MIN_HMC_STEPS)).compiles
    assert not TrainConfig(StageSteps(10, 10, 5000), compile=False).compiles


def tiny_model_and_data() -> tuple[HHVAEM, TrainData]:
    """A two-feature HMC-VAEM and 64 rows: enough to run every stage in a second."""
    schema = Schema((Column("a", "real"), Column("b", "binary", (0, 1))), (Column("y", "real"),))
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, generator=gen)
    data = TrainData(
        torch.stack([a, (a > 0).float()], 1),
        torch.ones(64, 2, dtype=torch.bool),
        a[:, None] * 2,
        torch.ones(64, 1, dtype=torch.bool),
    )
    model = HHVAEM(schema, ModelConfig(variant="hmcvaem", latent_dims=(2,), hidden=8, marginal_hidden=8, hmc_steps=2))
    return model, data


def test_a_short_run_reports_every_stage_and_frees_the_compiled_sampler():
    model, data = tiny_model_and_data()
    seen = []
    history = Trainer(model, data, TrainConfig(StageSteps(4, 6, 3), batch_size=16)).run(
        lambda stage, step, total, loss: seen.append((stage, step, total))
    )
    assert ("marginal", 4, 4) in seen and ("vi", 6, 6) in seen and ("hmc", 3, 3) in seen
    assert 0 < history["hmc"]["acceptance_rate"] <= 1 and history["hmc"]["inflation"] > 0
    assert not model.sampler_compiled  # inference runs eager after training


def test_transition_plumbing_matches_the_default_sampler():
    """The tensor-only transition used when compiling gives the same chain as the default path."""
    schema = Schema((Column("a", "real"), Column("c", "categorical", ("x", "y", "z"))), (Column("y", "real"),))
    torch.manual_seed(0)
    model = HHVAEM(schema, ModelConfig(variant="hhvaem", latent_dims=(3, 2), hidden=8, hmc_steps=3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.stack([torch.randn(5, generator=gen), torch.randint(0, 3, (5,), generator=gen).double()], 1)
    obs = model.observed(
        x,
        torch.rand(5, 2, generator=gen) < 0.7,
        torch.randn(5, 1, generator=gen).double(),
        torch.ones(5, 1, dtype=torch.bool),
    )
    noise = PosteriorNoise.draw(model, 5, 4, torch.Generator().manual_seed(2), like=obs.z)
    a = sample_posterior(model, obs, noise)
    model._compiled_transition = model._observed_transition  # the same function, minus torch.compile
    b = sample_posterior(model, obs, noise)
    for u, v in zip(a.state, b.state):
        assert torch.equal(u, v)
    assert torch.equal(a.info.accepted, b.info.accepted)


def test_early_stopping_restores_the_best_validation_checkpoint():
    schema = Schema((Column("a", "real"), Column("b", "real")), (Column("y", "real"),))
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, generator=gen)
    x = torch.stack([a, a + 0.1 * torch.randn(300, generator=gen)], 1)
    data = TrainData(x, torch.ones(300, 2, dtype=torch.bool), 2 * a[:, None], torch.ones(300, 1, dtype=torch.bool))
    torch.manual_seed(0)
    model = HHVAEM(schema, ModelConfig(variant="hmcvaem", latent_dims=(2,), hidden=8, marginal_hidden=8, hmc_steps=2))
    config = TrainConfig(StageSteps(20, 40, 6), batch_size=32, validation_fraction=0.1, validate_every=10)
    trainer = Trainer(model, data, config)
    history = trainer.run()
    assert history["rows"] == {"train": 270, "validation": 30}
    assert history["vi"]["best_step"] in (10, 20, 30, 40)
    assert history["hmc"]["best_step"] in (0, 6)  # step 0: stage 3 may keep stage 2's model
    # The model left behind is the best checkpoint of the last stage, not the last step.
    assert abs(trainer.validation_score(use_sampler=True) - history["hmc"]["validation_log_lik"]) < 1e-5
    # Validation rows never reach the training batches.
    seen = torch.cat([trainer.next_rows() for _ in range(20)])
    assert not set(seen.tolist()) & set(trainer.val_rows.tolist())


def test_the_default_budget_grows_sub_linearly_in_rows_between_its_bounds() -> None:
    from hhvaem.training.fit import default_steps

    assert default_steps(300, 13) == 3000 and default_steps(10_000_000, 13) == 20_000
    assert default_steps(4000, 13) == 6325  # 100 x sqrt(4000)
    assert default_steps(16_000, 13) / default_steps(4000, 13) == pytest.approx(2.0, abs=0.01)  # 4x rows, 2x steps
