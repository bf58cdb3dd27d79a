"""The three training stages of HH-VAEM (README, "Design notes").

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

from hhvaem.model.dependency import Observed
from hhvaem.model.hhvaem import HHVAEM


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
    # Early stopping, off by default: this fraction of the training rows (when there are at least
    # MIN_VALIDATION_ROWS of them) is held out with a fixed random mask; every `validate_every` steps
    # (0: 40 checks per stage) the predictive log-likelihood of its hidden codes and targets is measured,
    # and each stage ends on its best checkpoint. Off because that criterion stops long before the point
    # predictions stop improving (docs/accuracy.md: -5.4 % target error without it on all five ablation
    # tables; on the 12,000-row sensors table ACC_xu 0.58 -> 0.91), and the default budget (fit.py) is
    # sized so the small tables do not over-fit in it.
    validation_fraction: float = 0.0
    validate_every: int = 0
    validation_samples: int = 10
    # The weight of the marginal VAEs' KL term after its warm-up (1: the ELBO).
    marginal_kl_weight: float = 1.0
    # The training mask: each row hides each observed entry with probability r ~ U(mask_rates).
    mask_rates: tuple[float, float] = (0.01, 0.99)
    # Stage 2's learning rate over its steps: "constant", or "cosine" (annealed from lr to lr / 100).
    lr_schedule: str = "constant"
    # Weight of the dependency VAE's KL term in the encoder's objective (1: the ELBO).
    kl_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r} (expected constant or cosine)")

    @property
    def compiles(self) -> bool:
        return self.steps.hmc >= COMPILE_MIN_HMC_STEPS if self.compile is None else self.compile


COMPILE_MIN_HMC_STEPS = 500
MIN_VALIDATION_ROWS = 20

# progress(stage, step, total, loss); one may also have compiling(expected: str) and compiled(seconds), called
# around stage 3's first step when it compiles the sampler (training/progress.py).
Progress = Callable[[str, int, int, float], None]

# Seconds of stage 3's first step, which compiles the HMC transition (and SKSD's, another shape), on a free machine:
# 82 s on boston (13 features, T = 10, one thread; docs/train_speed.json), about 155 s reported on a 2-core machine,
# and on yacht (6 features, T = 5, empty compile cache) 214 s of CPU for the whole `hhvaem train --steps 40
# --compile` run, compile workers included (docs/how-to/train.md). It does not grow with the networks' width (the
# compiled function is one transition); on a busy machine it takes longer in wall time (9 min at load average 9).
COMPILE_SECONDS = (80, 200)


def expected_compile_time() -> str:
    lo, hi = COMPILE_SECONDS
    return f"about {lo}-{hi} s on a free core, measured; longer on a busy machine"


def random_mask(observed: Tensor, generator: torch.Generator, rates: tuple[float, float] = (0.01, 0.99)) -> Tensor:
    """Keep each genuinely observed entry with probability 1 - r, r ~ U(rates) per row."""
    lo, hi = rates
    rate = torch.rand((observed.shape[0], 1), generator=generator) * (hi - lo) + lo
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
        n_val = int(data.x.shape[0] * config.validation_fraction)
        perm = torch.randperm(data.x.shape[0], generator=self.gen)
        if n_val >= MIN_VALIDATION_ROWS:
            self.val_rows, self.train_rows = perm[:n_val], perm[n_val:]
        else:
            self.val_rows, self.train_rows = perm[:0], perm
        val_gen = torch.Generator().manual_seed(config.seed + 7919)
        # masks in the dependency VAE's unit order (HHVAEM.grouped), as the units are
        self.unit_mx = model.grouped(data.mx)
        self.val_visible = random_mask(self.unit_mx[self.val_rows], val_gen)
        self.val_visible_y = random_mask(data.my[self.val_rows], val_gen)
        self.best: dict | None = None
        self.n = len(self.train_rows)
        self.batch_size = min(config.batch_size, self.n)
        self._perm, self._pos = torch.randperm(self.n, generator=self.gen), 0
        self.units: Tensor | None = None
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
        return self.train_rows[idx]

    # ---- stage 1 --------------------------------------------------------------------------
    def marginal_training_step(self) -> float:
        idx = self.next_rows()
        warmup = max(self.config.steps.marginal // 2, 1)
        kl_weight = min(1.0, self.marginal_steps_done / warmup) * self.config.marginal_kl_weight
        self.marginal_steps_done += 1
        loss = self.model.marginal.loss(self.data.x[idx], self.data.mx[idx], self.gen, kl_weight)
        self.opt_marginal.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_marginal.step()
        return loss.item()

    def freeze_marginals(self) -> None:
        """The marginal VAEs are fixed after stage 1; their units (codes) are computed once."""
        for p in self.model.marginal.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.units = self.model.units(self.data.x, self.data.mx)

    def batch(self) -> tuple[Observed, Observed]:
        """A batch of rows under a fresh training mask: (what the model sees, what the mask hid: the true codes
        and targets of the genuinely observed entries it hid, with their masks)."""
        idx = self.next_rows()
        mx, my_all = self.unit_mx[idx], self.data.my[idx]
        rates = tuple(self.config.mask_rates)
        m, my = random_mask(mx, self.gen, rates), random_mask(my_all, self.gen, rates)
        z, y = self.units[idx], self.data.y[idx]
        dt = z.dtype
        return Observed(z * m, m.to(dt), y, my.to(dt)), Observed(z, (mx & ~m).to(dt), y, (my_all & ~my).to(dt))

    # ---- early stopping ----------------------------------------------------------------------
    def validation_score(self, use_sampler: bool) -> float | None:
        """Mean held-out predictive log-likelihood of the validation rows' hidden codes and targets."""
        if len(self.val_rows) == 0:
            return None
        d, v = self.data, self.val_rows
        z = self.units[v]
        m, my = self.val_visible, self.val_visible_y
        dt = z.dtype
        obs = Observed(z * m, m.to(dt), d.y[v], my.to(dt))
        hidden = Observed(z, (self.unit_mx[v] & ~m).to(dt), d.y[v], (d.my[v] & ~my).to(dt))
        gen = torch.Generator().manual_seed(self.config.seed + 104729)
        with self.model.eager_sampler():
            ll = self.model.held_out_log_lik(obs, hidden, self.config.validation_samples, gen, use_sampler)
        return ll.mean().item()

    def checkpoint(self, stage: str, step: int, use_sampler: bool) -> None:
        score = self.validation_score(use_sampler)
        if score is None:
            return
        if self.best is None or self.best["stage"] != stage or score > self.best["score"]:
            state = {k: t.detach().clone() for k, t in self.model.state_dict().items()}
            self.best = {"stage": stage, "step": step, "score": score, "state": state}

    def restore_best(self, stage: str) -> dict | None:
        """Loads the stage's best checkpoint; returns its step and score."""
        if self.best is None or self.best["stage"] != stage:
            return None
        self.model.load_state_dict(self.best["state"])
        return {"best_step": self.best["step"], "validation_log_lik": self.best["score"]}

    # ---- stage 2 --------------------------------------------------------------------------
    def vi_training_step(self) -> float:
        obs, hidden = self.batch()
        loss = -self.model.elbo(obs, self.gen, hidden, self.config.kl_weight).mean()
        self.opt_enc.zero_grad(set_to_none=True)
        self.opt_gen.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_enc.step()
        self.opt_gen.step()
        return loss.item()

    # ---- stage 3 --------------------------------------------------------------------------
    def hmc_training_step(self) -> tuple[float, dict]:
        model, (obs, hidden) = self.model, self.batch()
        # Encoder: ELBO (and the predictive term of the hidden entries).
        loss_enc = -model.elbo(obs, self.gen, hidden, self.config.kl_weight).mean()
        enc = model.encoder_parameters()
        for p, g in zip(enc, torch.autograd.grad(loss_enc, enc)):
            p.grad = g
        self.opt_enc.step()
        # Decoder, predictor, hierarchy and step sizes: E_q(T)[log p*].
        sampler_logp, model_logp, info = model.hmc_objective(obs, self.gen, hidden)
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
        history: dict = {
            "config": {**asdict(cfg), "steps": asdict(cfg.steps)},
            "steps": {**asdict(cfg.steps), "total": cfg.steps.marginal + cfg.steps.vi + cfg.steps.hmc},
            "rows": {"train": len(self.train_rows), "validation": len(self.val_rows)},
        }

        def loop(stage: str, total: int, step_fn, validate: bool = False, use_sampler: bool = False):
            t0, loss, extra = time.perf_counter(), float("nan"), []
            every = max(total // 50, 1)
            check = cfg.validate_every or max(total // 40, 1)
            for i in range(total):
                compiling = stage == "hmc" and i == 0 and cfg.compiles
                if compiling:
                    getattr(progress, "compiling", lambda expected: None)(expected_compile_time())
                out = step_fn()
                if compiling:
                    history["compile_seconds"] = time.perf_counter() - t0
                    getattr(progress, "compiled", lambda seconds: None)(history["compile_seconds"])
                loss, more = out if isinstance(out, tuple) else (out, None)
                if more is not None:
                    extra.append(more)
                if validate and ((i + 1) % check == 0 or i == total - 1):
                    self.checkpoint(stage, i + 1, use_sampler)
                if i % every == 0 or i == total - 1:
                    report(stage, i + 1, total, loss)
            return time.perf_counter() - t0, loss, extra

        secs, loss, _ = loop("marginal", cfg.steps.marginal, self.marginal_training_step)
        history["marginal"] = {"seconds": secs, "loss": loss, "steps": cfg.steps.marginal}
        self.freeze_marginals()
        vi_steps = cfg.steps.vi + (0 if model.config.uses_hmc else cfg.steps.hmc)
        vi_training_step = self.vi_training_step
        if cfg.lr_schedule == "cosine" and vi_steps > 1:
            schedules = [
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, vi_steps, eta_min=cfg.lr / 100)
                for opt in (self.opt_enc, self.opt_gen)
            ]

            def vi_training_step():
                loss = self.vi_training_step()
                for schedule in schedules:
                    schedule.step()
                return loss

        secs, loss, _ = loop("vi", vi_steps, vi_training_step, validate=True)
        history["vi"] = {"seconds": secs, "loss": loss, "steps": vi_steps, **(self.restore_best("vi") or {})}
        if model.config.uses_hmc and cfg.steps.hmc:
            self.checkpoint("hmc", 0, use_sampler=True)  # stage 3 may not end worse than stage 2 left it
            secs, loss, diags = loop("hmc", cfg.steps.hmc, self.hmc_training_step, validate=True, use_sampler=True)
            best = self.restore_best("hmc") or {}
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
                **best,
            }
        return history


def train(model: HHVAEM, data: TrainData, config: TrainConfig, progress: Progress | None = None) -> dict:
    """Runs the three stages in place; returns per-stage seconds, final losses and sampler diagnostics."""
    return Trainer(model, data, config).run(progress)
