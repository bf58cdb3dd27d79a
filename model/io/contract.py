"""The sampler graph's contract: the names, shapes and order of its inputs (data and noise) and outputs.

numpy only. Written once here and read by both sides: the exporter (`model.export`) traces the graph with
these names and axes, the manifest records which graphs an artifact holds, and the inference engine draws
the graph's noise from `Contract.noise` and reads its outputs by name. Axes are symbolic: `rows` and `samples`
are the dynamic axes of one call (B rows, C posterior samples per row); the others are fixed by the artifact
(`Dims.from_manifest`: the schema's widths, the latent size and the sampler's T, which the manifest stores once,
in `sampler.hmc_steps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hhvaem.model.schema import Schema

ROWS, SAMPLES = "rows", "samples"
DYNAMIC = (ROWS, SAMPLES)


# Rows per sampler call when a table is scored (batch jobs, `hhvaem score`, Ray partitions: a multiple of it).
CHUNK_ROWS = 128


class ContractError(ValueError):
    """A graph description that does not fit the contract (unknown tensor or axis, missing input)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    axes: tuple[str, ...]
    noise: str | None = None  # how a random input is drawn (normal, log_uniform, gumbel); None: data, outputs

    @property
    def rows_axis(self) -> int:
        """Where the rows lie: concatenating requests for one call happens along this axis."""
        return self.axes.index(ROWS)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "axes": list(self.axes)}
        if self.noise:
            d["noise"] = self.noise
        return d


# Every tensor a sampler graph may take or give, in argument order.
INPUTS = (
    TensorSpec("x", (ROWS, "features")),  # features on the normalised scale, 0 in the holes
    TensorSpec("mask", (ROWS, "features")),  # 1.0 where observed
    TensorSpec("y", (ROWS, "targets")),
    TensorSpec("y_mask", (ROWS, "targets")),
    TensorSpec("eps_noise", (ROWS, SAMPLES, "latent"), "normal"),  # the encoder's initial draw
    TensorSpec("code_noise", (ROWS, SAMPLES, "features"), "normal"),  # z ~ p(z | h_1) per sample
    TensorSpec("momentum", ("steps", ROWS, SAMPLES, "latent"), "normal"),  # HMC variants
    TensorSpec("log_u", ("steps", ROWS, SAMPLES), "log_uniform"),  # HMC variants
    TensorSpec("gumbel", (ROWS, SAMPLES, SAMPLES), "gumbel"),  # importance-resampling variants
)
OUTPUTS = (
    TensorSpec("eps", (ROWS, SAMPLES, "latent")),  # the posterior samples themselves (evaluation reads them)
    # natural parameters per posterior sample on the normalised scale (model.families)
    TensorSpec("features", (ROWS, SAMPLES, "features", "feature_width")),
    TensorSpec("target", (ROWS, SAMPLES, "targets", "target_width")),
    TensorSpec("acceptance", (ROWS,)),  # mean Metropolis acceptance per row (1 without HMC)
    # the target had feature i been observed at the value sample k drew for it (acquisition's joint)
    TensorSpec("target_given", (ROWS, SAMPLES, "features", "targets", "target_width")),
    # the value of every directly modelled discrete feature that target_given observed (-1 for coded features)
    TensorSpec("draws", (ROWS, SAMPLES, "features")),
)
_BY_NAME = {t.name: t for t in INPUTS + OUTPUTS}


@dataclass(frozen=True)
class Dims:
    """The fixed axis lengths of one artifact's graphs."""

    features: int
    targets: int
    latent: int
    steps: int
    feature_width: int
    target_width: int

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Dims:
        schema = Schema.from_dict(manifest["schema"])
        return cls(
            features=len(schema.features),
            targets=len(schema.targets),
            latent=int(manifest["architecture"]["latent_size"]),
            steps=int(manifest["sampler"]["hmc_steps"]),
            feature_width=natural_width(schema.features),
            target_width=natural_width(schema.targets),
        )

    def shape(self, spec: TensorSpec, rows: int, samples: int) -> tuple[int, ...]:
        sizes = {ROWS: rows, SAMPLES: samples}
        return tuple(sizes[a] if a in sizes else getattr(self, a) for a in spec.axes)


