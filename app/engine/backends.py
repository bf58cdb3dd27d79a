"""Where the exported sampler runs: ONNX Runtime (default) or torch (optional reference / GPU backend).

Both take the same feeds (data and every random number, as numpy arrays, named by the graph
contract) and return the contract's outputs in its order; the numpy post-processing is shared,
so for the same noise the two backends give the same samples (tested). ONNX Runtime's view of
the graph file is checked against the contract when it loads, so a graph that does not fit its
manifest (another T, other widths) is refused at registration, not at the first request.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from hhvaem.model.io.artifact import CHECKPOINT, ArtifactError
from hhvaem.model.io.contract import DYNAMIC, Dims, GraphSpec

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


class Backend(Protocol):
    name: str  # e.g. "onnxruntime:CPUExecutionProvider", "torch:cuda"

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]: ...


class OnnxBackend:
    def __init__(self, path: Path, graph: GraphSpec, dims: Dims, device: str = "auto", threads: int = 0):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ArtifactError(
                "device 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}; install onnxruntime-gpu)"
            )
        use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise ArtifactError(f"{path}: ONNX Runtime cannot load the graph ({e})") from None
        self.name = f"onnxruntime:{self.session.get_providers()[0]}"
        self.inputs = graph.input_names
        self.outputs = graph.output_names
        check_graph(path, graph, dims, self.session)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(self.outputs, {k: feeds[k] for k in self.inputs}))


def check_graph(path: Path, graph: GraphSpec, dims: Dims, session) -> None:
    """The graph file's inputs and outputs are the contract's: same names, same order, same fixed axis lengths."""
    declared = [(t, t.name) for t in graph.inputs] + [(t, t.name) for t in graph.outputs]
    found = {i.name: i.shape for i in session.get_inputs() + session.get_outputs()}
    order = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
    if order != (list(graph.input_names), list(graph.output_names)):
        raise ArtifactError(
            f"{path}: the graph's inputs/outputs {order} are not the manifest's "
            f"{list(graph.input_names)} / {list(graph.output_names)}"
        )
    for spec, name in declared:
        shape = found[name]
        want = dims.shape(spec, -1, -1)
        for axis, (got, expected) in enumerate(zip(shape, want)):
            if spec.axes[axis] not in DYNAMIC and isinstance(got, int) and got != expected:
                raise ArtifactError(
                    f"{path}: graph tensor {name!r} has {got} along {spec.axes[axis]!r}, the manifest says {expected}"
                )


class TorchBackend:
    """The same graph in torch, from the artifact's checkpoint (CPU, or CUDA when present)."""

    def __init__(self, artifact: Path, graph: GraphSpec, device: str = "auto", threads: int = 0):
        try:
            import torch
        except ImportError:
            raise ArtifactError("the torch backend needs torch installed (pip install 'hhvaem[train]')") from None
        from hhvaem.model.export import PredictiveGraph
        from hhvaem.model.hhvaem import HHVAEM

        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactError("device 'cuda' asked for, but torch sees no CUDA device")
        self.device = torch.device("cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
        if threads > 0:
            torch.set_num_threads(threads)
        ckpt = torch.load(Path(artifact) / CHECKPOINT, map_location="cpu", weights_only=True)
        model = HHVAEM.from_checkpoint(ckpt).to(self.device)
        self.graph = PredictiveGraph(model, graph).eval()
        self.name = f"torch:{self.device.type}"
        self.inputs = graph.input_names
        self._torch = torch

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(feeds[k]).to(self.device) for k in self.inputs]
            return tuple(t.cpu().numpy() for t in self.graph(*args))
