"""What serving runs, as one deterministic torch function of data and noise, and its ONNX export.

`PredictiveGraph` is the whole posterior sampler plus the predictive heads:
  marginal codes of the observed entries -> encoder q(eps | z_O, y_O) -> eps_0 (inflated)
  -> T HMC transitions of L leapfrog steps (learned step sizes, Metropolis by masks)
  -> per posterior sample: a code z ~ p(z | h_1) decoded to every feature's likelihood,
     and the target's likelihood from the predictor.
Every random number is an input, so ONNX Runtime and torch give the same samples for
the same noise (the parity test), and one request batch is one ONNX Runtime call.
The gradient of log p* inside HMC is the hand-written backward pass in `model.dependency`
(autograd does not export), checked against autograd by the tests.

Outputs are natural parameters on the normalised scale (see `ColumnLikelihoods.natural`);
turning them into values in the user's units is numpy work on the serving side.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hhvaem.model.hhvaem import HHVAEM
from hhvaem.model.hmc import hmc_chain, init_state

OPSET = 17
# Dynamic axes: B rows, C posterior samples (chains) per row.
_AXES = {
    "x": {0: "rows"},
    "mask": {0: "rows"},
    "y": {0: "rows"},
    "y_mask": {0: "rows"},
    "noise": {0: "rows", 1: "samples"},
    "code_noise": {0: "rows", 1: "samples"},
    "momentum": {1: "rows", 2: "samples"},
    "log_u": {1: "rows", 2: "samples"},
    "gumbel": {0: "rows", 1: "samples", 2: "samples"},
    "eps": {0: "rows", 1: "samples"},
    "features": {0: "rows", 1: "samples"},
    "target": {0: "rows", 1: "samples"},
    "acceptance": {0: "rows"},
    "target_given": {0: "rows", 1: "samples"},
}
OUTPUTS = ("eps", "features", "target", "acceptance", "target_given")


def noise_inputs(model: HHVAEM) -> tuple[str, ...]:
    """The random inputs this variant's graph takes, in argument order after the data."""
    names = ["noise", "code_noise"]
    if model.config.uses_hmc:
        names += ["momentum", "log_u"]
    elif model.config.importance_samples:
        names += ["gumbel"]
    return tuple(names)


def input_shapes(model: HHVAEM, rows: int, samples: int) -> dict[str, tuple[int, ...]]:
    """Shapes of every graph input for `rows` rows and `samples` posterior samples per row."""
    d, p, e, t = len(model.schema.features), len(model.schema.targets), model.latent_size, model.config.hmc_steps
    shapes = {
        "x": (rows, d),
        "mask": (rows, d),
        "y": (rows, p),
        "y_mask": (rows, p),
        "noise": (rows, samples, e),
        "code_noise": (rows, samples, d),
        "momentum": (t, rows, samples, e),
        "log_u": (t, rows, samples),
        "gumbel": (rows, samples, samples),
    }
    return {k: shapes[k] for k in ("x", "mask", "y", "y_mask", *noise_inputs(model))}


class PredictiveGraph(nn.Module):
    """(x, mask, y, y_mask, noise...) -> eps [B,C,E], features [B,C,D,W], target [B,C,P,W'], acceptance [B],
    target_given [B,C,D,P,W']: the target's parameters had feature i been observed at the value sampled for it.

    `target_given` is what acquisition needs: the predictor reads an observed feature's code directly, so
    the joint of (x_i, y) under posterior sample k pairs p(x_i | z_ik) with p(y | eps_k, z_hat with z_ik in
    place i). Pairing p_k(x_i) with the target of the unobserved row instead treats x_i and y as independent
    given eps and misses that path (on yacht, the Froude number: 0.0005 nats instead of most of the target).
    """

    def __init__(self, model: HHVAEM):
        super().__init__()
        self.model = model
        self.noise_names = noise_inputs(model)

    def forward(self, x: Tensor, mask: Tensor, y: Tensor, y_mask: Tensor, *noise: Tensor):
        m, dep = self.model, self.model.dependency
        given = dict(zip(self.noise_names, noise))
        obs = m.observed(x, mask, y, y_mask)
        mu, sigma = dep.encode(obs)
        if m.config.uses_hmc:
            eps0 = mu.unsqueeze(-2) + (sigma * m.inflation).unsqueeze(-2) * given["noise"]
            target = m.log_joint_and_grad(obs.unsqueeze(-2))
            state, info = hmc_chain(
                init_state(eps0, target),
                target,
                m.step_sizes,
                m.config.leapfrog_steps,
                m.inverse_mass(sigma),
                momentum_noise=given["momentum"],
                log_uniforms=given["log_u"],
            )
            eps, acceptance = state.position, info.acceptance_rate.mean(-1)
        else:
            eps = mu.unsqueeze(-2) + sigma.unsqueeze(-2) * given["noise"]
            if m.config.importance_samples:
                # Sampling-importance-resampling by the Gumbel-max trick: index j of row b, draw c.
                log_w = m._log_weights(eps, mu, sigma, obs)
                idx = torch.argmax(log_w.unsqueeze(-2) + given["gumbel"], dim=-1)
                eps = torch.gather(eps, -2, idx.unsqueeze(-1).expand_as(eps))
            acceptance = torch.ones_like(mu[..., 0])
        h1, _ = dep.top_down(eps)
        code = dep.code_distribution(dep.decoder(h1))
        z = code.loc + code.scale * given["code_noise"]
        features = m.marginal.likelihood.natural(m.marginal.decode(z))
        target_nat = dep.target_likelihood.natural(dep.forward_pass(eps, obs.unsqueeze(-2)).y_raw)
        return eps, features, target_nat, acceptance, self._target_given(obs, h1, code.loc, z)

    def _target_given(self, obs, h1: Tensor, loc: Tensor, z: Tensor) -> Tensor:
        """Target natural params [B, C, D, P, W] with each unobserved feature i set to its sampled code z_i."""
        dep = self.model.dependency
        d = dep.n_codes
        m = obs.m.unsqueeze(-2)  # [B, 1, D]
        z_hat = m * obs.z.unsqueeze(-2) + (1.0 - m) * loc  # [B, C, D] as the predictor sees the row now
        # Variant i (axis -2) replaces entry i (axis -1) by its sample, where it is unobserved.
        swap = torch.eye(d, dtype=z.dtype, device=z.device) * (1.0 - m).unsqueeze(-2)  # [B, 1, D, D]
        zz = z_hat.unsqueeze(-2) + swap * (z.unsqueeze(-2) - z_hat.unsqueeze(-2))  # [B, C, D, D]
        mm = (m.unsqueeze(-2) + swap).expand_as(zz)
        hh = h1.unsqueeze(-2).expand(*zz.shape[:-1], h1.shape[-1])
        out = dep.predictor(torch.cat([zz, mm, hh], -1))
        return dep.target_likelihood.natural(dep.target_params(out))


