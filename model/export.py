"""What serving runs, as one deterministic torch function of data and noise, and its ONNX export.

`PredictiveGraph` is the whole posterior sampler plus the predictive heads:
  marginal codes of the observed entries -> `sample_posterior` (encoder, inflated initial draw, T HMC
  transitions of L leapfrog steps with the learned step sizes; the same function training and evaluation
  call) -> per posterior sample: a code z ~ p(z | h_1) decoded to every feature's likelihood, and the
  target's likelihood from the predictor.
Every random number is an input, so ONNX Runtime and torch give the same samples for the same noise (the
parity test), and one request batch is one ONNX Runtime call. Names, shapes and order of the inputs and
outputs are the graph contract's (`model.io.contract`). The gradient of log p* inside HMC is the
hand-written backward pass in `model.dependency` (autograd does not export), checked against autograd.

Outputs are natural parameters on the normalised scale (`ColumnLikelihoods.natural`); turning them into
values in the user's units is numpy work on the serving side (`model.families`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hhvaem.model.dependency import Observed
from hhvaem.model.hhvaem import HHVAEM
from hhvaem.model.hmc import ChainNoise
from hhvaem.model.io.contract import Dims, GraphSpec, draw_noise, natural_width, sampler_graphs
from hhvaem.model.posterior import PosteriorNoise, sample_posterior

OPSET = 17


def graphs_of(model: HHVAEM) -> dict[str, GraphSpec]:
    """The contract's graphs for this model's variant."""
    return sampler_graphs(model.config.uses_hmc, bool(model.config.importance_samples))


def dims_of(model: HHVAEM) -> Dims:
    schema = model.schema
    return Dims(
        features=len(schema.features),
        targets=len(schema.targets),
        latent=model.latent_size,
        steps=model.config.hmc_steps,
        feature_width=natural_width(schema.features),
        target_width=natural_width(schema.targets),
    )


class PredictiveGraph(nn.Module):
    """The graph contract's inputs (data, then noise) -> its outputs, in the contract's order.

    `target_given` [B, C, D, P, W'] is what acquisition needs: the target's parameters had feature i been observed
    at the value sampled for it. The predictor reads an observed feature's code directly, so the joint of
    (x_i, y) under posterior sample k pairs p(x_i | z_ik) with p(y | eps_k, z_hat with z_ik in place i). Pairing
    p_k(x_i) with the target of the unobserved row instead treats x_i and y as independent given eps and misses
    that path (on yacht, the Froude number: 0.0005 nats instead of most of the target).
    """

    def __init__(self, model: HHVAEM, graph: GraphSpec):
        super().__init__()
        self.model = model
        self.graph = graph

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        m, dep = self.model, self.model.dependency
        given = dict(zip(self.graph.input_names, inputs))
        obs = m.observed(given["x"], given["mask"], given.get("y"), given.get("y_mask"))
        chain = ChainNoise(given["momentum"], given["log_u"]) if "momentum" in given else None
        post = sample_posterior(m, obs, PosteriorNoise(given["eps_noise"], chain, given.get("gumbel")), flat=True)
        h1, _ = dep.top_down(post.eps)
        dec_out = dep.decoder(h1)
        dists = dep.blocks.dists(dec_out)  # every unit's distribution given eps [B, C, ...]
        units = m.unit_draws(dists, m.grouped(given["code_noise"]))  # a draw of every unit, per posterior sample
        make = {
            "eps": lambda: post.eps,
            "features": lambda: m.feature_natural(dists, units),
            "target": lambda: dep.target_likelihood.natural(dep.predictor_pass(h1, dists, obs.unsqueeze(-2))[0]),
            "acceptance": lambda: (
                post.info.acceptance_rate.mean(-1) if post.info is not None else torch.ones_like(post.mu[..., 0])
            ),
            "target_given": lambda: self._target_given(obs, h1, dec_out, units),
            "draws": lambda: m.ungrouped(dep.coded * -1.0 + (1.0 - dep.coded) * units),
        }
        return tuple(make[name]() for name in self.graph.output_names)

    def _target_given(self, obs: Observed, h1: Tensor, dec_out: Tensor, units: Tensor) -> Tensor:
        """Target natural params [B, C, D, P, W] with each unobserved unit i observed at its sampled value (the
        variant axis -3 in feature order)."""
        m, dep = self.model, self.model.dependency
        d = dep.n_units
        mask = obs.m.unsqueeze(-2)  # [B, 1, D]
        # Variant i (axis -2) observes unit i (axis -1) at its draw, where it is unobserved.
        swap = torch.eye(d, dtype=units.dtype, device=units.device) * (1.0 - mask).unsqueeze(-2)  # [B, 1, D, D]
        zz = (obs.z * obs.m).unsqueeze(-2).unsqueeze(-2) + swap * units.unsqueeze(-2)  # [B, C, D, D]
        mm = (mask.unsqueeze(-2) + swap).expand_as(zz)
        dists = dep.blocks.dists(dec_out.unsqueeze(-2))  # [B, C, 1, ...]: broadcast over the variants
        hh = h1.unsqueeze(-2).expand(*zz.shape[:-1], h1.shape[-1])
        out = dep.predictor(dep.predictor_input(hh, dists, Observed(zz, mm, None, None)))
        return m.ungrouped(dep.target_likelihood.natural(dep.target_params(out)), -3)


class LogDensityGraph(nn.Module):
    """log p*(eps | observed) and its gradient: the HMC target as a plain forward graph."""

    def __init__(self, model: HHVAEM):
        super().__init__()
        self.model = model

    def forward(self, eps: Tensor, x: Tensor, mask: Tensor, y: Tensor, y_mask: Tensor):
        obs = self.model.observed(x, mask, y, y_mask).unsqueeze(-2)
        return self.model.dependency.log_joint_and_grad(eps, obs)


def example_inputs(
    model: HHVAEM, graph: GraphSpec | None = None, rows: int = 2, samples: int = 3, seed: int = 0
) -> dict[str, Tensor]:
    """Valid random inputs of one of the model's graphs (default: the conditional one), in the contract's order."""
    rng = np.random.default_rng(seed)
    schema, graph = model.schema, graph or graphs_of(model)["conditional"]

    def values(cols) -> np.ndarray:
        return np.stack([c.family.example(rng, rows, c.n_categories) for c in cols], -1)

    data = {
        "x": values(schema.features),
        "mask": (rng.random((rows, len(schema.features))) < 0.6).astype(np.float64),
        "y": values(schema.targets),
        "y_mask": (rng.random((rows, len(schema.targets))) < 0.6).astype(np.float64),
        **draw_noise(graph, dims_of(model), rows, samples, rng),
    }
    return {name: torch.as_tensor(data[name], dtype=torch.float32) for name in graph.input_names}


def export_graphs(model: HHVAEM, out: str | Path) -> dict[str, dict[str, Any]]:
    """Writes every graph of the model into the directory `out` (ONNX); returns the manifest's `graphs` entries."""
    return {name: export_graph(model, graph, Path(out) / graph.file) for name, graph in graphs_of(model).items()}


def export_graph(model: HHVAEM, graph: GraphSpec, path: Path) -> dict[str, Any]:
    module = PredictiveGraph(model, graph).eval()
    inputs = example_inputs(model, graph)
    started = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            dynamic_axes=graph.dynamic_axes(),
            opset_version=OPSET,
            dynamo=False,  # the legacy exporter: 6-15 s for T=10, L=5 against 60-100 s with dynamo
            do_constant_folding=True,
        )
    return {**graph.to_dict(), "opset": OPSET, "export_seconds": round(time.perf_counter() - started, 2)}


def export_log_density(model: HHVAEM, path: str | Path, rows: int = 2, samples: int = 3) -> None:
    """Writes `LogDensityGraph` to ONNX (diagnostics and the exported-gradient test)."""
    ex = example_inputs(model, rows=rows, samples=samples)
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
