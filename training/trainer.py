"""The three training stages of HH-VAEM (DESIGN.md "Model").

Stage 1 trains the marginal VAEs on observed entries. Stage 2 trains the
dependency VAE on the ELBO (the importance-weighted bound for MIWAEM) with a fresh
random mask per row and step: missing rate ~ U(0.01, 0.99), applied on top of the
genuine holes, target included. Stage 3 (HMC variants) keeps training the encoder
on the ELBO while the decoder, predictor and step sizes train on E_q(T)[log p*]
and the inflation of the initial proposal on SKSD (every `sksd_every` steps, with
`sksd_chains` chains per row, as the paper's code effectively does). Variants
without HMC spend stage 3's steps on more stage-2 training, so every variant
sees the same budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

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
        """--steps N: N dependency-VAE steps, the last 10% with HMC (paper: 18k + 2k).

        Stage 1 gets N/4 steps, at most the paper's 1000: it is cheap (all features in one batched
        step) and under-trained marginal codes cap everything downstream.
        """
        total = max(int(total), 10)
        hmc = total // 10
        return cls(marginal=min(max(total // 4, 10), 1000), vi=total - hmc, hmc=hmc)


@dataclass
class TrainConfig:
    steps: StageSteps
    batch_size: int = 100
    lr: float = 1e-3
    sampler_lr: float = 3e-3
    sksd_every: int = 10
    seed: int = 0
    # torch.compile the HMC transition: ~8x faster stage-3 steps after a one-off compile of a minute or
    # two per input shape. None: only when stage 3 is long enough to repay it.
    compile: bool | None = None

    @property
    def compiles(self) -> bool:
        return self.steps.hmc >= COMPILE_MIN_HMC_STEPS if self.compile is None else self.compile


COMPILE_MIN_HMC_STEPS = 500

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


class Trainer:
    """Holds the optimisers and the batch stream; one method per stage's training step."""

    def __init__(self, model: HHVAEM, data: TrainData, config: TrainConfig):
        self.model, self.data, self.config = model, data, config
        self.gen = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        self.n = data.x.shape[0]
        self.batch_size = min(config.batch_size, self.n)
        self._perm, self._pos = torch.randperm(self.n, generator=self.gen), 0
        self.codes: Tensor | None = None
        self.opt_marginal = torch.optim.Adam(model.marginal.parameters(), lr=config.lr)
        self.opt_enc = torch.optim.Adam(model.encoder_parameters(), lr=config.lr)
        self.opt_gen = torch.optim.Adam(model.generative_parameters(), lr=config.lr)
        self.opt_joint = torch.optim.Adam(
            [
                {"params": model.generative_parameters(), "lr": config.lr},
                {"params": model.sampler_parameters(), "lr": config.sampler_lr},
            ]
        )
        self.opt_inflation = torch.optim.Adam([model.log_inflation], lr=config.sampler_lr)
        self.hmc_steps_done = 0
        self.marginal_steps_done = 0
        if config.compiles and model.config.uses_hmc:
            model.compile_sampler()

    def next_rows(self) -> Tensor:
        if self._pos + self.batch_size > self.n:
            self._perm, self._pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    # ---- stage 1 --------------------------------------------------------------------------
    def marginal_step(self) -> float:
        idx = self.next_rows()
        warmup = max(self.config.steps.marginal // 2, 1)
        kl_weight = min(1.0, self.marginal_steps_done / warmup)
        self.marginal_steps_done += 1
        loss = self.model.marginal.loss(self.data.x[idx], self.data.mx[idx], self.gen, kl_weight)
        self.opt_marginal.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_marginal.step()
        return loss.item()

    def freeze_marginals(self) -> None:
        """The marginal VAEs are fixed after stage 1; their codes are computed once."""
        for p in self.model.marginal.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.codes = self.model.codes(self.data.x, self.data.mx)

    def batch(self) -> Observed:
        idx = self.next_rows()
        m = random_mask(self.data.mx[idx], self.gen)
        my = random_mask(self.data.my[idx], self.gen)
        z = self.codes[idx]
        return Observed(z * m, m.to(z.dtype), self.data.y[idx], my.to(z.dtype))

    # ---- stage 2 --------------------------------------------------------------------------
    def vi_step(self) -> float:
        loss = -self.model.elbo(self.batch(), self.gen).mean()
        self.opt_enc.zero_grad(set_to_none=True)
        self.opt_gen.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_enc.step()
        self.opt_gen.step()
        return loss.item()

    # ---- stage 3 --------------------------------------------------------------------------
    def hmc_step(self) -> tuple[float, dict]:
        model, obs = self.model, self.batch()
        # Encoder: ELBO only.
        loss_enc = -model.elbo(obs, self.gen).mean()
        enc = model.encoder_parameters()
        for p, g in zip(enc, torch.autograd.grad(loss_enc, enc)):
            p.grad = g
        self.opt_enc.step()
        # Decoder, predictor, hierarchy and step sizes: E_q(T)[log p*].
        sampler_logp, model_logp, info = model.hmc_objective(obs, self.gen)
        loss = -model_logp.mean()
        self.opt_joint.zero_grad(set_to_none=True)
        (loss - sampler_logp.mean()).backward()
        stepped = finite_step(self.opt_joint, model.generative_parameters() + model.sampler_parameters())
        diag = {
            "acceptance_rate": info.acceptance_rate.mean().item(),
            "divergences": int(info.divergences.sum()),
            "skipped": not stepped,
        }
        # Inflation of the initial proposal: SKSD.
        if self.hmc_steps_done % self.config.sksd_every == 0:
            s_loss = model.sksd_objective(obs, self.gen).mean()
            (g,) = torch.autograd.grad(s_loss, [model.log_inflation])
            model.log_inflation.grad = g
            finite_step(self.opt_inflation, [model.log_inflation])
            diag["sksd"] = s_loss.item()
        self.hmc_steps_done += 1
        return loss.item(), diag

    # ---- the recipe -----------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> dict:
        try:
            return self._run(progress)
        finally:
            # Compiled graphs are specialised to training shapes; inference runs eager.
            self.model.compile_sampler(False)

    def _run(self, progress: Progress | None) -> dict:
        cfg, model = self.config, self.model
        report = progress or (lambda stage, step, total, loss: None)
        history: dict = {"config": {**asdict(cfg), "steps": asdict(cfg.steps)}}

        def loop(stage: str, total: int, step_fn) -> tuple[float, float, list]:
            t0, loss, extra = time.perf_counter(), float("nan"), []
            every = max(total // 50, 1)
            for i in range(total):
                out = step_fn()
                loss, more = out if isinstance(out, tuple) else (out, None)
                if more is not None:
                    extra.append(more)
                if i % every == 0 or i == total - 1:
                    report(stage, i + 1, total, loss)
            return time.perf_counter() - t0, loss, extra

        secs, loss, _ = loop("marginal", cfg.steps.marginal, self.marginal_step)
        history["marginal"] = {"seconds": secs, "loss": loss, "steps": cfg.steps.marginal}
        self.freeze_marginals()
        vi_steps = cfg.steps.vi + (0 if model.config.uses_hmc else cfg.steps.hmc)
        secs, loss, _ = loop("vi", vi_steps, self.vi_step)
        history["vi"] = {"seconds": secs, "loss": loss, "steps": vi_steps}
        if model.config.uses_hmc and cfg.steps.hmc:
            secs, loss, diags = loop("hmc", cfg.steps.hmc, self.hmc_step)
            tail = diags[-max(len(diags) // 10, 1) :]
            sksd_values = [d["sksd"] for d in diags if "sksd" in d]
            history["hmc"] = {
                "seconds": secs,
                "loss": loss,
                "steps": cfg.steps.hmc,
                "acceptance_rate": sum(d["acceptance_rate"] for d in tail) / len(tail),
                "divergences": sum(d["divergences"] for d in diags),
                "skipped_steps": sum(d["skipped"] for d in diags),
                "sksd": sksd_values[-1] if sksd_values else None,
                "inflation": model.inflation.item(),
            }
        return history


def train(model: HHVAEM, data: TrainData, config: TrainConfig, progress: Progress | None = None) -> dict:
    """Runs the three stages in place; returns per-stage seconds, final losses and sampler diagnostics."""
    return Trainer(model, data, config).run(progress)