class LogDensityGraph(nn.Module):
    """log p*(eps | observed) and its gradient: the HMC target as a plain forward graph."""

    def __init__(self, model: HHVAEM):
        super().__init__()
        self.model = model

    def forward(self, eps: Tensor, x: Tensor, mask: Tensor, y: Tensor, y_mask: Tensor):
        obs = self.model.observed(x, mask, y, y_mask).unsqueeze(-2)
        return self.model.dependency.log_joint_and_grad(eps, obs)


def example_inputs(model: HHVAEM, rows: int = 2, samples: int = 3, seed: int = 0) -> dict[str, Tensor]:
    """Valid random inputs (all features observed except a few) for tracing and tests."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for name, shape in input_shapes(model, rows, samples).items():
        if name in ("mask", "y_mask"):
            out[name] = (torch.rand(shape, generator=g) < 0.6).float()
        elif name == "log_u":
            out[name] = torch.log(torch.rand(shape, generator=g))
        elif name == "gumbel":
            out[name] = -torch.log(-torch.log(torch.rand(shape, generator=g)))
        elif name in ("x", "y"):
            cols = model.schema.features if name == "x" else model.schema.targets
            rng = np.random.default_rng(seed)
            vals = np.stack([c.family.example(rng, shape[0], c.n_categories) for c in cols], -1)
            out[name] = torch.as_tensor(vals, dtype=torch.float32)
        else:
            out[name] = torch.randn(shape, generator=g)
    return out


def export_predictive(model: HHVAEM, path: str | Path) -> dict[str, Any]:
    """Writes the predictive graph to `path` (ONNX); returns its description for the manifest."""
    graph = PredictiveGraph(model).eval()
    inputs = example_inputs(model)
    names = list(inputs)
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
        torch.onnx.export(
            graph,
            tuple(inputs.values()),
            str(path),
            input_names=names,
            output_names=list(OUTPUTS),
            dynamic_axes={k: v for k, v in _AXES.items() if k in names or k in OUTPUTS},
            opset_version=OPSET,
            dynamo=False,  # the legacy exporter: 6-15 s for T=10, L=5 against 60-100 s with dynamo
            do_constant_folding=True,
        )
    return {
        "opset": OPSET,
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "outputs": list(OUTPUTS),
        "dynamic_axes": {"rows": "B", "samples": "C"},
        "export_seconds": round(time.perf_counter() - started, 2),
    }


def export_log_density(model: HHVAEM, path: str | Path, rows: int = 2, samples: int = 3) -> None:
    """Writes `LogDensityGraph` to ONNX (diagnostics and the exported-gradient test)."""
    ex = example_inputs(model, rows, samples)
    eps = torch.randn(rows, samples, model.latent_size)
    args = (eps, ex["x"], ex["mask"], ex["y"], ex["y_mask"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LogDensityGraph(model).eval(),
            args,
            str(path),
            input_names=["eps", "x", "mask", "y", "y_mask"],
            output_names=["logp", "grad"],
            dynamic_axes={
                "eps": {0: "rows", 1: "samples"},
                "x": {0: "rows"},
                "mask": {0: "rows"},
                "y": {0: "rows"},
                "y_mask": {0: "rows"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
