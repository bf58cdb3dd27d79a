"""The three training stages of HH-VAEM (DESIGN.md "Model").

Stage 1 trains the marginal VAEs on observed entries. Stage 2 trains the
dependency VAE on the ELBO (the importance-weighted bound for MIWAEM) with a fresh
random mask per row and step: missing rate ~ U(0.01, 0.99), applied on top of the
genuine holes, target included. Stage 3 (HMC variants) keeps training the encoder
on the ELBO while the decoder, predictor and step sizes train on E_q(T)[log p*]
and the inflation of the initial proposal on SKSD. Variants without HMC spend
stage 3's steps on more stage-2 training, so every variant sees the same budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from model.dependency import Observed
from model.hhvaem import HHVAEM


class TrainData(NamedTuple):
    x: Tensor  # [N, D] normalised features
    mx: Tensor  # [N, D] bool, genuinely observed
    y: Tensor  # [N, P] normalised targets
    my: Tensor  # [N, P] bool


@dataclass
class StageSteps:
    marginal: int = 1000
    vi: int = 18000
    hmc: int = 2000

    @classmethod
    def from_total(cls, total: int) -> StageSteps:
        """--steps N: N dependency-VAE steps, the last 10% with HMC (paper: 18k + 2k), N/20 marginal steps."""
        total = max(int(total), 10)
        hmc = total // 10
        return cls(marginal=max(total // 20, 10), vi=total - hmc, hmc=hmc)


@dataclass
class TrainConfig:
    steps: StageSteps
    batch_size: int = 100
    lr: float = 1e-3
    sampler_lr: float = 3e-3
    sksd_every: int = 10
    seed: int = 0


Progress = Callable[[str, int, int, float], None]


def random_mask(observed: Tensor, generator: torch.Generator) -> Tensor:
    """Keep each genuinely observed entry with probability 1 - r, r ~ U(0.01, 0.99) per row."""
    rate = torch.rand((observed.shape[0], 1), generator=generator) * 0.98 + 0.01
    return observed & (torch.rand(observed.shape, generator=generator) >= rate)


def finite_step(optimizer: torch.optim.Optimizer, params: list[Tensor], max_norm: float = 100.0) -> bool:
    """Clip and apply the gradients unless any is non-finite (a diverged trajectory); returns whether it stepped."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


def _batches(n: int, batch_size: int, generator: torch.Generator):
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i : i + batch_size]


def train(model: HHVAEM, data: TrainData, config: TrainConfig, progress: Progress | None = None) -> dict:
    """Runs the three stages in place; returns per-stage seconds, final losses and sampler diagnostics."""
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    n = data.x.shape[0]
    batches = _batches(n, min(config.batch_size, n), gen)
    history: dict = {"config": {**asdict(config), "steps": asdict(config.steps)}}
    report = progress or (lambda stage, step, total, loss: None)

    def every(total: int) -> int:
        return max(total // 50, 1)

    # ---- stage 1: marginal VAEs ---------------------------------------------------------
    t0 = time.perf_counter()
    opt = torch.optim.Adam(model.marginal.parameters(), lr=config.lr)
    loss = torch.tensor(float("nan"))
    for step in range(config.steps.marginal):
        idx = next(batches)
        loss = model.marginal.loss(data.x[idx], data.mx[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every(config.steps.marginal) == 0 or step == config.steps.marginal - 1:
            report("marginal", step + 1, config.steps.marginal, loss.item())
    history["marginal"] = {"seconds": time.perf_counter() - t0, "loss": loss.item()}
    for p in model.marginal.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        codes = model.codes(data.x, data.mx)

    def batch_obs():
        idx = next(batches)
        m = random_mask(data.mx[idx], gen)
        my = random_mask(data.my[idx], gen)
        return Observed(codes[idx] * m, m.to(codes.dtype), data.y[idx], my.to(codes.dtype))

    # ---- stage 2: dependency VAE on the ELBO -------------------------------------------
    vi_steps = config.steps.vi + (0 if model.config.uses_hmc else config.steps.hmc)
    t0 = time.perf_counter()
    opt_enc = torch.optim.Adam(model.encoder_parameters(), lr=config.lr)
    opt_gen = torch.optim.Adam(model.generative_parameters(), lr=config.lr)
    for step in range(vi_steps):
        obs = batch_obs()
        loss = -model.elbo(obs, gen).mean()
        opt_enc.zero_grad(set_to_none=True)
        opt_gen.zero_grad(set_to_none=True)
        loss.backward()
        opt_enc.step()
        opt_gen.step()
        if step % every(vi_steps) == 0 or step == vi_steps - 1:
            report("vi", step + 1, vi_steps, loss.item())
    history["vi"] = {"seconds": time.perf_counter() - t0, "loss": loss.item(), "steps": vi_steps}
    if not model.config.uses_hmc or config.steps.hmc == 0:
        return history

    # ---- stage 3: encoder on the ELBO, decoder/predictor/step sizes on HMC, inflation on SKSD
    t0 = time.perf_counter()
    opt_gen = torch.optim.Adam(
        [
            {"params": model.generative_parameters(), "lr": config.lr},
            {"params": model.sampler_parameters(), "lr": config.sampler_lr},
        ]
    )
    opt_s = torch.optim.Adam([model.log_inflation], lr=config.sampler_lr)
    acc, div, skipped, sksd_val = [], 0, 0, float("nan")
    for step in range(config.steps.hmc):
        obs = batch_obs()
        loss_enc = -model.elbo(obs, gen).mean()
        opt_enc.zero_grad(set_to_none=True)
        # Only the encoder learns from the ELBO in this stage.
        for p, g in zip(model.encoder_parameters(), torch.autograd.grad(loss_enc, model.encoder_parameters())):
            p.grad = g
        opt_enc.step()

        logp, info = model.hmc_objective(obs, gen)
        loss = -logp.mean()
        opt_gen.zero_grad(set_to_none=True)
        loss.backward()
        skipped += not finite_step(opt_gen, model.generative_parameters() + model.sampler_parameters())
        acc.append(info.acceptance_rate.mean().item())
        div += int(info.divergences.sum())

        if step % config.sksd_every == 0:
            s_loss = model.sksd_objective(obs, gen).mean()
            (g,) = torch.autograd.grad(s_loss, [model.log_inflation])
            model.log_inflation.grad = g
            finite_step(opt_s, [model.log_inflation])
            sksd_val = s_loss.item()
        if step % every(config.steps.hmc) == 0 or step == config.steps.hmc - 1:
            report("hmc", step + 1, config.steps.hmc, loss.item())
    tail = acc[-max(len(acc) // 10, 1) :]
    history["hmc"] = {
        "seconds": time.perf_counter() - t0,
        "loss": loss.item(),
        "acceptance_rate": sum(tail) / len(tail),
        "divergences": div,
        "skipped_steps": skipped,
        "sksd": sksd_val,
        "inflation": model.inflation.item(),
    }
    return history