def natural_width(columns) -> int:
    """The common width of the natural parameters of these columns in the graph's outputs."""
    return max([2] + [c.natural_width for c in columns])


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file and its inputs and outputs, each in the graph's order."""

    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def noise_inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.inputs if t.noise)

    def named(self, outputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's outputs by name."""
        if len(outputs) != len(self.outputs):
            n = len(self.outputs)
            raise ContractError(f"graph {self.name!r} gave {len(outputs)} outputs, the contract has {n}")
        return dict(zip(self.output_names, outputs))

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor: {axis index: axis name}} for the dynamic axes (what the exporter needs)."""
        return {t.name: {i: a for i, a in enumerate(t.axes) if a in DYNAMIC} for t in self.inputs + self.outputs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> GraphSpec:
        """Reads a manifest's graph entry, refusing tensors or axes the contract does not know."""
        try:
            inputs = tuple(_known(t) for t in d["inputs"])
            outputs = tuple(_known(t) for t in d["outputs"])
            return cls(name, str(d["file"]), inputs, outputs)
        except (KeyError, TypeError) as e:
            raise ContractError(f"graph {name!r}: malformed entry ({type(e).__name__}: {e})") from None


def _known(entry: Mapping[str, Any]) -> TensorSpec:
    spec = _BY_NAME.get(str(entry["name"]))
    if spec is None or list(entry["axes"]) != list(spec.axes) or entry.get("noise") != spec.noise:
        raise ContractError(f"tensor {entry.get('name')!r} with axes {entry.get('axes')} is not in the graph contract")
    return spec


# The graphs an artifact holds, and what each leaves out. A request runs on the smallest graph that answers it
# (`graph_for`): when no row observes a target, the predictor has no term in log p* (and is not evaluated inside
# the sampler: about 0.6x the work); only acquisition needs `target_given`.
GRAPHS = {
    "impute": {"targets": False, "outputs": ("eps", "features", "target", "acceptance")},
    "acquire": {"targets": False, "outputs": ("eps", "features", "target", "acceptance", "target_given", "draws")},
    "conditional": {
        "targets": True,
        "outputs": ("eps", "features", "target", "acceptance", "target_given", "draws"),
    },
}


def sampler_graphs(uses_hmc: bool, importance_resampling: bool) -> dict[str, GraphSpec]:
    """The graphs a variant exports: data (targets only where observed), the noise its posterior needs, outputs."""
    skip = set() if uses_hmc else {"momentum", "log_u"}
    if not importance_resampling:
        skip.add("gumbel")
    graphs = {}
    for name, kind in GRAPHS.items():
        data_skip = set() if kind["targets"] else {"y", "y_mask"}
        inputs = tuple(t for t in INPUTS if t.name not in skip | data_skip)
        outputs = tuple(t for t in OUTPUTS if t.name in kind["outputs"])
        graphs[name] = GraphSpec(name, f"{name}.onnx", inputs, outputs)
    return graphs


def graph_for(targets_observed: bool, needs: set[str] = frozenset()) -> str:
    """The name of the smallest graph that answers a call (`needs`: outputs it must give)."""
    if targets_observed:
        return "conditional"
    return next(n for n, k in GRAPHS.items() if not k["targets"] and needs <= set(k["outputs"]))


_DRAW = {
    "normal": lambda rng, shape: rng.standard_normal(shape, dtype=np.float32),
    "log_uniform": lambda rng, shape: np.log(rng.random(shape, dtype=np.float32) + np.float32(1e-30)),
    "gumbel": lambda rng, shape: (-np.log(-np.log(rng.random(shape) + 1e-30))).astype(np.float32),
}


def draw_noise(
    graph: GraphSpec, dims: Dims, rows: int, samples: int, rng: np.random.Generator | Sequence[np.random.Generator]
) -> dict[str, np.ndarray]:
    """Every noise input of `graph` for `rows` x `samples`, float32, in the graph's input order: from `rng`, or, given
    one generator per row, row i's from `rng[i]` alone, so that a row's noise does not depend on the rows beside it
    (what keeps an answer the same whatever it is batched with)."""
    if isinstance(rng, np.random.Generator):
        return {t.name: _DRAW[t.noise](rng, dims.shape(t, rows, samples)) for t in graph.noise_inputs}
    if len(rng) != rows:
        raise ValueError(f"{len(rng)} generators for {rows} rows")
    per_row = [draw_noise(graph, dims, 1, samples, r) for r in rng]
    return {t.name: np.concatenate([d[t.name] for d in per_row], axis=t.rows_axis) for t in graph.noise_inputs}


def graphs_from_manifest(manifest: Mapping[str, Any]) -> dict[str, GraphSpec]:
    """The graphs an artifact's manifest lists, by name."""
    graphs = manifest.get("graphs")
    if not isinstance(graphs, Mapping) or not graphs:
        raise ContractError("the manifest lists no graphs")
    return {str(name): GraphSpec.from_dict(str(name), d) for name, d in graphs.items()}
